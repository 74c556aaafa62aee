"""Which PyTorch CUDA build fits this PC: prints its wheel-index tag (cu130 or cu126) for install.bat.

    python tools/torch_build.py            # asks nvidia-smi; prints e.g. "cu130", and why on stderr

Stdlib only (with engine/system_doctor.py, which holds the driver and GPU facts it shares): install.bat runs it
with the new .venv's Python, before torch is installed. Why a choice at all:
torch 2.12 and later publish no CUDA 12.8 wheels; their Windows builds are CUDA 13.0 (Turing / RTX 20 and newer,
Blackwell / RTX 50 included) and CUDA 12.6 (the legacy build, back to Maxwell / GTX 900) — PyTorch's RELEASE.md
CUDA support matrix. A CUDA 13 build needs an NVIDIA driver of 580 or newer, a CUDA 12 build 528 or newer
(NVIDIA's minor-version compatibility; the CUDA Toolkit release notes).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from install.bat
# The system doctor (stdlib only at import) keeps the one copy of these facts and of the nvidia-smi query.
from engine.system_doctor import CUDA12_MAX_COMPUTE, CUDA13_MIN_COMPUTE, min_driver, query_nvidia_smi  # noqa: E402
from engine.system_doctor import version_numbers as _version  # noqa: E402

CUDA13, CUDA12 = "cu130", "cu126"
CUDA13_MIN_DRIVER = min_driver("13", "win32")   # CUDA 13.x minor-version compatibility
CUDA12_MIN_DRIVER = min_driver("12", "win32")   # CUDA 12.x on Windows


def pick(gpus: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(index tag, one line for the user) from nvidia-smi's (name, driver_version, compute_cap) per GPU."""
    if not gpus:
        return CUDA13, ("no NVIDIA GPU found (nvidia-smi did not answer): installing the CUDA 13.0 build; "
                        "training on the CPU works but is very slow")
    name, driver, _ = gpus[0]
    driver_major = _version(driver)[0] if _version(driver) else 0
    computes = [_version(cap) for _, _, cap in gpus if _version(cap)]
    oldest, newest = (min(computes), max(computes)) if computes else ((7, 5), (7, 5))
    if oldest < CUDA13_MIN_COMPUTE:
        note = f"{name} predates the RTX 20 series: the CUDA 12.6 build is the one with kernels for it"
        if driver_major < CUDA12_MIN_DRIVER:
            note += f"; update the NVIDIA driver ({driver} is older than {CUDA12_MIN_DRIVER})"
        return CUDA12, note
    if driver_major >= CUDA13_MIN_DRIVER:
        return CUDA13, f"{name}, driver {driver}: the CUDA 13.0 build"
    if newest > CUDA12_MAX_COMPUTE:
        return CUDA13, (f"{name} needs the CUDA 13.0 build, which needs NVIDIA driver {CUDA13_MIN_DRIVER} or newer "
                        f"(this PC has {driver}): update the driver from nvidia.com before training")
    if driver_major < CUDA12_MIN_DRIVER:
        return CUDA12, (f"{name}, driver {driver}: the CUDA 12.6 build, which needs NVIDIA driver "
                        f"{CUDA12_MIN_DRIVER} or newer: update the driver from nvidia.com before training")
    return CUDA12, (f"{name}, driver {driver} (older than {CUDA13_MIN_DRIVER}): the CUDA 12.6 build; "
                    f"with a driver of {CUDA13_MIN_DRIVER} or newer, reinstall for the CUDA 13.0 build")


def query_gpus() -> list[tuple[str, str, str]]:
    """[(name, driver_version, compute_cap)] from nvidia-smi, or [] without an NVIDIA driver (compute_cap is ''
    for drivers older than 510, which do not report it)."""
    driver, gpus = query_nvidia_smi()
    return [(g["name"], driver or "", ".".join(map(str, g["compute"])) if g["compute"] else "") for g in gpus]


if __name__ == "__main__":
    tag, why = pick(query_gpus())
    print(f"[easel] {why}", file=sys.stderr)
    print(tag)
