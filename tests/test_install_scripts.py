"""Cheap checks of the install and start scripts (the real install is exercised by .ci/run).

install.sh and gui.sh are run for real, against a fake `python` that records the pip commands it is given,
so the order of the installs, the torch constraint, quoting of paths with spaces and the error messages are
checked in well under a second. The .bat files cannot run here; their line endings, labels and torch pin are
checked as text.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BAT_FILES = ["install.bat", "gui.bat", "activate_venv.bat"]
SH_FILES = ["install.sh", "gui.sh", ".ci/run"]
TORCH_VERSION = "2.13.0"

needs_bash = pytest.mark.skipif(os.name == "nt" or shutil.which("bash") is None, reason="needs bash")

# A stand-in for python: `-m venv DIR` makes DIR/bin/python (a copy of itself), `-m pip ...` is logged,
# the installed-torch check fails (so torch gets installed), the installed-pins check fails unless
# FAKE_REQS_OK=0, `import torch` succeeds, the rest runs for real.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit; fi
if [ "$1" = -m ] && [ "$2" = pip ]; then
    shift 2; printf '%s\n' "pip $*" >> "$FAKE_LOG"
    case "$*" in *"$FAKE_PIP_FAIL"*) [ -n "$FAKE_PIP_FAIL" ] && exit 1 ;; esac
    exit 0
fi
case "$2" in
    *'version("torch")'*) exit 1 ;;
    *'distributions()'*) exit "${FAKE_REQS_OK:-1}" ;;
    *'import torch'*) echo "fake torch"; exit 0 ;;
esac
exec "$REAL_PY" "$@"
"""


def _lines(name):
    return (ROOT / name).read_bytes().split(b"\n")


@pytest.mark.parametrize("name", BAT_FILES)
def test_bat_files_have_crlf_line_endings(name):
    data = (ROOT / name).read_bytes()
    assert data.endswith(b"\r\n"), f"{name} must end with CRLF"
    bare = [i + 1 for i, line in enumerate(data.split(b"\n")[:-1]) if not line.endswith(b"\r")]
    assert not bare, f"{name}: LF-only line(s) {bare[:5]}; cmd misreads labels in LF files (see .gitattributes)"


@pytest.mark.parametrize("name", BAT_FILES)
def test_bat_gotos_and_calls_have_labels(name):
    text = "\n".join(ln for ln in (ROOT / name).read_text().splitlines() if not ln.lower().startswith("rem "))
    labels = {m.lower() for m in re.findall(r"^:(\w+)", text, re.M)}
    targets = {m.lower() for m in re.findall(r"\b(?:goto +:?|call +:)(\w+)", text, re.I)} - {"eof"}
    missing = targets - labels
    assert not missing, f"{name}: goto/call to missing label(s) {sorted(missing)}"


@pytest.mark.parametrize("name", SH_FILES)
def test_shell_scripts_are_lf_and_executable(name):
    data = (ROOT / name).read_bytes()
    assert b"\r" not in data, f"{name} has CR characters; bash fails on them"
    assert data.startswith(b"#!/usr/bin/env bash\n")
    if os.name != "nt":
        assert os.access(ROOT / name, os.X_OK), f"{name} is not executable (chmod +x, git add again)"


@needs_bash
@pytest.mark.parametrize("name", SH_FILES)
def test_shell_scripts_parse(name):
    subprocess.run(["bash", "-n", str(ROOT / name)], check=True)


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_requirements_are_exact_pins_without_torch(name):
    reqs = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    reqs = [r for r in reqs if r]
    assert reqs
    for req in reqs:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+!\-]*", req), f"{name}: '{req}' is not an == pin"
        assert req.split("==")[0].lower() != "torch", f"{name} must not name torch (install scripts install it first)"


def test_install_bat_pins_the_same_torch_first():
    text = (ROOT / "install.bat").read_text()
    assert re.search(r'^set "TORCH_VERSION=([\d.]+)"', text, re.M).group(1) == TORCH_VERSION
    torch_at = text.index('pip install "torch==%TORCH_WANT%" --index-url')
    assert 'set "TORCH_WANT=%TORCH_VERSION%+%TORCH_CUDA%"' in text  # the build's tag, so a switch reinstalls
    assert text.index("-r requirements.txt") > torch_at
    assert '-c ".venv\\easel-constraints.txt" %REQS%' in text
    assert re.search(r"^TORCH_VERSION=([\d.]+)$", (ROOT / "install.sh").read_text(), re.M).group(1) == TORCH_VERSION


