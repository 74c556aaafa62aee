@echo off
rem Easel installer for Windows.
rem   Double-click install.bat, or run in cmd:  install.bat [dev] [run]
rem     dev  also install the test tools (requirements-dev.txt)
rem     run  start Easel when the install is done
rem   Safe to run again: a second run finds everything installed and changes nothing.
rem   Environment: EASEL_PYTHON (a python.exe to build .venv with), EASEL_MIN_FREE_GB (default 6),
rem                EASEL_TORCH_CUDA (cu130 or cu126: the PyTorch CUDA build; default: picked for this PC),
rem                EASEL_TORCH_INDEX (another PyTorch wheel index altogether).
rem Flow uses goto rather than ( ) blocks on purpose: a ")" in an expanded path would end a block.
rem Everything after pushd uses paths relative to this folder, so spaces and special characters in it are safe.
setlocal EnableExtensions DisableDelayedExpansion
pushd "%~dp0"

rem torch is installed first and on its own, from PyTorch's own CUDA wheel index, because the torch on
rem PyPI is CPU-only for Windows and anything that depends on torch would otherwise pull that one.
rem Which CUDA build (tools\torch_build.py): cu130 for RTX 20 and newer with a driver of 580+, cu126 for
rem older cards or drivers. torch 2.12+ publishes no cu128 wheels. Keep TORCH_VERSION in step with install.sh.
set "TORCH_VERSION=2.13.0"
if not defined EASEL_MIN_FREE_GB set "EASEL_MIN_FREE_GB=6"
set "PIP_NO_INPUT=1"
set "PIP_DISABLE_PIP_VERSION_CHECK=1"
set "VPY=.venv\Scripts\python.exe"
rem 3.11-3.14, 64-bit: every pin has wheels for these (tools\wheel_matrix.py checks it when pins change).
set "PY_CHECK=import struct, sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 14) and struct.calcsize('P') == 8))"

set "DEV=0"
set "RUN=0"
:args
if "%~1"=="" goto args_done
if /i "%~1"=="dev" set "DEV=1"& shift & goto args
if /i "%~1"=="--dev" set "DEV=1"& shift & goto args
if /i "%~1"=="run" set "RUN=1"& shift & goto args
if /i "%~1"=="--run" set "RUN=1"& shift & goto args
echo [easel] ERROR: unknown option "%~1". Usage: install.bat [dev] [run]
goto fail
:args_done

rem --- 1. Python and .venv ---------------------------------------------------------------------------
if not exist "%VPY%" goto make_venv
"%VPY%" -c "%PY_CHECK%" >nul 2>&1
if errorlevel 1 goto bad_venv
echo [easel] 1/4 Using the existing .venv.
goto venv_done

:make_venv
set "PY="
if defined EASEL_PYTHON call :try_python "%EASEL_PYTHON%"
if defined EASEL_PYTHON if not defined PY goto bad_easel_python
if not defined PY call :try_python py -3.12
if not defined PY call :try_python py -3.13
if not defined PY call :try_python py -3.11
if not defined PY call :try_python py -3.14
if not defined PY call :try_python python
if not defined PY call :try_python python3
if not defined PY goto no_python
:have_python
echo [easel] 1/4 Creating .venv with:
%PY% -c "import platform, sys; print('       ', sys.executable, platform.python_version())"
%PY% -m venv .venv
if errorlevel 1 goto venv_failed
:venv_done

rem --- 2. Which PyTorch build; disk space, only when the big torch download is still to come ----------
set "TORCH_WANT=%TORCH_VERSION%"
if defined EASEL_TORCH_INDEX goto torch_build_done
if defined EASEL_TORCH_CUDA set "TORCH_CUDA=%EASEL_TORCH_CUDA%"
if not defined TORCH_CUDA for /f "delims=" %%t in ('%VPY% tools\torch_build.py') do set "TORCH_CUDA=%%t"
if not defined TORCH_CUDA set "TORCH_CUDA=cu130"
set "TORCH_WANT=%TORCH_VERSION%+%TORCH_CUDA%"
set "EASEL_TORCH_INDEX=https://download.pytorch.org/whl/%TORCH_CUDA%"
:torch_build_done
set "TORCH_OK=import sys; from importlib.metadata import version; v, want = version('torch'), sys.argv[1]; sys.exit(not (v == want or ('+' not in want and v.split('+')[0] == want)))"
set "DISK_CHECK=import shutil, sys; free, need = shutil.disk_usage('.').free / 2**30, float(sys.argv[1]); print('[easel] 2/4 Free disk space here: {:.1f} GB (about {:g} GB needed).'.format(free, need)); sys.exit(free < need)"
"%VPY%" -c "%TORCH_OK%" "%TORCH_WANT%" >nul 2>&1
if not errorlevel 1 goto torch_present
"%VPY%" -c "%DISK_CHECK%" "%EASEL_MIN_FREE_GB%"
if not errorlevel 1 goto install_torch
if /i "%CI%"=="true" echo [easel] WARNING: less free disk space than EASEL_MIN_FREE_GB; going on because CI=true.
if /i "%CI%"=="true" goto install_torch
echo [easel] ERROR: Not enough free disk space for PyTorch and the other packages.
echo         Free some space, or run  set EASEL_MIN_FREE_GB=0  in cmd and then install.bat to try anyway.
goto fail

