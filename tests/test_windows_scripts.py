"""install.bat, gui.bat and activate_venv.bat run for real, in Wine's cmd.exe, from a folder whose path has spaces,
a non-ASCII letter and a ")" in it (a ")" ends a cmd block; the scripts avoid blocks for that reason).

Windows' Python and winget are played by two small programs compiled here with mingw (tests/windows/*.c): a
fake winget that returns whichever of winget's documented exit codes a test asks for, and a fake python that
answers install.bat's checks and logs every call, so the whole install runs in about a second. Needs Debian's
wine and gcc-mingw-w64-x86-64-win32 (.ci/run installs both); without them these tests skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WINE = shutil.which("wine")
MINGW = shutil.which("x86_64-w64-mingw32-gcc")
if not (WINE and MINGW):
    pytest.skip("Wine or mingw is missing (apt-get install wine gcc-mingw-w64-x86-64-win32): the .bat files are "
                "not run", allow_module_level=True)

TORCH = "2.13.0"
WINGET_INSTALL = "install\t-e\t--id\tPython.Python.3.12\t--scope\tuser\t--accept-package-agreements\t" \
                 "--accept-source-agreements"
FOLDER_NAME = "Easel (my copy) ü"
# What cmd prints when a script breaks (a ")" from a path ending a block, a mistyped command): Wine's and Windows'.
CMD_ERRORS = ("Can't recognize", "is not recognized as an internal", "was unexpected at this time")
WINE_FLAKE = "Can't recognize 'winget "


def windows_path(path: Path) -> str:
    """Wine's Z: drive is the Unix root."""
    return "Z:" + str(path).replace("/", "\\")