@pytest.fixture
def project(tmp_path):
    """A copy of the scripts in a folder whose path has a space, and a fake python (also under a space)."""
    proj = tmp_path / "my easel"
    proj.mkdir()
    for name in ["install.sh", "gui.sh", "requirements.txt", "requirements-dev.txt"]:
        shutil.copy2(ROOT / name, proj / name)
    fake = tmp_path / "fake bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    env = dict(os.environ, CI="true", EASEL_PYTHON=str(fake), EASEL_MIN_FREE_GB="0", REAL_PY=sys.executable,
               FAKE_LOG=str(log), FAKE_PIP_FAIL="")
    return proj, env, log


def _install(proj, env, *args):
    return subprocess.run(["bash", str(proj / "install.sh"), *args], cwd=proj.parent, env=env, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


@needs_bash
def test_install_sh_installs_torch_first_then_constrained_requirements(project):
    proj, env, log = project
    r = _install(proj, env, "--dev")
    assert r.returncode == 0, r.stdout + r.stderr
    venv = proj / ".venv"
    constraint = venv / "easel-constraints.txt"
    assert log.read_text().splitlines() == [
        f"pip install torch=={TORCH_VERSION}",
        f"pip install -c {constraint} -r requirements.txt -r requirements-dev.txt",
    ]
    assert constraint.read_text() == f"torch=={TORCH_VERSION}\n"
    assert "fake torch" in r.stdout
    assert "gui.sh" in r.stdout.splitlines()[-1]


@needs_bash
def test_install_sh_without_dev_skips_dev_requirements(project):
    proj, env, log = project
    assert _install(proj, env).returncode == 0
    assert log.read_text().splitlines()[-1].endswith("-r requirements.txt")


@needs_bash
def test_install_sh_skips_pip_when_every_pin_is_installed(project):
    proj, env, log = project
    r = _install(proj, dict(env, FAKE_REQS_OK="0"), "--dev")
    assert r.returncode == 0, r.stdout + r.stderr
    assert log.read_text().splitlines() == [f"pip install torch=={TORCH_VERSION}"]
    assert "already installed" in r.stdout


@needs_bash
def test_install_sh_names_the_failed_pip_step(project):
    proj, env, log = project
    r = _install(proj, dict(env, FAKE_PIP_FAIL="requirements.txt"))
    assert r.returncode != 0
    assert "install -r requirements.txt" in r.stderr and "failed" in r.stderr


@needs_bash
def test_install_sh_rejects_an_unsuitable_python_and_unknown_options(project):
    proj, env, _ = project
    r = _install(proj, dict(env, EASEL_PYTHON="/bin/false"))
    assert r.returncode != 0 and "3.11 to 3.14" in r.stderr
    assert not (proj / ".venv").exists()
    r = _install(proj, env, "--bogus")
    assert r.returncode != 0 and "--bogus" in r.stderr


@needs_bash
def test_gui_sh_runs_gui_py_in_its_folder_with_the_arguments(project):
    proj, env, _ = project
    r = subprocess.run([str(proj / "gui.sh")], cwd=proj.parent, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "install.sh" in r.stderr

    fake = proj / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@"\n')
    fake.chmod(0o755)
    r = subprocess.run([str(proj / "gui.sh"), "--port", "7861", "two words"], cwd=proj.parent, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(proj.resolve()), "gui.py", "--port", "7861", "two words"]


def test_install_bat_and_install_sh_accept_the_same_pythons_as_readme():
    pattern = r"\(3, (\d+)\) <= sys\.version_info\[:2\] <= \(3, (\d+)\)"
    bat = re.search(pattern, (ROOT / "install.bat").read_text()).groups()
    sh = re.search(pattern, (ROOT / "install.sh").read_text()).groups()
    assert bat == sh == ("11", "14")  # tools/wheel_matrix.py: 3.10 lacks wheels for numpy, scipy, diffusers...
    assert "Python 3.11, 3.12, 3.13 or 3.14" in (ROOT / "README.md").read_text(encoding="utf-8")
