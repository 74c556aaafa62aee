"""Judging: facts -> findings, one pure check_* function per topic in CHECKS, each `(facts) -> list[Finding]`.

Facts are the plain data of facts.py (FACTS), real or faked by a test: an RTX 5090 on a torch without sm_120
kernels, a GTX 1080 on a CUDA 13 torch, a driver too old for torch's CUDA.
Driver minimums: NVIDIA's CUDA minor-version compatibility (as in tools/torch_build.py, which install.bat runs).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.system.facts import version_numbers

SEVERITIES = ("error", "warning", "info", "ok")
CUDA13_MIN_COMPUTE = (7, 5)   # CUDA 13 dropped Maxwell, Pascal and Volta (GTX 900/10 series, Titan V)
CUDA12_MAX_COMPUTE = (9, 0)   # PyTorch's CUDA 12.6 build has no Blackwell (RTX 50) kernels
MIN_VRAM_GB, MIN_RAM_GB, MIN_PAGEFILE_GB, MIN_DISK_GB = 8, 16, 16, 20
SETUP = "run install.bat again (Linux: bash install.sh)"


@dataclass
class Finding:
    """One fact about the PC in the user's words: `message` what was found, `hint` what to do ('' when nothing)."""

    check: str        # python | torch | gpu | bitsandbytes | memory | disk | windows
    severity: str     # error | warning | info | ok
    message: str
    hint: str = ""


def min_driver(cuda: str | None, plat: str) -> int | None:
    """The oldest NVIDIA driver (its major version) that runs torch's CUDA `cuda` build; None when not known."""
    return {(13,): 580, (12,): 528 if plat == "win32" else 525}.get(version_numbers(cuda)[:1])


def _reinstall(tag: str, facts: dict) -> str:
    """'Reinstall PyTorch with the ... build: ...' for the CUDA build `tag` (cu130 | cu126) on this platform."""
    build = {"cu130": "CUDA 13.0", "cu126": "CUDA 12.6"}[tag]
    if facts["platform"] == "win32":
        return f"Reinstall PyTorch with the {build} build: in cmd, `set EASEL_TORCH_CUDA={tag}` then run install.bat."
    version = (facts["torch"] or "2.13.0").split("+")[0]
    return (f"Reinstall PyTorch with the {build} build: `.venv/bin/python -m pip install --force-reinstall --no-deps "
            f"torch=={version} --index-url https://download.pytorch.org/whl/{tag}`.")


def has_kernels(compute: tuple[int, int], arch_list: list[str]) -> bool:
    """True when the build has GPU code for `compute`: an sm_XY of the same major and an equal or lower minor
    (binary compatible), or PTX (compute_XY) at or below it, which the driver compiles on first use."""
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        digits = "".join(ch for ch in digits if ch.isdigit())   # sm_90a -> 90, sm_120 -> 120
        if len(digits) >= 2:
            major, minor = int(digits[:-1]), int(digits[-1])
            if (kind == "sm" and major == compute[0] and minor <= compute[1]) or \
                    (kind == "compute" and (major, minor) <= tuple(compute)):
                return True
    return False


def check_python(facts: dict) -> list[Finding]:
    version = ".".join(map(str, facts["python"]))
    fix = ("Install 64-bit Python 3.12 (python.org), delete the .venv folder and run install.bat again "
           "(Linux: EASEL_PYTHON=python3.12 bash install.sh).")
    if facts["python_bits"] != 64:
        return [Finding("python", "error", f"Python {version} is 32-bit; PyTorch exists only for 64-bit Python.", fix)]
    if not (3, 11) <= tuple(facts["python"][:2]) <= (3, 14):
        return [Finding("python", "error", f"Python {version} is not supported: Easel needs 3.11 to 3.14 (the "
                                           f"versions every pinned package has wheels for).", fix)]
    return [Finding("python", "ok", f"Python {version}, 64-bit: {facts['python_exe']}.")]


