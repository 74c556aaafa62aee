"""engine/system_doctor.py: `python -m engine doctor` judges fake PCs right, and runs for real on this one."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from engine import system_doctor
from engine.system_doctor import FACTS, cli, diagnose, gather_facts, has_kernels, min_driver, query_nvidia_smi

ROOT = Path(__file__).resolve().parents[1]
RTX_4090 = {"name": "NVIDIA GeForce RTX 4090", "compute": (8, 9), "vram_gb": 24.0, "bf16": True}
RTX_5090 = {"name": "NVIDIA GeForce RTX 5090", "compute": (12, 0), "vram_gb": 32.0, "bf16": True}
GTX_1080 = {"name": "NVIDIA GeForce GTX 1080", "compute": (6, 1), "vram_gb": 8.0, "bf16": None}


def pc(**changes) -> dict:
    """A healthy Windows PC with an RTX 4090 and torch 2.13 cu130; `changes` replace its facts."""
    facts = {"platform": "win32", "python": (3, 12, 7), "python_bits": 64,
             "python_exe": r"C:\Easel\.venv\Scripts\python.exe", "torch": "2.13.0+cu130", "torch_error": None,
             "torch_cuda": "13.0", "cuda_available": True, "cuda_error": None,
             "arch_list": ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], "driver": "581.57",
             "gpus": [RTX_4090], "bitsandbytes": {"version": "0.50.2", "error": None},
             "ram_total_gb": 64.0, "ram_free_gb": 41.5,
             "disks": [{"label": "the Easel folder", "path": r"C:\Easel", "free_gb": 250.0}],
             "pagefile_gb": 32.0, "long_paths": 1}
    assert set(changes) <= set(facts), set(changes) - set(facts)
    return {**facts, **changes}


def problems(facts: dict, severity: str | None = None) -> list:
    """The findings that are not 'ok' (or only those of `severity`), minus the always-there sysmem info."""
    return [f for f in diagnose(facts) if f.severity != "ok" and "Sysmem" not in f.message
            and (severity is None or f.severity == severity)]


def only(facts: dict, severity: str):
    """The one finding of `severity` (and nothing else wrong): each fake PC below has exactly one problem."""
    found = problems(facts)
    assert len(found) == 1 and found[0].severity == severity, [(f.severity, f.message) for f in found]
    return found[0]


def test_the_fake_pc_is_complete_and_healthy():
    assert set(pc()) == set(FACTS)
    assert problems(pc()) == []
    assert problems(pc(platform="linux", pagefile_gb=None, long_paths=None)) == []


def test_an_rtx_50_on_a_torch_without_sm_120_must_get_the_cuda_13_build():
    # the usual RTX 50 failure: a CUDA 12.6 torch, whose kernels stop at sm_90 ("no kernel image is available")
    found = only(pc(torch="2.13.0+cu126", torch_cuda="12.6", driver="560.94", arch_list=["sm_80", "sm_90"],
                    gpus=[RTX_5090]), "error")
    assert "RTX 5090" in found.message and "sm_120" in found.message
    assert "set EASEL_TORCH_CUDA=cu130" in found.hint and "install.bat" in found.hint
    linux = only(pc(platform="linux", torch="2.13.0+cu126", torch_cuda="12.6", driver="560.35.03",
                    arch_list=["sm_80", "sm_90"], gpus=[RTX_5090], pagefile_gb=None, long_paths=None), "error")
    assert "torch==2.13.0" in linux.hint and "download.pytorch.org/whl/cu130" in linux.hint


def test_a_pre_turing_card_on_a_cuda_13_torch_must_get_the_cuda_12_6_build():
    found = problems(pc(gpus=[GTX_1080]), "error")
    assert len(found) == 1, found     # one error, not a second one from the arch list
    assert "GTX 1080" in found[0].message and "CUDA 12.6" in found[0].message
    assert "set EASEL_TORCH_CUDA=cu126" in found[0].hint
    # ...and on the 12.6 build it is fine (only the bf16 note remains: Pascal has none)
    ok = pc(gpus=[GTX_1080], torch="2.13.0+cu126", torch_cuda="12.6", arch_list=["sm_50", "sm_60", "sm_70", "sm_90"])
    assert [f.severity for f in problems(ok)] == ["info"]


def test_a_driver_too_old_for_cuda_13_says_update_the_driver():
    found = only(pc(driver="560.94"), "error")
    assert "560.94" in found.message and "580" in found.message
    assert "update the nvidia driver" in found.hint.lower()
    assert "EASEL_TORCH_CUDA=cu126" in found.hint          # an RTX 4090 also runs the 12.6 build
    blackwell = only(pc(driver="560.94", gpus=[RTX_5090]), "error")
    assert "update the nvidia driver" in blackwell.hint.lower() and "cu126" not in blackwell.hint  # 12.6 has no RTX 50


def test_the_driver_minimum_follows_the_cuda_major_and_the_platform():
    assert min_driver("13.0", "win32") == min_driver("13.0", "linux") == 580
    assert (min_driver("12.6", "win32"), min_driver("12.6", "linux")) == (528, 525)
    assert min_driver(None, "win32") is None
    assert problems(pc(platform="linux", torch_cuda="12.6", driver="525.60.13", pagefile_gb=None, long_paths=None)) == []
    assert only(pc(torch_cuda="12.6", driver="526.98"), "error").severity == "error"


def test_kernels_are_matched_by_major_and_minor_or_ptx():
    assert has_kernels((8, 6), ["sm_80"])                 # binary compatible within a major
    assert not has_kernels((8, 0), ["sm_86"])
    assert not has_kernels((12, 0), ["sm_80", "sm_90", "sm_100"])
    assert has_kernels((12, 1), ["sm_90a", "sm_120"])
    assert has_kernels((12, 0), ["sm_80", "compute_90"])  # PTX: compiled by the driver on first use


def test_a_6_gb_card_gets_a_warning_with_what_fits():
    found = problems(pc(gpus=[{**RTX_4090, "name": "NVIDIA GeForce RTX 3050 6GB", "vram_gb": 6.0}]))
    assert [f.severity for f in found] == ["warning"]
    assert "6.0 GB" in found[0].message and "SD 1.5" in found[0].hint and "512 px" in found[0].hint
    assert "batch 1" in found[0].hint and "gradient checkpointing" in found[0].hint


def test_a_card_without_bf16_is_told_to_use_fp16():
    found = only(pc(gpus=[{**RTX_4090, "name": "NVIDIA GeForce RTX 2080", "compute": (7, 5), "bf16": False}]), "info")
    assert "bf16" in found.message and "fp16" in found.hint


def test_windows_settings_page_file_long_paths_and_sysmem_fallback():
    page = only(pc(pagefile_gb=8.0), "warning")
    assert "8.0 GB" in page.message and "paging file too small" in page.hint and "raise the page file" in page.hint.lower()
    long_paths = only(pc(long_paths=0), "warning")
    assert "LongPathsEnabled" in long_paths.message and "LongPathsEnabled -Value 1" in long_paths.hint
    for facts in (pc(), pc(pagefile_gb=8.0, long_paths=0), pc(gpus=[], cuda_available=False)):
        sysmem = [f for f in diagnose(facts) if "Sysmem Fallback" in f.message]
        assert len(sysmem) == 1 and sysmem[0].severity == "info"
        assert "Prefer No Sysmem Fallback" in sysmem[0].hint and "python.exe" in sysmem[0].hint
    linux = diagnose(pc(platform="linux", pagefile_gb=None, long_paths=None))
    assert not [f for f in linux if f.check == "windows"]


def test_low_disk_and_low_ram_are_warnings():
    disks = [{"label": "the Easel folder", "path": r"C:\Easel", "free_gb": 250.0},
             {"label": "the runs folder", "path": r"D:\runs", "free_gb": 12.5}]
    found = only(pc(disks=disks), "warning")
    assert "12.5 GB" in found.message and r"D:\runs" in found.message and "20 GB" in found.hint
    ram = only(pc(ram_total_gb=8.0, ram_free_gb=3.1), "warning")
    assert "SDXL needs 16 GB+ of RAM to load" in ram.message


def test_bitsandbytes_findings():
    broken = only(pc(bitsandbytes={"version": "0.50.2", "error": "RuntimeError: CUDA kernels not found"}), "warning")
    assert "adamw8bit" in broken.message and "CUDA kernels not found" in broken.message
    no_cuda = [f for f in diagnose(pc(bitsandbytes=None)) if f.check == "bitsandbytes"]
    assert len(no_cuda) == 1 and no_cuda[0].severity == "info" and "CUDA-only" in no_cuda[0].message


def test_python_outside_3_11_to_3_14_or_32_bit_is_an_error():
    assert "3.10.11" in only(pc(python=(3, 10, 11)), "error").message
    assert "3.15" in only(pc(python=(3, 15, 0)), "error").message
    assert "32-bit" in only(pc(python_bits=32), "error").message
    assert problems(pc(python=(3, 14, 0))) == [] and problems(pc(python=(3, 11, 0))) == []


def test_a_missing_broken_or_cpu_only_torch_is_an_error_the_user_can_act_on():
    gone = dict(torch=None, torch_cuda=None, cuda_available=False, arch_list=[], bitsandbytes=None)
    missing = problems(pc(torch_error="ModuleNotFoundError: No module named 'torch'", **gone), "error")
    assert len(missing) == 1 and "not installed" in missing[0].message and "install.bat" in missing[0].hint
    dll = problems(pc(torch_error="OSError: [WinError 126] The specified module could not be found. Error loading "
                                  "fbgemm.dll", **gone), "error")
    assert len(dll) == 1 and "WinError 126" in dll[0].message and "Visual C++" in dll[0].hint
    cpu = problems(pc(torch="2.13.0+cpu", torch_cuda=None, cuda_available=False, arch_list=[], bitsandbytes=None),
                   "error")
    assert len(cpu) == 1 and "CPU-only" in cpu[0].message and "EASEL_TORCH_CUDA=cu130" in cpu[0].hint


def test_a_cuda_torch_that_cannot_reach_a_fine_driver_says_so():
    errors = problems(pc(cuda_available=False, cuda_error="CUDA initialization: CUDA driver initialization failed",
                         bitsandbytes=None), "error")
    assert len(errors) == 1, errors
    found = errors[0]
    assert "CUDA driver initialization failed" in found.message and "Restart" in found.hint


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a bash script")
def test_nvidia_smi_is_read_per_gpu_and_old_drivers_are_asked_without_compute_cap(fake_nvidia_smi):
    fake_nvidia_smi('echo "NVIDIA GeForce RTX 5090, 581.57, 12.0, 32607 MiB"\n'
                    'echo "NVIDIA GeForce GTX 1080, 581.57, 6.1, [N/A]"\n')
    assert query_nvidia_smi() == ("581.57", [
        {"name": "NVIDIA GeForce RTX 5090", "compute": (12, 0), "vram_gb": 31.8},
        {"name": "NVIDIA GeForce GTX 1080", "compute": (6, 1), "vram_gb": None}])
    fake_nvidia_smi('case "$1" in *compute_cap*) echo "Field compute_cap is not a valid field"; exit 2;; esac\n'
                    'echo "NVIDIA GeForce GTX 970, 472.12, 4096 MiB"\n')
    assert query_nvidia_smi() == ("472.12", [{"name": "NVIDIA GeForce GTX 970", "compute": None, "vram_gb": 4.0}])


def test_importing_the_doctor_does_not_import_torch():
    code = "import sys, engine.system_doctor; print(sorted({'torch', 'bitsandbytes', 'psutil'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_doctor_runs_and_says_so_without_torch(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)   # `import torch` now fails as if it were not installed
    monkeypatch.setattr(system_doctor, "query_nvidia_smi", lambda: (None, []))
    facts = gather_facts()
    assert set(facts) == set(FACTS) and facts["torch"] is None and facts["torch_error"].startswith("ModuleNotFound")
    assert cli([]) == 1
    assert "PyTorch is not installed" in capsys.readouterr().out


def test_the_doctor_runs_for_real_on_this_machine(capsys, tmp_path):
    torch = pytest.importorskip("torch")
    code = cli([])
    text = capsys.readouterr().out
    assert cli(["--json", "--runs-dir", str(tmp_path / "runs")]) == code
    report = json.loads(capsys.readouterr().out)
    findings = report["findings"]
    assert findings and all(set(f) >= {"severity", "message", "hint"} for f in findings)
    assert all(f["severity"] in ("error", "warning", "info", "ok") for f in findings)
    assert code == (1 if any(f["severity"] == "error" for f in findings) else 0)
    assert report["counts"]["error"] == sum(f["severity"] == "error" for f in findings)
    assert f"Python {platform.python_version()}" in text and f"PyTorch {torch.__version__}" in text
    assert "the runs folder" in json.dumps(findings)
    assert text.count("\n") >= len(findings) + 2 and text.rstrip().endswith(".")
    if not report["facts"]["gpus"]:    # this CPU-only machine: says so, and what to do
        gpu = [f for f in findings if f["check"] == "gpu"]
        assert len(gpu) == 1 and "No CUDA GPU was found" in gpu[0]["message"] and "driver" in gpu[0]["hint"]
        assert "No CUDA GPU was found" in text
