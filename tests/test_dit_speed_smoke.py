"""bench/dit_speed.py (issue 11's bench): Easel's DiT loop against a plain PyTorch loop. Run tiny, it must print
every line with sensible numbers; and its plain loop must build the same DiT config as Easel's family does."""
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "dit_speed.py"
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def test_the_bench_runs_tiny_and_prints_both_loops_the_ratio_and_the_breakdowns():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--steps", "4", "--repeats", "1"], cwd=ROOT,
                          capture_output=True, text=True, encoding="utf-8", timeout=60, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert time.monotonic() - started < 60
    out = proc.stdout
    assert re.search(r"steps: 4 +best of 1", out), out
    for loop in ("easel", "plain"):
        m = re.search(rf"^ *{loop}: {NUMBER} s/it +{NUMBER} img/s +peak memory {NUMBER} GB$", out, re.MULTILINE)
        assert m, f"no {loop} line:\n{out}"
        s_per_it, img_per_s, peak = map(float, m.groups())
        assert s_per_it > 0 and img_per_s > 0 and peak > 0, m.group(0)
        # the demo's batch of 16: img/s is batch / s/it (to the printed precision)
        assert abs(img_per_s - 16 / s_per_it) <= 0.05 + 0.01 * img_per_s, m.group(0)
    assert re.search(rf"^easel one-off caching: {NUMBER} s", out, re.MULTILINE), out
    assert re.search(rf"^easel step breakdown: forward {NUMBER} ms +backward {NUMBER} ms +optimizer {NUMBER} ms +"
                     rf"outside those: {NUMBER} % of the step$", out, re.MULTILINE), out
    assert re.search(rf"^plain step breakdown: data {NUMBER} ms +forward {NUMBER} ms +backward {NUMBER} ms +"
                     rf"optimizer {NUMBER} ms$", out, re.MULTILINE), out
    ratio = re.search(rf"^speed-up \(img/s\): {NUMBER}x$", out, re.MULTILINE)
    assert ratio and float(ratio.group(1)) > 0, out


def test_the_plain_loop_builds_the_same_dit_as_easel(tmp_path):
    from engine.config.load import load_preset
    from engine.demo import prepare_dit
    from engine.models.families.dit.record import build_transformer

    spec = importlib.util.spec_from_file_location("dit_speed", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from diffusers import DiTTransformer2DModel

    preset = load_preset(prepare_dit(tmp_path))
    plain = DiTTransformer2DModel(**bench.plain_dit_kwargs(preset))
    easel = build_transformer(preset.model.dit)
    assert dict(plain.config) == dict(easel.config)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in easel.parameters())
    items = bench.dataset_items(Path(preset.dataset.path), preset.model.dit.conditioning)
    assert len(items) == 16 and {label for _, label in items} == {0}