@pytest.fixture(scope="session")
def wine(tmp_path_factory):
    """A Wine prefix of its own (about 9 s to create, once) and the two fake programs, each in a folder of its own
    (winget's goes on PATH; python must not be found there) whose name has a space."""
    base = tmp_path_factory.mktemp("wine")
    for name in ("winget", "python"):
        (base / f"fake {name}").mkdir()
        subprocess.run([MINGW, "-O1", "-s", "-o", str(base / f"fake {name}" / f"{name}.exe"),
                        str(ROOT / "tests" / "windows" / f"fake_{name}.c")], check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EASEL_", "FAKE_", "WINE"))}
    env.pop("CI", None)
    env.update(WINEPREFIX=str(base / "prefix"), WINEDEBUG="-all", WINEDLLOVERRIDES="mscoree,mshtml=",
               LANG="C.UTF-8", LC_ALL="C.UTF-8", DISPLAY="")
    # One wineserver for the session (started anew for each run it costs about 2 s a run). Wine's own helper
    # processes start with the first program and outlive it: they must not inherit a pipe a test reads.
    server = subprocess.Popen(["wineserver", "--foreground", "--persistent"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([WINE, "cmd", "/c", "echo", "ready"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=180, check=True)
    local = subprocess.run([WINE, "cmd", "/c", "echo", "%LOCALAPPDATA%"], env=env, capture_output=True,
                           timeout=60, text=True).stdout.strip()
    local_unix = subprocess.run(["winepath", "-u", local], env=env, capture_output=True, timeout=60,
                                text=True).stdout.strip()
    yield {"env": env, "winget_dir": base / "fake winget", "python": base / "fake python" / "python.exe",
           "localappdata": Path(local_unix)}
    subprocess.run(["wineserver", "-k"], env=env, capture_output=True, timeout=60)
    server.wait(timeout=60)


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / FOLDER_NAME
    (folder / "tools").mkdir(parents=True)
    for name in ("install.bat", "gui.bat", "activate_venv.bat", "requirements.txt", "requirements-dev.txt"):
        shutil.copy2(ROOT / name, folder / name)
    shutil.copy2(ROOT / "tools" / "torch_build.py", folder / "tools" / "torch_build.py")
    return folder


class Result:
    def __init__(self, proc, py_log: Path, winget_log: Path):
        self.rc = proc.returncode
        self.out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
        self.py_calls = py_log.read_text(encoding="utf-8").splitlines() if py_log.exists() else []
        self.winget_calls = winget_log.read_text(encoding="utf-8").splitlines() if winget_log.exists() else []

    def pip_calls(self) -> list[str]:
        return [c.removeprefix("-m\tpip\t") for c in self.py_calls if c.startswith("-m\tpip\t")]


def run_bat(wine, project: Path, script: str, *args: str, answer: str = "", ci: bool = True, winget: bool = False,
            **env: str) -> Result:
    """Run `script args` in cmd.exe from the project folder, as a double-click does; `answer` is what the user
    types (Wine's set /p takes all of it at once, so one answer per run)."""
    logs = project.parent / "logs"
    logs.mkdir(exist_ok=True)
    py_log, winget_log = logs / "python.log", logs / "winget.log"
    full = dict(wine["env"], FAKE_PY_LOG=windows_path(py_log), FAKE_WINGET_LOG=windows_path(winget_log), **env)
    if ci:
        full["CI"] = "true"
    if winget:
        full["WINEPATH"] = windows_path(wine["winget_dir"])
    for _ in range(3):
        for log in (py_log, winget_log):
            log.unlink(missing_ok=True)
        proc = subprocess.run([WINE, "cmd", "/c", script, *args], cwd=project, env=full, input=answer.encode(),
                              capture_output=True, timeout=120)
        result = Result(proc, py_log, winget_log)
        broken = [line for line in result.out.splitlines() if any(e in line for e in CMD_ERRORS)]
        # Wine 8's cmd once, on a loaded CI machine, did not find the fake winget on its PATH right after finding
        # it: run again when only a program the test put there went missing. A broken script's errors name its
        # own words (a piece of a path, a command), which no retry fixes.
        if not broken or not all(WINE_FLAKE in line for line in broken):
            break
    assert not broken, f"{script} broke in cmd: {broken}"
    return result


def fake_python(wine) -> str:
    return windows_path(wine["python"])


def venv_scripts(project: Path) -> Path:
    """The project's .venv\\Scripts folder, made empty: a test puts the programs it needs there."""
    scripts = project / ".venv" / "Scripts"
    scripts.mkdir(parents=True)
    return scripts


# --------------------------------------------------------------------------------------------- install.bat
def test_an_unknown_option_is_named_with_the_usage(wine, project):
    r = run_bat(wine, project, "install.bat", "--bogus")
    assert r.rc == 1
    assert 'unknown option "--bogus"' in r.out and "Usage: install.bat [dev] [run]" in r.out


def test_no_python_in_ci_says_what_to_install_and_asks_nothing(wine, project):
    r = run_bat(wine, project, "install.bat", winget=True)
    assert r.rc == 1
    assert "needs a 64-bit Python 3.11 to 3.14, and none was found" in r.out
    assert "python.org" in r.out and "EASEL_PYTHON" in r.out
    assert "[y/N]" not in r.out and r.winget_calls == []
    assert not (project / ".venv").exists()


def test_no_python_and_no_winget_points_to_python_org(wine, project):
    r = run_bat(wine, project, "install.bat", ci=False)
    assert r.rc == 1
    assert "[y/N]" not in r.out and "https://www.python.org/downloads/windows/" in r.out


def test_declining_the_winget_offer_installs_nothing(wine, project):
    r = run_bat(wine, project, "install.bat", ci=False, winget=True, answer="n\n")
    assert r.rc == 1
    assert "Install Python 3.12 for your user now, with winget" in r.out
    assert r.winget_calls == ["--version"]
    assert "python.org" in r.out


@pytest.mark.parametrize("code, says", [
    (0, "not where it installs to"),
    (-1978335135, "not where it installs to"),    # APPINSTALLER_CLI_ERROR_PACKAGE_ALREADY_INSTALLED
    (-1978334963, "not where it installs to"),    # ..._INSTALL_ALREADY_INSTALLED
    (-1978335189, "not where it installs to"),    # ..._UPDATE_NOT_APPLICABLE
    (-1978334967, "not where it installs to"),    # ..._INSTALL_REBOOT_REQUIRED_TO_FINISH
    (-1978334964, "The Python install was cancelled"),   # ..._INSTALL_CANCELLED_BY_USER
    (-1978335227, "The Python install was cancelled"),   # ..._CTRL_SIGNAL_RECEIVED
    (-1978334969, "check the internet connection"),      # ..._INSTALL_NO_NETWORK
    (-1978335224, "check the internet connection"),      # ..._DOWNLOAD_FAILED
    (-1978335174, "policy does not allow winget"),       # ..._BLOCKED_BY_POLICY
    (-1978334961, "policy does not allow winget"),       # ..._INSTALL_BLOCKED_BY_POLICY
    (5, "could not install Python (exit code 5"),
])
def test_each_winget_exit_code_gets_its_own_message(wine, project, code, says):
    r = run_bat(wine, project, "install.bat", ci=False, winget=True, answer="y\n", FAKE_WINGET_RC=str(code))
    assert r.rc == 1
    assert r.winget_calls == ["--version", WINGET_INSTALL]
    assert says in r.out, r.out


def test_after_winget_the_new_python_is_found_in_its_install_folder_and_the_install_goes_on(wine, project):
    # a fresh per-user install: not on this window's PATH, only in %LOCALAPPDATA%\Programs\Python\Python312
    target = wine["localappdata"] / "Programs" / "Python" / "Python312"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wine["python"], target / "python.exe")
    try:
        r = run_bat(wine, project, "install.bat", ci=False, winget=True, answer="y\n")
    finally:
        shutil.rmtree(target)
    assert r.rc == 0, r.out
    assert r.winget_calls == ["--version", WINGET_INSTALL]
    assert "Creating .venv" in r.out and "Installed." in r.out
    assert (project / ".venv" / "Scripts" / "python.exe").exists()


def test_easel_python_pointing_at_nothing_is_named(wine, project):
    r = run_bat(wine, project, "install.bat", EASEL_PYTHON=r"Z:\nowhere\python.exe")
    assert r.rc == 1
    assert r"EASEL_PYTHON=Z:\nowhere\python.exe is not a 64-bit Python 3.11 to 3.14" in r.out
    assert not (project / ".venv").exists()


def test_the_whole_install_runs_torch_first_then_the_pins_held_at_its_version(wine, project):
    r = run_bat(wine, project, "install.bat", "dev", EASEL_PYTHON=fake_python(wine))
    assert r.rc == 0, r.out
    assert r.pip_calls() == [
        f"install\ttorch=={TORCH}+cu130\t--index-url\thttps://download.pytorch.org/whl/cu130",
        "install\t-c\t.venv\\easel-constraints.txt\t-r\trequirements.txt\t-r\trequirements-dev.txt",
    ]
    assert (project / ".venv" / "easel-constraints.txt").read_text().strip() == f"torch=={TORCH}"
    assert "fake torch" in r.out and "Start Easel with gui.bat" in r.out
    again = run_bat(wine, project, "install.bat")
    assert again.rc == 0 and "Using the existing .venv" in again.out


@pytest.mark.parametrize("env, pin, index", [
    ({"FAKE_TORCH_CUDA": "cu126"}, f"{TORCH}+cu126", "https://download.pytorch.org/whl/cu126"),  # the picker's
    ({"EASEL_TORCH_CUDA": "cu126"}, f"{TORCH}+cu126", "https://download.pytorch.org/whl/cu126"),  # the user's
    ({"EASEL_TORCH_INDEX": "https://example.invalid/whl"}, TORCH, "https://example.invalid/whl"),
])
def test_the_torch_build_follows_the_picker_or_the_user(wine, project, env, pin, index):
    # the tag is part of the pin: pip would keep an installed 2.13.0+cu130 for a plain "==2.13.0"
    r = run_bat(wine, project, "install.bat", EASEL_PYTHON=fake_python(wine), **env)
    assert r.rc == 0, r.out
    assert r.pip_calls()[0] == f"install\ttorch=={pin}\t--index-url\t{index}"
    asked_picker = any("torch_build.py" in call for call in r.py_calls)
    assert asked_picker == ("FAKE_TORCH_CUDA" in env)


def test_a_failed_pip_step_is_named_and_the_window_says_what_to_do(wine, project):
    r = run_bat(wine, project, "install.bat", EASEL_PYTHON=fake_python(wine), FAKE_PIP_RC="1")
    assert r.rc == 1
    assert f'Step "install PyTorch {TORCH}' in r.out and "run install.bat again" in r.out


def test_a_broken_venv_is_named(wine, project):
    (venv_scripts(project) / "python.exe").write_text("not a program")
    r = run_bat(wine, project, "install.bat")
    assert r.rc == 1 and "Delete the .venv folder" in r.out


# --------------------------------------------------------------------------------------------- gui.bat
def test_gui_bat_without_an_install_says_to_run_install_bat(wine, project):
    r = run_bat(wine, project, "gui.bat")
    assert r.rc == 1 and "run install.bat first" in r.out


def test_gui_bat_passes_its_arguments_and_returns_the_exit_code(wine, project):
    shutil.copy2(wine["python"], venv_scripts(project) / "python.exe")
    r = run_bat(wine, project, "gui.bat", "--port", "7861", "two words")
    assert r.rc == 0, r.out
    assert r.py_calls == ["gui.py\t--port\t7861\ttwo words"]
    crashed = run_bat(wine, project, "gui.bat", FAKE_PY_RC="3")
    assert crashed.rc == 3


# --------------------------------------------------------------------------------------------- activate_venv.bat
def test_activate_venv_without_an_install_says_so(wine, project):
    r = run_bat(wine, project, "activate_venv.bat")
    assert r.rc == 1 and "There is no .venv yet: run install.bat first" in r.out


def test_activate_venv_activates_in_the_callers_window(wine, project):
    (venv_scripts(project) / "activate.bat").write_bytes(b'@set "EASEL_ACTIVATED=yes"\r\n')
    (project / "check.bat").write_bytes(b'@echo off\r\ncall activate_venv.bat\r\necho activated=%EASEL_ACTIVATED%\r\n')
    r = run_bat(wine, project, "check.bat")
    assert r.rc == 0 and "activated=yes" in r.out
