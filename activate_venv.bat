@echo off
rem Activate Easel's .venv in the current cmd window, so that  python  and  pip  are Easel's:
rem   activate_venv.bat        (type  deactivate  to leave it)
rem No setlocal here: the activation must outlive this script.
if not exist "%~dp0.venv\Scripts\activate.bat" goto no_venv
call "%~dp0.venv\Scripts\activate.bat"
exit /b 0

:no_venv
echo [easel] There is no .venv yet: run install.bat first.
exit /b 1