def check_torch(facts: dict) -> list[Finding]:
    error, version, cuda, gpus, driver = (facts[k] for k in ("torch_error", "torch", "torch_cuda", "gpus", "driver"))
    if error and error.startswith("ModuleNotFoundError"):
        return [Finding("torch", "error", f"PyTorch is not installed in this Python ({facts['python_exe']}).",
                        f"Start Easel from its .venv (gui.bat, activate_venv.bat), or {SETUP}: it installs the "
                        f"PyTorch build that fits this PC.")]
    if error:
        dll = "dll" in error.lower() or "winerror" in error.lower()
        return [Finding("torch", "error", f"PyTorch is installed but does not load: {error}",
                        ("Install the Microsoft Visual C++ Redistributable (x64) from microsoft.com and restart; if "
                         "it still fails, delete" if dll else "Delete") + f" the .venv folder and {SETUP}.")]
    if not cuda:
        if not gpus:
            return [Finding("torch", "info", f"PyTorch {version}, CPU-only build.")]
        old = (gpus[0]["compute"] or CUDA13_MIN_COMPUTE) < CUDA13_MIN_COMPUTE
        return [Finding("torch", "error", f"PyTorch {version} is the CPU-only build, but this PC has an NVIDIA GPU "
                                          f"({gpus[0]['name']}): training would not use it.",
                        _reinstall("cu126" if old else "cu130", facts))]
    available = facts["cuda_available"]
    found = [Finding("torch", "ok" if available else "info",
                     f"PyTorch {version}, CUDA {cuda} build; CUDA is {'' if available else 'NOT '}available.")]
    need = min_driver(cuda, facts["platform"])
    if version_numbers(driver) and need and version_numbers(driver)[0] < need:
        hint = f"Update the NVIDIA driver to {need} or newer (nvidia.com/drivers or the NVIDIA App), then restart."
        if version_numbers(cuda)[0] >= 13 and version_numbers(driver)[0] >= min_driver("12", facts["platform"]) and all(
                (g["compute"] or (0, 0)) <= CUDA12_MAX_COMPUTE for g in gpus):
            hint += " Or keep this driver: " + _reinstall("cu126", facts).replace("R", "r", 1)  # no RTX 50 code in it
        found.append(Finding("torch", "error", f"The NVIDIA driver {driver} is too old for PyTorch's CUDA {cuda} "
                                               f"build, which needs driver {need} or newer.", hint))
    elif version_numbers(driver) and need:
        found.append(Finding("torch", "ok", f"NVIDIA driver {driver} (CUDA {cuda} needs {need} or newer)."))
    if gpus and not available and not any(f.severity == "error" for f in found):
        found.append(Finding("torch", "error", f"PyTorch's CUDA {cuda} build cannot use the GPU: "
                                               f"{facts['cuda_error'] or 'torch.cuda.is_available() is False'}",
                             "Restart the PC (a driver update needs it), unset CUDA_VISIBLE_DEVICES if it is set and "
                             f"update the NVIDIA driver; if it persists, {SETUP}."))
    return found


def check_gpus(facts: dict) -> list[Finding]:
    gpus, cuda, arch_list = facts["gpus"], facts["torch_cuda"], facts["arch_list"]
    if not gpus:
        return [Finding("gpu", "warning", "No CUDA GPU was found (nvidia-smi did not answer and PyTorch sees none): "
                                          "training would run on the CPU, which is only fit for the demo.",
                        "On a PC with an NVIDIA card, install its driver (nvidia.com/drivers), restart, then "
                        f"{SETUP}. `python -m engine demo` works without a GPU.")]
    found = []
    for i, gpu in enumerate(gpus):
        name, compute, vram, bf16 = gpu["name"], gpu.get("compute"), gpu.get("vram_gb"), gpu.get("bf16")
        cc = ".".join(map(str, compute)) if compute else "unknown"
        found.append(Finding("gpu", "ok", f"GPU {i}: {name}, {'?' if vram is None else vram} GB VRAM, "
                                          f"compute capability {cc}."))
        if compute and tuple(compute) < CUDA13_MIN_COMPUTE and version_numbers(cuda)[:1] >= (13,):
            found.append(Finding("gpu", "error", f"{name} (compute {cc}, older than the RTX 20 series) has no code in "
                                                 f"PyTorch's CUDA {cuda} build: it needs the CUDA 12.6 build.",
                                 _reinstall("cu126", facts)))
        elif compute and arch_list and not has_kernels(tuple(compute), arch_list):
            tag = "cu126" if tuple(compute) < CUDA13_MIN_COMPUTE else "cu130"
            found.append(Finding("gpu", "error", f"{name} (compute {cc}, sm_{compute[0]}{compute[1]}) has no kernels "
                                                 f"in this PyTorch build, which has {' '.join(arch_list)}.",
                                 _reinstall(tag, facts)))
        if bf16 is False or (bf16 is None and compute and tuple(compute) < (8, 0)):  # native bf16: RTX 30 and newer
            found.append(Finding("gpu", "info", f"{name} has no native bf16.",
                                 "Use precision fp16 (training.precision: fp16); bf16 would be emulated and slow."))
        if vram is not None and vram < MIN_VRAM_GB:
            found.append(Finding("gpu", "warning", f"{name} has {vram} GB of VRAM: under {MIN_VRAM_GB} GB only small "
                                                   f"runs fit (no SDXL, no FLUX).",
                                 "What fits: an SD 1.5 LoRA at 512 px, batch 1, with gradient checkpointing "
                                 "(training.gradient_checkpointing: true) and the adamw8bit optimizer."))
    return found


