"""A fake nvidia-smi: what the PC's GPUs and driver look like to tools/torch_build.py, the system doctor and the
dry run's "will it fit", without a GPU. It is a bash script, so the tests that use it skip on Windows."""
from __future__ import annotations

from pathlib import Path


def write_fake_nvidia_smi(bin_dir: Path, body: str) -> Path:
    """Write bin_dir/nvidia-smi, a bash script that runs `body` (it sees nvidia-smi's arguments as "$1", ...: a
    `case "$1" in *compute_cap*) ...` answers one query its own way); returns its path. Put bin_dir on PATH."""
    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/usr/bin/env bash\n" + body, encoding="utf-8")
    script.chmod(0o755)
    return script
