#!/usr/bin/env bash
# Easel installer for Linux.
#
#   bash install.sh          create .venv next to this file and install Easel into it
#   bash install.sh --dev    also install the test tools (requirements-dev.txt)
#   bash install.sh --run    start Easel when the install is done
#
# Safe to run again: a second run finds everything installed and changes nothing.
# Environment: EASEL_PYTHON (the Python to build .venv with), EASEL_MIN_FREE_GB (default 6).
set -euo pipefail

# torch is installed first and on its own, because its build depends on the platform (CUDA on users'
# machines, a local CPU wheel in CI) and because anything that depends on torch would otherwise pull the
# newest torch plus several GB of CUDA packages. Keep in step with install.bat.
TORCH_VERSION=2.13.0

say() { printf '[easel] %s\n' "$*"; }
die() {  # die FIRST_LINE [MORE_LINES...]
    printf '\n[easel] ERROR: %s\n' "$1" >&2
    shift
    [ $# -eq 0 ] || printf '        %s\n' "$@" >&2
    exit 1
}

usage() { sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

DEV=0
RUN=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        --run) RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$arg'." ;;
    esac
done

CALLER_DIR="$(pwd -P)"
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
cd "$HERE"
VENV="$HERE/.venv"
VPY="$VENV/bin/python"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
START=$SECONDS

# 3.11-3.14, 64-bit: the range every pinned package (torch first) has wheels for (tools/wheel_matrix.py checks
# it when pins change).
PY_CHECK='import struct, sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 14) and struct.calcsize("P") == 8))'
python_ok() { "$1" -c "$PY_CHECK" >/dev/null 2>&1; }

find_python() {
    local c
    for c in python3 python3.12 python3.13 python3.11 python3.14 python; do
        command -v "$c" >/dev/null 2>&1 && python_ok "$c" && { printf '%s\n' "$c"; return 0; }
    done
    return 1
}

pip_failed() {
    die "Step '$1' failed (pip's message is above)." \
        "Check your internet connection and free disk space, then run 'bash install.sh' again:" \
        "it keeps what is already installed. If it fails again, delete the folder" \
        "'$VENV' and run it once more, and report pip's message if that fails too."
}

# --- 1. Python and .venv ----------------------------------------------------------------------------
if [ -x "$VPY" ]; then
    python_ok "$VPY" || die "'$VENV' exists but its Python does not run or is not 3.11-3.14." \
        "Delete that folder and run 'bash install.sh' again."
    say "1/4 Using the existing .venv ($("$VPY" -c 'import platform; print("Python", platform.python_version())'))."
else
    if [ -n "${EASEL_PYTHON:-}" ]; then
        python_ok "$EASEL_PYTHON" || die "EASEL_PYTHON='$EASEL_PYTHON' is not a 64-bit Python 3.11 to 3.14."
        PY="$EASEL_PYTHON"
    elif ! PY="$(find_python)"; then
        found="$(command -v python3 >/dev/null && python3 --version 2>&1 || true)"
        die "Easel needs Python 3.11 to 3.14 (64-bit); found: ${found:-no python3}." \
            "Install one, e.g. on Debian/Ubuntu: sudo apt install python3.12 python3.12-venv" \
            "(or use pyenv), then run 'bash install.sh' again. To pick a Python: EASEL_PYTHON=/path/to/python3.12 bash install.sh"
    fi
    say "1/4 Creating .venv with $("$PY" -c 'import platform, sys; print(sys.executable, platform.python_version())')."
    if ! "$PY" -m venv "$VENV"; then
        rm -rf -- "$VENV"
        v="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        die "Could not create the virtual environment with '$PY'." \
            "On Debian/Ubuntu install the venv module first: sudo apt install python$v-venv"
    fi
fi

# --- 2. Disk space (only matters when the big torch download is still to come) -----------------------
TORCH_OK='import sys
from importlib.metadata import version
v, want = version("torch"), sys.argv[1]
sys.exit(not (v == want or ("+" not in want and v.split("+")[0] == want)))'
if "$VPY" -c "$TORCH_OK" "$TORCH_VERSION" >/dev/null 2>&1; then
    HAVE_TORCH=1
else
    HAVE_TORCH=0
    MIN_FREE_GB="${EASEL_MIN_FREE_GB:-6}"
    DISK_CHECK='import shutil, sys
free, need = shutil.disk_usage(".").free / 2**30, float(sys.argv[1])
print("[easel] 2/4 Free disk space here: {:.1f} GB (about {:g} GB needed).".format(free, need))
sys.exit(free < need)'
    if ! "$VPY" -c "$DISK_CHECK" "$MIN_FREE_GB"; then
        if [ "${CI:-}" = "true" ]; then
            say "WARNING: less free disk space than EASEL_MIN_FREE_GB=$MIN_FREE_GB; going on because CI=true."
        else
            die "Not enough free disk space for PyTorch and the other packages." \
                "Free some space, or run with EASEL_MIN_FREE_GB=0 to try anyway."
        fi
    fi
fi

# --- 3. torch, on its own and first ------------------------------------------------------------------
if [ "$HAVE_TORCH" = 1 ]; then
    say "3/4 PyTorch $TORCH_VERSION is already installed."
else
    say "3/4 Installing PyTorch $TORCH_VERSION (the largest download, several minutes on a slow line)..."
    "$VPY" -m pip install "torch==$TORCH_VERSION" || pip_failed "install PyTorch $TORCH_VERSION"
fi

# --- 4. everything else, with torch held at its version ----------------------------------------------
REQ_FILES=(requirements.txt)
[ "$DEV" = 1 ] && REQ_FILES+=(requirements-dev.txt)
# pip takes 10-30 s just to confirm that ~100 packages are there; checking the pins ourselves takes 0.1 s.
REQS_OK='import re, sys
from importlib.metadata import distributions
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = {norm(d.metadata["Name"]): d.version for d in distributions()}
pins = [line.split("#")[0].strip().split("==") for path in sys.argv[1:] for line in open(path)]
sys.exit(not all(have.get(norm(p[0])) == p[1] for p in pins if p != [""]))'
if "$VPY" -c "$REQS_OK" "${REQ_FILES[@]}" >/dev/null 2>&1; then
    say "4/4 Every package pinned in ${REQ_FILES[*]} is already installed."
else
    printf 'torch==%s\n' "$TORCH_VERSION" > "$VENV/easel-constraints.txt"
    REQS=()
    for f in "${REQ_FILES[@]}"; do REQS+=(-r "$f"); done
    say "4/4 Installing ${REQS[*]}..."
    "$VPY" -m pip install -c "$VENV/easel-constraints.txt" "${REQS[@]}" || pip_failed "install ${REQS[*]}"
fi

# --dev: the browser test drives the OS's Chromium (it never downloads one) and skips without it
CHROMIUM="${EASEL_CHROMIUM:-/usr/bin/chromium}"
if [ "$DEV" = 1 ] && [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "Installing Chromium for the browser test (apt-get install chromium)..."
        { DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium </dev/null >/dev/null 2>&1 \
          || { timeout 600 apt-get update -qq </dev/null >/dev/null 2>&1 \
               && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq chromium </dev/null >/dev/null 2>&1; }; } \
          && say "Chromium installed." \
          || say "Could not install Chromium with apt-get; the browser test will skip. Try: apt-get install chromium"
    else
        say "The browser test needs Chromium at $CHROMIUM and skips without it. Install it with"
        say "  sudo apt-get install chromium   (Debian, Ubuntu; other systems: set EASEL_CHROMIUM to its path)"
    fi
fi

"$VPY" -c 'import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none found (training on the CPU is very slow)"
print("[easel] PyTorch {}, CUDA GPU: {}".format(torch.__version__, gpu))' \
    || die "PyTorch was installed but does not import (see above). Delete '$VENV' and run 'bash install.sh' again."

say "Installed in $((SECONDS - START)) s."
# The system doctor: GPU, driver, CUDA build, RAM and disk, each with what to do (it only reports)
[ -f "$HERE/engine/system_doctor.py" ] && { "$VPY" -m engine doctor --runs-dir "$HERE/runs" || true; }
if [ "$RUN" = 1 ]; then
    exec "$HERE/gui.sh"
fi
if [ "$CALLER_DIR" = "$HERE" ]; then
    say "Start Easel with:  ./gui.sh"
else
    say "Start Easel with:  $(printf '%q' "$HERE/gui.sh")"
fi
