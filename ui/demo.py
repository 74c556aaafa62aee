"""The Demo button: the engine builds a tiny model and a generated dataset, the form loads that preset, a run starts.

`python -m engine demo --prepare-only FOLDER` (engine/demo.py) writes FOLDER/demo-preset.yaml and prints its path
on the last stdout line. It imports torch, so it runs in a subprocess like everything heavy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from engine.config.load import ConfigError, load_preset
from ui import runner, tab_run
from ui.fields import format_problems

PREPARE_TIMEOUT_S = 300


def prepare(demo_dir: Path, cwd: Path) -> Path:
    """Run the engine's demo preparation; the demo preset's path, or RuntimeError with the engine's words."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "engine", "demo", "--prepare-only", str(demo_dir)], cwd=str(cwd),
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=PREPARE_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # Windows pipes default to cp1252
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"The demo could not be prepared (exit code {proc.returncode}): " + " ".join(detail))
    return Path(lines[-1])


def wire(ctx, form, bar: dict, run: dict, wiring) -> None:
    outputs = [*wiring.load_outputs, *[run[k] for k in ("view", "message", "folder", "progress", "log", "loss",
                                                         "samples", "files", "error", "engine_log")]]

    def on_demo():
        yield {bar["status"]: "Preparing the demo: building a tiny model and 16 images (takes a few seconds)…",
               run["message"]: "Preparing the demo…"}
        try:
            if runner.active_run(ctx.runs_root) is not None:
                raise runner.RunBusy("A run is still training; stop it before starting the demo.")
            path = prepare(ctx.demo_dir, ctx.project_root)
            preset = load_preset(path)
        except ConfigError as exc:
            yield {bar["problems"]: "**The demo preset has problems:**\n" + format_problems(exc.problems)}
            return
        except (RuntimeError, OSError, subprocess.TimeoutExpired, runner.RunBusy) as exc:
            yield {bar["problems"]: f"**Demo:** {exc}", run["message"]: f"**Demo:** {exc}"}
            return
        ctx.allow(Path(preset.dataset.path))
        updates = wiring.loaded(preset, str(path), "demo loaded")
        try:
            view = tab_run.start_new(preset, ctx)
        except (runner.RunBusy, OSError) as exc:
            yield {**updates, run["message"]: f"**Could not start:** {exc}"}
            return
        view.poll()
        yield {**updates, run["view"]: view, run["message"]: "Demo run started: a tiny model learns coloured shapes on the CPU.",
               **tab_run.render(view, run, force=True)}

    wiring.after_load(bar["demo"].click(on_demo, outputs=outputs)).then(None, js="() => { const t = [...document.querySelectorAll("
                                                         "'button[role=tab]')].find(b => b.textContent.trim() "
                                                         "=== 'Run'); if (t) t.click(); }")
