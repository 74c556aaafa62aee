"""tools/torch_build.py: install.bat's choice of PyTorch CUDA build from what nvidia-smi says about the PC."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from torch_build import pick, query_gpus  # noqa: E402


@pytest.mark.parametrize("gpus, tag, says", [
    ([], "cu130", "no NVIDIA GPU"),
    ([("NVIDIA GeForce RTX 4090", "581.57", "8.9")], "cu130", "CUDA 13.0 build"),
    ([("NVIDIA GeForce RTX 5090", "581.08", "12.0")], "cu130", "CUDA 13.0 build"),
    # a driver older than 580 cannot run CUDA 13: the 12.6 build works on it, for cards it has kernels for
    ([("NVIDIA GeForce RTX 3060", "560.94", "8.6")], "cu126", "reinstall for the CUDA 13.0 build"),
    # ...but it has none for Blackwell: the user must update the driver
    ([("NVIDIA GeForce RTX 5070", "572.16", "12.0")], "cu130", "update the driver"),
    # CUDA 13 dropped Pascal: a GTX 1080 needs the 12.6 build whatever the driver
    ([("NVIDIA GeForce GTX 1080", "581.57", "6.1")], "cu126", "predates the RTX 20 series"),
    ([("NVIDIA GeForce GTX 1080", "472.12", "6.1")], "cu126", "update the NVIDIA driver"),
    # a driver too old to report compute capability, and too old for any current build
    ([("NVIDIA GeForce RTX 2070", "466.77", "")], "cu126", "update the driver"),
    # two cards: the oldest decides (one build must serve both)
    ([("NVIDIA GeForce RTX 4090", "581.57", "8.9"), ("NVIDIA GeForce GTX 1070", "581.57", "6.1")], "cu126",
     "predates"),
])
def test_the_build_fits_the_card_and_the_driver(gpus, tag, says):
    chosen, message = pick(gpus)
    assert chosen == tag
    assert says in message


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a bash script")
def test_nvidia_smi_is_read_per_gpu(fake_nvidia_smi):
    fake_nvidia_smi('echo "NVIDIA GeForce RTX 4090, 581.57, 8.9, 24564 MiB"\n'
                    'echo "NVIDIA GeForce RTX 3090, 581.57, 8.6, 24576 MiB"\n')
    assert query_gpus() == [("NVIDIA GeForce RTX 4090", "581.57", "8.9"), ("NVIDIA GeForce RTX 3090", "581.57", "8.6")]


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a bash script")
def test_an_old_nvidia_smi_without_compute_cap_is_asked_again_without_it(fake_nvidia_smi):
    fake_nvidia_smi('case "$1" in *compute_cap*) echo "Field \\"compute_cap\\" is not a valid field" >&2; exit 2;; '
                    'esac\necho "NVIDIA GeForce GTX 1060, 466.77, 6144 MiB"\n')
    assert query_gpus() == [("NVIDIA GeForce GTX 1060", "466.77", "")]


@pytest.mark.skipif(os.name == "nt", reason="the fake nvidia-smi is a bash script")
def test_the_script_prints_the_tag_alone_on_stdout_and_why_on_stderr(fake_nvidia_smi):
    fake_nvidia_smi('echo "NVIDIA GeForce GTX 1080, 581.57, 6.1, 8192 MiB"\n')
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "torch_build.py")], capture_output=True, text=True,
                          env=os.environ.copy())
    assert proc.returncode == 0
    assert proc.stdout == "cu126\n"  # install.bat reads this line with for /f
    assert "GTX 1080" in proc.stderr and proc.stderr.startswith("[easel] ")


def test_without_nvidia_smi_there_is_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert query_gpus() == []