def check_bitsandbytes(facts: dict) -> list[Finding]:
    bnb = facts["bitsandbytes"]
    if bnb is None:
        return [Finding("bitsandbytes", "info", "The 8-bit optimizers (adamw8bit, lion8bit) are CUDA-only; "
                                                "bitsandbytes is not tried without a CUDA GPU.",
                        "Without a CUDA GPU choose adamw or lion (optimizers.unet.type).")]
    if bnb["error"]:
        return [Finding("bitsandbytes", "warning", f"bitsandbytes {bnb['version'] or ''} does not run on this GPU, "
                                                   f"so adamw8bit and lion8bit would fail: {bnb['error']}",
                        f"Use adamw or lion (their optimizer state takes 4x the memory), or {SETUP}.")]
    return [Finding("bitsandbytes", "ok", f"bitsandbytes {bnb['version']}: the 8-bit optimizers run on the GPU.")]


def check_memory(facts: dict) -> list[Finding]:
    total, free = facts["ram_total_gb"], facts["ram_free_gb"]
    if total is None:
        return [Finding("memory", "info", "RAM not checked: psutil is not installed.",
                        "Run install.bat again (Linux: bash install.sh) to install it.")]
    if total < MIN_RAM_GB:
        return [Finding("memory", "warning", f"This PC has {total} GB of RAM ({free} GB free): SDXL needs "
                                             f"{MIN_RAM_GB} GB+ of RAM to load.",
                        "Train SD 1.5, close other programs before a run, or add RAM.")]
    return [Finding("memory", "ok", f"RAM: {total} GB, {free} GB free.")]


def check_disks(facts: dict) -> list[Finding]:
    found = []
    for disk in facts["disks"]:
        free, where = disk["free_gb"], f"{disk['label']} ({disk['path']})"
        if free is None:
            found.append(Finding("disk", "info", f"The free disk space of {where} could not be read."))
        elif free < MIN_DISK_GB:
            found.append(Finding("disk", "warning", f"Only {free} GB free on the drive of {where}.",
                                 f"Free {MIN_DISK_GB} GB or more (a run's caches, checkpoints and samples take several "
                                 f"GB), or put the runs on another drive (--runs-dir, output.dir)."))
        else:
            found.append(Finding("disk", "ok", f"{free} GB free on the drive of {where}."))
    return found


def check_windows(facts: dict) -> list[Finding]:
    if facts["platform"] != "win32":
        return []
    found, pagefile, long_paths = [], facts["pagefile_gb"], facts["long_paths"]
    if pagefile is not None and pagefile < MIN_PAGEFILE_GB:
        found.append(Finding("windows", "warning", f"The Windows page file is {pagefile} GB.",
                             "Raise the page file or loading SDXL/FLUX can fail with 'paging file too small': "
                             "Win+R sysdm.cpl > Advanced > Performance Settings > Advanced > Virtual memory > Change: "
                             "'System managed size' or a custom size of 32 GB+, then restart."))
    elif pagefile is not None:
        found.append(Finding("windows", "ok", f"The Windows page file is {pagefile} GB."))
    if long_paths == 0:
        found.append(Finding("windows", "warning", "Windows long paths are off (LongPathsEnabled is 0): a file whose "
                                                   "path is longer than 260 characters cannot be opened.",
                             "In an administrator PowerShell: `New-ItemProperty -Path HKLM:\\SYSTEM\\"
                             "CurrentControlSet\\Control\\FileSystem -Name LongPathsEnabled -Value 1 -PropertyType "
                             "DWORD -Force`, then restart."))
    elif long_paths is None:
        found.append(Finding("windows", "info", "Windows long-path support could not be read from the registry."))
    found.append(Finding("windows", "info", "NVIDIA 'CUDA - Sysmem Fallback Policy': by default a run that does not "
                                            "fit in VRAM silently spills into shared memory and gets 10x slower, "
                                            "instead of stopping with 'out of GPU memory'.",
                         f"NVIDIA Control Panel > Manage 3D settings > Program Settings: add python.exe "
                         f"({facts['python_exe']}) and set it to 'Prefer No Sysmem Fallback'."))
    return found


CHECKS = (check_python, check_torch, check_gpus, check_bitsandbytes, check_memory, check_disks, check_windows)
