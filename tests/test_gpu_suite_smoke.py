"""bench/gpu_suite.py, the script for the one short GPU session: its --cpu-smoke runs the same code with tiny models
on the CPU, so a GPU session never finds a broken script. Every case must come out as a row of numbers."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_suite.py"


def _suite():
    if "gpu_suite" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)  # its top level imports only the stdlib
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module   # its dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return sys.modules["gpu_suite"]


def _cases():
    return _suite().CASES


def _smoke(*args):
    # ~1.5 minutes alone on two cores; the limit leaves room for a CPU shared with other jobs
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", *args], cwd=ROOT, capture_output=True,
                          text=True, encoding="utf-8", timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
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
        storage = wall.split("steps", 1)[1].strip()                               # what the model itself says
        if name.startswith(("flux", "zimage")):
            gb = next(w for w in name.split() if w.endswith("gb"))
            assert tier.split()[0] == gb.removesuffix("gb"), row                  # the tier budget is shown
            assert float(tier.split()[2]) > 0, row                                # engine.models.fit's prediction
        if name.startswith("flux "):
            assert storage.startswith("fp8"), row                                 # fp8 storage really applied
            assert ("swap" in wall) == (not name.startswith("flux 24gb")), row  # block swap in the 16/12 GB tiers
        if name.startswith("flux2"):
            # fp8 base and Qwen3 in fp8 on the 4B's 12 GB and the 9B's 16 GB; bf16 above; 4 blocks swapped on 9B 24 GB
            saver = name.startswith(("flux2 4b 12gb", "flux2 9b 16gb"))
            assert storage.startswith("fp8") == saver and ("text encoder fp8" in wall) == saver, row
            assert ("swap" in wall) == name.startswith("flux2 9b 24gb"), row
        if name.startswith("zimage"):
            assert storage.startswith("fp8") == (not name.startswith("zimage 24gb")), row   # bf16 base on 24 GB
            assert ("swap" in wall) == name.startswith("zimage 8gb"), row                 # block swap on 8 GB only
    assert "skipped: none" in out


def test_every_preset_runs_once_before_any_runs_twice_the_older_families_within_7_minutes():
    """By the suite's own estimates: every tier of SD1.5, SDXL, FLUX.1 and Z-Image in 7 minutes, then klein's four
    presets (klein has two in the 16 GB tier), then the second resolutions."""
    cases = _cases()
    presets = [c.preset for c in cases]
    first_repeat = next(i for i, preset in enumerate(presets) if preset in presets[:i])
    assert set(presets[:first_repeat]) == set(presets)
    klein = next(i for i, c in enumerate(cases) if c.family == "flux2")
    assert {c.family for c in cases[klein:first_repeat]} == {"flux2"} and first_repeat - klein == 4
    assert sum(c.expected_s for c in cases[:klein]) <= 7 * 60 - 30   # 30 s: imports and the CUDA start


def test_the_default_budget_reaches_the_first_klein_case_and_skips_the_rest_as_the_docstring_says():
    """The first guesses (CASES' expected_s) against the default --budget-s, 30 s of start-up first: every case up to
    klein 9B 16 GB starts; the docstring names what the default budget skips."""
    module = _suite()
    elapsed, started = 30.0, []
    for case in module.CASES:
        if elapsed + case.expected_s > module.BUDGET_S:
            break
        elapsed += case.expected_s
        started.append(case.name)
    klein = next(i for i, c in enumerate(module.CASES) if c.family == "flux2")
    assert started == [c.name for c in module.CASES[:klein + 1]] and started[-1] == "flux2 9b 16gb 1024"
    doc = " ".join(module.__doc__.split())
    assert "skips the other three (9B 24 GB, 4B 12 GB, 4B 16 GB) and the six second resolutions" in doc
    assert len(module.CASES) - len(started) == 3 + 6


def test_the_budget_counts_a_rebuild_when_the_models_on_the_gpu_are_another_cases():
    module = _suite()
    suite, cases = module.Suite(smoke=False), {c.name: c for c in module.CASES}
    fp8, bf16 = cases["zimage 16gb 1024"], cases["zimage 24gb 1024"]
    assert suite.expected_s(bf16) == bf16.expected_s                      # the first guess until the family ran
    suite.seen(fp8, module.Row(fp8, build_s=12.0, wall_s=40.0))
    assert suite.expected_s(cases["zimage 12gb 512"], suite.model_key(fp8)) == 28.0  # the same fp8 models
    assert suite.expected_s(bf16, suite.model_key(fp8)) == 40.0                      # the bf16 base: built again
    # the 8 GB tier's Qwen3 is in fp8 too (model.text_encoder_fp8): other models, built again
    assert suite.expected_s(cases["zimage 8gb 512"], suite.model_key(fp8)) == 40.0
    # klein 4B and 9B are one family with the same savers in bf16: the model itself tells their models apart
    assert suite.model_key(cases["flux2 4b 16gb 1024"]) != suite.model_key(cases["flux2 9b 24gb 1024"])


def test_the_real_size_zimage_is_the_model_that_will_it_fit_counts():
    """build_zimage at real size, on the meta device: the parameter counts engine.models.fit predicts with."""
    from math import prod

    import torch

    from engine.models.families.zimage.memory import MEMORY, zimage_tensors

    comps = _suite().build_zimage(False, "meta", torch.bfloat16)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(comps.denoiser) == sum(prod(shape) for shape, _ in zimage_tensors().values()) == 6_154_908_736
    assert count(comps.text_encoders[0]) == MEMORY["zimage"].known["text_encoder"]
    assert count(comps.vae) == MEMORY["zimage"].known["vae"]
    assert comps.vae.config.latent_channels == comps.denoiser.config.in_channels == 16


@pytest.mark.parametrize("variant", ["4b", "9b"])
def test_the_real_size_klein_is_the_model_that_will_it_fit_counts(variant):
    """build_flux2 at real size, on the meta device: flux2/memory.py's counts, which engine.models.fit predicts with
    (Qwen3-4B's tied head counted once, Qwen3-8B's own head counted)."""
    from math import prod

    import torch

    from engine.models.families.flux2.memory import AE_PARAMS, klein_tensors, qwen3_tensors

    comps = _suite().build_flux2(False, "meta", torch.bfloat16, variant)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    total = lambda tensors: sum(prod(shape) for shape, _ in tensors.values())  # noqa: E731
    assert count(comps.denoiser) == total(klein_tensors(variant)) == {"4b": 3_875_544_576,
                                                                       "9b": 9_078_581_248}[variant]
    assert count(comps.text_encoders[0]) == total(qwen3_tensors(variant))
    assert sum(t.numel() for t in comps.vae.state_dict().values()) == AE_PARAMS   # its batch-norm statistics too
    assert comps.extra["variant"] == variant
    assert 4 * comps.vae.config.latent_channels == comps.denoiser.config.in_channels == 128
    assert comps.denoiser.config.joint_attention_dim == 3 * comps.text_encoders[0].config.hidden_size


def test_past_the_time_budget_no_case_starts_and_the_table_names_the_skipped_ones():
    out, rows = _smoke("--budget-s", "0")
    assert all(row is not None and "skipped" in row for row in rows.values()), out
    assert out.splitlines()[-2].startswith("total ") and all(name in out.splitlines()[-2] for name in rows)


def test_settings_reach_every_case_and_cpu_real_trains_real_sizes_at_batch_1_in_fp32():
    out, rows = _smoke("--only", "sd15", "--set", "training.gradient_checkpointing=false")
    assert "Settings for every case: training.gradient_checkpointing=false" in out
    assert rows["sd15 512 bs4"] is not None and "error" not in rows["sd15 512 bs4"]
    suite_module = _suite()
    case = next(c for c in suite_module.CASES if c.name.startswith("sd15"))
    suite = suite_module.Suite(smoke=False, cpu_real=True, overrides=["training.gradient_checkpointing=false"])
    preset = suite.preset(case, Path("."))
    assert preset.dataset.resolution_px == 512 and preset.training.batch_size == 1    # the real size, batch 1
    assert preset.training.precision == "fp32" and not preset.training.gradient_checkpointing
