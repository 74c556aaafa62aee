"""bench/gpu_suite.py, the script for the one short GPU session: its --cpu-smoke runs the same code with tiny models
on the CPU, so a GPU session never finds a broken script. Every case must come out as a row of numbers."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_suite.py"


def _cases():
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)  # its top level imports only the stdlib
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module.CASES


def _smoke(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", *args], cwd=ROOT, capture_output=True,
                          text=True, encoding="utf-8", timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    table = proc.stdout[proc.stdout.index("\ncase "):]
    rows = {case.name: next((line for line in table.splitlines() if line.startswith(case.name + " ")), None)
            for case in _cases()}
    return proc.stdout, rows


def test_the_cpu_smoke_trains_every_case_both_ways_and_prints_its_row():
    out, rows = _smoke()
    for name, row in rows.items():
        assert row is not None, f"no row for {name}:\n{out}"
        easel, plain, ratio, tier, wall = row[len(name):].split("|")
        assert float(easel.split()[0]) > 0 and float(plain.split()[0]) > 0, row   # s/it of both loops
        assert float(ratio.strip().rstrip("x")) > 0, row                         # easel/plain img/s
        assert float(wall.split()[0]) > 0 and "error" not in wall, row
        if name.startswith("flux"):
            assert tier.split()[0] in ("24", "16", "12"), row                     # the tier budget is shown
            assert "fp8" in wall, row                                             # fp8 storage really applied
            assert ("swap" in wall) == (not name.startswith("flux 24gb")), row  # block swap in the 16/12 GB tiers
    assert "skipped: none" in out


def test_past_the_time_budget_no_case_starts_and_the_table_names_the_skipped_ones():
    out, rows = _smoke("--budget-s", "0")
    assert all(row is not None and "skipped" in row for row in rows.values()), out
    assert out.splitlines()[-2].startswith("total ") and all(name in out.splitlines()[-2] for name in rows)


def test_settings_reach_every_case_and_cpu_real_trains_real_sizes_at_batch_1_in_fp32():
    out, rows = _smoke("--only", "sd15", "--set", "training.gradient_checkpointing=false")
    assert "Settings for every case: training.gradient_checkpointing=false" in out
    assert rows["sd15 512 bs4"] is not None and "error" not in rows["sd15 512 bs4"]
    suite_module = sys.modules["gpu_suite"]
    case = next(c for c in suite_module.CASES if c.name.startswith("sd15"))
    suite = suite_module.Suite(smoke=False, cpu_real=True, overrides=["training.gradient_checkpointing=false"])
    preset = suite.preset(case, Path("."))
    assert preset.dataset.resolution_px == 512 and preset.training.batch_size == 1    # the real size, batch 1
    assert preset.training.precision == "fp32" and not preset.training.gradient_checkpointing
