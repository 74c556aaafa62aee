@echo off
rem Start Easel: double-click gui.bat, or run  gui.bat [options for gui.py]  from any folder.
rem Run install.bat once first.
setlocal EnableExtensions DisableDelayedExpansion
pushd "%~dp0"
if not exist ".venv\Scripts\python.exe" goto no_venv
".venv\Scripts\python.exe" gui.py %*
set "RC=%ERRORLEVEL%"
popd
rem Keep the window open after a crash so that a double-click user can read the message.
if not "%RC%"=="0" if not defined CI pause
exit /b %RC%

:no_venv
echo [easel] Easel is not installed yet: run install.bat first (double-click it).
popd
if not defined CI pause
exit /b 1
