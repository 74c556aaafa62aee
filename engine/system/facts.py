"""Gathering: what this PC is, as plain data (no judging here; that is checks.py).

The keys of FACTS are what engine.system_doctor.gather_facts() returns, and so what a test may fake. Each function
here asks one source (nvidia-smi, torch, bitsandbytes, psutil, the disk, the Windows registry); a missing or broken
package is a fact, never an exception. torch, bitsandbytes, psutil and winreg are imported inside the functions.
"""
from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

# What gather_facts() returns (every key), and so what a test may fake. None always means "not known".
FACTS = {
    "platform": "sys.platform: 'win32', 'linux', ...",
    "python": "(major, minor, micro)", "python_bits": "32 or 64",
    "python_exe": "sys.executable (on Windows with the base python.exe a .venv one starts)",
    "torch": "torch.__version__, or None when torch does not import",
    "torch_error": "why torch did not import ('ModuleNotFoundError: ...', 'OSError: [WinError 126] ...'), or None",
    "torch_cuda": "torch.version.cuda ('13.0'), or None for a CPU-only build",
    "cuda_available": "torch.cuda.is_available()",
    "cuda_error": "the warning torch gave when CUDA did not initialise, or None",
    "arch_list": "torch.cuda.get_arch_list(): the GPU code this torch holds (['sm_75', ..., 'sm_120'])",
    "driver": "the NVIDIA driver version from nvidia-smi ('581.57'), or None",
    "gpus": "[{'name', 'compute': (12, 0), 'vram_gb', 'bf16': True/False/None}] from torch, else from nvidia-smi",
    "bitsandbytes": "None (not tried: no CUDA) or {'version', 'error'} from one AdamW8bit step on the GPU",
    "ram_total_gb": "installed RAM (psutil)", "ram_free_gb": "available RAM (psutil)",
    "disks": "[{'label', 'path', 'free_gb'}] for the Easel folder and the runs folder",
    "pagefile_gb": "the Windows page file (psutil.swap_memory().total)",
    "long_paths": "Windows LongPathsEnabled (0 or 1)",
}


def version_numbers(text) -> tuple[int, ...]:
    """'581.57' -> (581, 57); '8.9' -> (8, 9); '', 'N/A' or None -> ()."""
    return tuple(int(p) for p in str(text or "").strip().split(".") if p.isdigit())


def _smi_rows(fields: str) -> list[list[str]] | None:
    """nvidia-smi's CSV rows (one per GPU) for --query-gpu=`fields`; None when it does not run or refuses them."""
    try:
        proc = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], check=False,
                              capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]


def query_nvidia_smi() -> tuple[str | None, list[dict]]:
    """(driver version, [{'name', 'compute', 'vram_gb'}]) from nvidia-smi, or (None, []) without an NVIDIA driver.
    Drivers older than 510 do not know the compute_cap field: then it is asked without it."""
    for fields in ("name,driver_version,compute_cap,memory.total", "name,driver_version,memory.total"):
        rows = _smi_rows(fields)
        if rows is not None:
            rows = [row if len(row) == 4 else [*row[:2], "", *row[2:]] for row in rows if len(row) >= 3]
            mib = [(r[3].split() or [""])[0] for r in rows]     # '24576 MiB', or '[N/A]'
            gpus = [{"name": r[0], "compute": version_numbers(r[2])[:2] or None,
                     "vram_gb": round(int(m) / 1024, 1) if m.isdigit() else None} for r, m in zip(rows, mib)]
            return (rows[0][1] if rows else None), gpus
    return None, []


def memory_now() -> dict:
    """What a run could use right now, torch-free (the dry run's fit check): {'gpu_free_gb': [per GPU, None where
    not known], 'ram_total_gb', 'ram_free_gb'} from nvidia-smi's memory.free (what the desktop and other programs
    leave) and psutil's available RAM; [] / None without a driver or psutil."""
    rows = _smi_rows("memory.free") or []
    mib = [(row[0].split() or [""])[0] if row else "" for row in rows]   # '11876 MiB', or '[N/A]'
    found = {"gpu_free_gb": [round(int(m) / 1024, 1) if m.isdigit() else None for m in mib],
             "ram_total_gb": None, "ram_free_gb": None}
    try:
        import psutil
        memory = psutil.virtual_memory()
        found.update(ram_total_gb=round(memory.total / 2**30, 1), ram_free_gb=round(memory.available / 2**30, 1))
    except Exception:  # noqa: BLE001, S110 - psutil missing or failing: RAM is not compared
        pass
    return found


def torch_facts() -> dict:
    """The keys of FACTS that come from torch (None, False or [] when it does not import)."""
    found = {"torch": None, "torch_error": None, "torch_cuda": None, "cuda_available": False, "cuda_error": None,
             "arch_list": [], "gpus": []}
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install raises OSError (a missing DLL), ImportError, ...
        found["torch_error"] = f"{type(exc).__name__}: {exc}"
        return found
    found.update(torch=str(torch.__version__), torch_cuda=torch.version.cuda, arch_list=torch.cuda.get_arch_list())
    with warnings.catch_warnings(record=True) as caught:   # why CUDA is unusable comes as a warning
        warnings.simplefilter("always")
        found["cuda_available"] = bool(torch.cuda.is_available())
    if not found["cuda_available"] and caught:
        found["cuda_error"] = str(caught[0].message).strip()
    for i in range(torch.cuda.device_count() if found["cuda_available"] else 0):
        props = torch.cuda.get_device_properties(i)
        with torch.cuda.device(i):
            try:
                bf16 = torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 is slow
            except TypeError:
                bf16 = torch.cuda.is_bf16_supported()
        found["gpus"].append({"name": props.name, "compute": (props.major, props.minor),
                              "vram_gb": round(props.total_memory / 2**30, 1), "bf16": bool(bf16)})
    return found


def bitsandbytes_facts() -> dict:
    """{'version', 'error'}: import bitsandbytes and take one AdamW8bit step on a small CUDA tensor."""
    import logging
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its kernel-hub notice alarms users
    version = None
    try:
        import bitsandbytes
        import torch
        version = getattr(bitsandbytes, "__version__", None)
        param = torch.nn.Parameter(torch.zeros(4096, device="cuda"))  # 4096: the smallest size with 8-bit state
        optimizer = bitsandbytes.optim.AdamW8bit([param], lr=1e-3)
        param.grad = torch.ones_like(param)
        optimizer.step()
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - any failure means the 8-bit optimizers will not run
        return {"version": version, "error": f"{type(exc).__name__}: {exc}"}
    return {"version": version, "error": None}


def free_gb(folder: Path) -> float | None:
    """Free GB on the drive of `folder` (of its nearest existing parent when it is still to be made)."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    try:
        return round(shutil.disk_usage(folder).free / 2**30, 1)
    except OSError:
        return None


def long_paths_enabled() -> int | None:
    """HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem LongPathsEnabled; a missing value means 0 (off)."""
    import winreg
    try:
        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            return int(winreg.QueryValueEx(key, "LongPathsEnabled")[0])
    except FileNotFoundError:
        return 0
    except OSError:
        return None