rem --- 3. torch, on its own and first ----------------------------------------------------------------
:install_torch
echo [easel] 3/4 Installing PyTorch %TORCH_WANT% from %EASEL_TORCH_INDEX%, about 3 GB: several minutes on a slow line...
set "STEP=install PyTorch %TORCH_VERSION% from %EASEL_TORCH_INDEX%"
rem torch==VERSION+TAG, not VERSION alone: an installed 2.13.0+cu130 satisfies "==2.13.0", and a switch to cu126
rem (EASEL_TORCH_CUDA, or a new driver) would change nothing.
"%VPY%" -m pip install "torch==%TORCH_WANT%" --index-url "%EASEL_TORCH_INDEX%"
if errorlevel 1 goto pip_failed
goto torch_done
:torch_present
echo [easel] 3/4 PyTorch %TORCH_WANT% is already installed.
:torch_done

rem --- 4. everything else, with torch held at its version --------------------------------------------
set "REQ_FILES=requirements.txt"
set "REQS=-r requirements.txt"
if "%DEV%"=="1" set "REQ_FILES=requirements.txt requirements-dev.txt"
if "%DEV%"=="1" set "REQS=-r requirements.txt -r requirements-dev.txt"
rem pip takes 10-30 s just to confirm that ~100 packages are there; checking the pins ourselves takes 0.1 s.
set "REQS_OK=import re, sys; from importlib.metadata import distributions; norm = lambda n: re.sub('[-_.]+', '-', n).lower(); have = {norm(d.metadata['Name']): d.version for d in distributions()}; pins = [l.split('#')[0].strip().split('==') for f in sys.argv[1:] for l in open(f)]; sys.exit(not all(have.get(norm(p[0])) == p[1] for p in pins if p != ['']))"
"%VPY%" -c "%REQS_OK%" %REQ_FILES% >nul 2>&1
if errorlevel 1 goto install_reqs
echo [easel] 4/4 Every package pinned in %REQ_FILES% is already installed.
goto reqs_done
:install_reqs
> ".venv\easel-constraints.txt" echo torch==%TORCH_VERSION%
echo [easel] 4/4 Installing %REQS%...
set "STEP=install %REQS%"
"%VPY%" -m pip install -c ".venv\easel-constraints.txt" %REQS%
if errorlevel 1 goto pip_failed
:reqs_done

"%VPY%" -c "import torch; gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none found - update the NVIDIA driver; training on the CPU is very slow'; print('[easel] PyTorch', torch.__version__, '- CUDA GPU:', gpu)"
if errorlevel 1 goto torch_broken
rem The system doctor: GPU, driver, CUDA build, RAM and disk, each with what to do (it only reports).
if exist "engine\system_doctor.py" "%VPY%" -m engine doctor

echo.
echo [easel] Installed. Start Easel with gui.bat: double-click it, or type  gui.bat  here.
if not defined CI call :offer_shortcut
if "%RUN%"=="1" goto run_gui
popd
if not defined CI pause
exit /b 0

:run_gui
call gui.bat
set "RC=%ERRORLEVEL%"
popd
exit /b %RC%

rem --- subroutines and messages ----------------------------------------------------------------------
:offer_shortcut
rem The folder reaches PowerShell through an environment variable, never inside the command text, so that
rem spaces, quotes, ")" and non-ASCII letters in it cannot break the command.
set "EASEL_DIR=%CD%"
powershell -NoProfile -Command "exit [int](Test-Path ([Environment]::GetFolderPath('Desktop') + '\Easel.lnk'))" >nul 2>&1
if errorlevel 1 exit /b 0
set "ANSWER="
set /p "ANSWER=[easel] Put an Easel shortcut on the desktop? [y/N] "
if /i not "%ANSWER%"=="y" if /i not "%ANSWER%"=="yes" exit /b 0
powershell -NoProfile -Command "$s = (New-Object -ComObject WScript.Shell).CreateShortcut([Environment]::GetFolderPath('Desktop') + '\Easel.lnk'); $s.TargetPath = Join-Path $env:EASEL_DIR 'gui.bat'; $s.WorkingDirectory = $env:EASEL_DIR; $s.Description = 'Easel: train LoRAs on your GPU'; $s.Save()"
if errorlevel 1 echo [easel] Could not create the shortcut; start Easel with gui.bat in this folder.
if not errorlevel 1 echo [easel] Shortcut "Easel" created on the desktop.
exit /b 0

