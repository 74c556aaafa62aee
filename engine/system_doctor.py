"""The system doctor: is this PC ready to train? `python -m engine doctor [--json] [--runs-dir FOLDER]`.

    facts = gather_facts(runs_dir=Path("D:/runs"))      # what the PC is: plain data, the keys of FACTS
    for f in diagnose(facts): print(f.severity, f.message, f.hint)

Gathering (engine/system/facts.py, put together by gather_facts below: Python, torch, nvidia-smi, bitsandbytes, RAM,
disks, Windows settings) is kept apart from judging (engine/system/checks.py: one check_* function per topic in
CHECKS, each `(facts) -> list[Finding]`), so tests judge fake PCs: an RTX 5090 on a torch without sm_120 kernels,
a GTX 1080 on a CUDA 13 torch, a driver too old for torch's CUDA.
torch, bitsandbytes, psutil and winreg are imported inside functions: the doctor works, and says so, without them.
The names below stay importable from here (tools/torch_build.py, engine/cli.py, the GUI and the tests use them);
gather_facts looks query_nvidia_smi up in this module, so a test that replaces it here fakes the driver.
"""
from __future__ import annotations

import argparse
import json
import platform
import struct
import sys
from dataclasses import asdict
from pathlib import Path

from engine.system.checks import (CHECKS, CUDA12_MAX_COMPUTE, CUDA13_MIN_COMPUTE, MIN_DISK_GB,  # noqa: F401
                                  MIN_PAGEFILE_GB, MIN_RAM_GB, MIN_VRAM_GB, SETUP, SEVERITIES, Finding,
                                  check_bitsandbytes, check_disks, check_gpus, check_memory, check_python,
                                  check_torch, check_windows, has_kernels, min_driver)
from engine.system.facts import (FACTS, bitsandbytes_facts, free_gb, long_paths_enabled,  # noqa: F401
                                 memory_now, query_nvidia_smi, torch_facts, version_numbers)

EASEL_DIR = Path(__file__).resolve().parents[1]


def gather_facts(easel_dir: Path = EASEL_DIR, runs_dir: Path | None = None) -> dict:
    """Every key of FACTS for this PC; a missing or broken package is a fact, never an exception."""
    exe, base = sys.executable, getattr(sys, "_base_executable", sys.executable)
    facts = {"platform": sys.platform, "python": tuple(sys.version_info[:3]), "python_bits": struct.calcsize("P") * 8,
             "python_exe": f"{exe}, which starts {base}" if sys.platform == "win32" and base != exe else exe}
    facts.update(torch_facts())
    facts["driver"], smi_gpus = query_nvidia_smi()
    facts["gpus"] = facts["gpus"] or smi_gpus
    facts["bitsandbytes"] = bitsandbytes_facts() if facts["cuda_available"] else None
    facts.update(ram_total_gb=None, ram_free_gb=None, pagefile_gb=None, long_paths=None)
    try:
        import psutil
        memory = psutil.virtual_memory()
        facts.update(ram_total_gb=round(memory.total / 2**30, 1), ram_free_gb=round(memory.available / 2**30, 1))
        if sys.platform == "win32":
            facts["pagefile_gb"] = round(psutil.swap_memory().total / 2**30, 1)
    except Exception:  # noqa: BLE001, S110 - psutil missing or failing: RAM is reported as not checked
        pass
    if sys.platform == "win32":
        facts["long_paths"] = long_paths_enabled()
    folders = [("the Easel folder", Path(easel_dir))] + ([("the runs folder", Path(runs_dir))] if runs_dir else [])
    facts["disks"] = [{"label": label, "path": str(p), "free_gb": free_gb(p)} for label, p in folders]
    return facts


def diagnose(facts: dict) -> list[Finding]:
    """Every finding about `facts`, in the order the user should deal with them."""
    return [finding for check in CHECKS for finding in check(facts)]


def format_findings(findings: list[Finding]) -> str:
    """One line per finding (then its hint), like `python -m engine check`, and the counts."""
    marks = {"error": "ERROR  ", "warning": "WARNING", "info": "info   ", "ok": "ok     "}
    lines = [f"Easel system doctor ({platform.system() or sys.platform} {platform.release()})"]
    for f in findings:
        lines += [f"{marks[f.severity]} {f.message}"] + ([f"        -> {f.hint}"] if f.hint else [])
    errors, warns = (sum(f.severity == s for f in findings) for s in ("error", "warning"))
    lines.append(f"{errors} error{'s' * (errors != 1)}, {warns} warning{'s' * (warns != 1)}.")
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    """python -m engine doctor [--json] [--runs-dir FOLDER]; exit code 1 when there are errors, else 0."""
    parser = argparse.ArgumentParser(prog="python -m engine doctor", description="Check that this PC is ready to "
                                     "train: Python, PyTorch, the GPU and its driver, bitsandbytes, RAM, disk space.")
    parser.add_argument("--runs-dir", type=Path, help="the folder the runs go to (its drive's free space is checked)")
    parser.add_argument("--json", action="store_true", help="print the findings (and the facts) as JSON")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")  # a Windows console or log file is cp1252: odd names must not crash us
    findings = diagnose(facts := gather_facts(runs_dir=args.runs_dir))
    if args.json:
        counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
        sys.stdout.write(json.dumps({"counts": counts, "findings": [asdict(f) for f in findings], "facts": facts},
                                    ensure_ascii=False, indent=1, default=str) + "\n")
    else:
        sys.stdout.write(format_findings(findings) + "\n")
    return 1 if any(f.severity == "error" for f in findings) else 0