:try_python
rem %* is a command that starts Python, e.g.  py -3.12  or  "C:\Program Files\Python311\python.exe"
%* -c "%PY_CHECK%" >nul 2>&1
if errorlevel 1 exit /b 1
set "PY=%*"
exit /b 0

:bad_easel_python
echo [easel] ERROR: EASEL_PYTHON=%EASEL_PYTHON% is not a 64-bit Python 3.11 to 3.14.
goto fail

:no_python
echo [easel] Easel needs a 64-bit Python 3.11 to 3.14, and none was found.
echo         Found:
py --list 2>nul
python --version 2>nul
if defined CI goto python_help
winget --version >nul 2>&1
if not "%ERRORLEVEL%"=="0" goto python_help
set "ANSWER="
set /p "ANSWER=[easel] Install Python 3.12 for your user now, with winget (accepts Python's license)? [y/N] "
if /i not "%ANSWER%"=="y" if /i not "%ANSWER%"=="yes" goto python_help
winget install -e --id Python.Python.3.12 --scope user --accept-package-agreements --accept-source-agreements
set "WINGET_RC=%ERRORLEVEL%"
rem winget's documented return codes (winget-cli doc/windows/package-manager/winget/returnCodes.md). They are
rem negative (0x8A15....), so "if errorlevel 1" would call every failure a success: compare them exactly.
rem 0x8A150061 / 0x8A15010D already installed, 0x8A15002B no newer version, 0x8A150109 restart to finish.
if "%WINGET_RC%"=="0" goto find_new_python
if "%WINGET_RC%"=="-1978335135" goto find_new_python
if "%WINGET_RC%"=="-1978334963" goto find_new_python
if "%WINGET_RC%"=="-1978335189" goto find_new_python
if "%WINGET_RC%"=="-1978334967" goto find_new_python
rem 0x8A15010C / 0x8A150005 cancelled; 0x8A150107 / 0x8A150008 no network or download failed;
rem 0x8A15003A / 0x8A15010F blocked by policy.
if "%WINGET_RC%"=="-1978334964" goto winget_cancelled
if "%WINGET_RC%"=="-1978335227" goto winget_cancelled
if "%WINGET_RC%"=="-1978334969" goto winget_offline
if "%WINGET_RC%"=="-1978335224" goto winget_offline
if "%WINGET_RC%"=="-1978335174" goto winget_blocked
if "%WINGET_RC%"=="-1978334961" goto winget_blocked
echo [easel] ERROR: winget could not install Python (exit code %WINGET_RC%; its message is above).
goto python_help

:find_new_python
rem A fresh install does not change PATH in this window: look where a per-user (or per-machine) install puts it.
set "PY="
call :try_python "%LOCALAPPDATA%\Programs\Python\Launcher\py.exe" -3.12
if not defined PY call :try_python "%LOCALAPPDATA%\Programs\Python\Python312\python.exe"
if not defined PY call :try_python "%ProgramFiles%\Python312\python.exe"
if not defined PY call :try_python py -3.12
if defined PY goto have_python
echo [easel] ERROR: winget finished, but the new Python 3.12 is not where it installs to.
echo         Close this window, open a new one and run install.bat again: a new window sees the new PATH.
goto fail

:winget_cancelled
echo [easel] The Python install was cancelled.
goto python_help

:winget_offline
echo [easel] ERROR: winget could not download Python: check the internet connection and try again.
goto python_help

:winget_blocked
echo [easel] ERROR: This PC's policy does not allow winget to install Python: ask its administrator,
echo         or install Python from python.org.
goto python_help

:python_help
echo         Install Python 3.12 ^(64-bit^) from https://www.python.org/downloads/windows/ and tick
echo         "Add python.exe to PATH" in its installer, then run install.bat again.
echo         To use a Python that is installed already: set EASEL_PYTHON=C:\path\to\python.exe
goto fail

:bad_venv
echo [easel] ERROR: The .venv folder exists but its Python does not run or is not 3.11-3.14.
echo         Delete the .venv folder next to install.bat and run install.bat again.
goto fail

:venv_failed
echo [easel] ERROR: Could not create the virtual environment .venv with: %PY%
echo         Reinstall Python from python.org with the default options, then run install.bat again.
if exist ".venv" rmdir /s /q ".venv"
goto fail

:pip_failed
echo.
echo [easel] ERROR: Step "%STEP%" failed; pip's message is above.
echo         Check your internet connection and free disk space, then run install.bat again:
echo         it keeps what is already installed. If it fails again, delete the .venv folder and
echo         run install.bat once more, and report pip's message if that fails too.
goto fail

:torch_broken
echo [easel] ERROR: PyTorch was installed but does not import; see the message above.
echo         If it mentions a DLL, install the latest "Microsoft Visual C++ Redistributable" (x64).
echo         Otherwise delete the .venv folder and run install.bat again.
goto fail

:fail
popd
if not defined CI pause
exit /b 1
