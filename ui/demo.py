"""The demo buttons: the engine writes a demo preset and its generated dataset, the form loads it, a run starts.

Demo: a small DiT learns the 16 coloured shapes from scratch; its samples turn from noise into the shapes within
about two minutes on a CPU, so a newcomer sees training work. LoRA demo: the LoRA workflow (trigger word, captions,
LoRA files) on a tiny random SD1.5 model, whose samples stay noise because its base model knows nothing.

`python -m engine demo --prepare-only [--dit] FOLDER` (engine/demo.py) writes the preset and prints its path on the
last stdout line. It imports torch, so it runs in a subprocess like everything heavy.
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


# button -> (engine demo flags, what the status says while preparing, once loaded, once started)
DEMOS = {
    "demo": (["--dit"], "Preparing the demo: 16 pictures of coloured shapes…", "demo loaded",
             "Demo run started: a small DiT learns to draw the coloured shapes from scratch on the CPU. Its samples "
             "below start as noise and turn into the shapes within about two minutes."),
    "lora_demo": ([], "Preparing the LoRA demo: building a tiny model and 16 images (takes a few seconds)…",
                  "LoRA demo loaded",
                  "LoRA demo started: a LoRA trains on a tiny random model (its samples stay noise: the random base "
                  "model knows nothing). It shows the LoRA workflow and files; the Demo button shows learning.  \n"
                  "**Your own images on this model:** Stop, choose your folder and its trigger word on the Dataset "
                  "tab, put the trigger in a sample prompt (Samples tab), then Start training. The run goes to "
                  "`demo/runs/`."),
}


def prepare(demo_dir: Path, cwd: Path, flags: list[str] = ()) -> Path:
    """Run the engine's demo preparation; the demo preset's path, or RuntimeError with the engine's words."""
    demo_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "engine", "demo", "--prepare-only", *flags, str(demo_dir)],
                          cwd=str(cwd),
                          capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=PREPARE_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # Windows pipes default to cp1252
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_file():
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"The demo could not be prepared (exit code {proc.returncode}): " + " ".join(detail))
    return Path(lines[-1])


def wire(ctx, form, bar: dict, run: dict, wiring) -> None:
    outputs = [*wiring.load_outputs, run["view"], *tab_run.rendered(run)]

    for button, (flags, preparing, loaded, started) in DEMOS.items():
        handler = demo_handler(ctx, bar, run, wiring, flags, preparing, loaded, started)
        wiring.after_load(bar[button].click(handler, outputs=outputs)).then(None, js=SHOW_RUN_TAB)


SHOW_RUN_TAB = ("() => { const t = [...document.querySelectorAll('button[role=tab]')].find(b => "
                "b.textContent.trim() === 'Run'); if (t) t.click(); }")


def demo_handler(ctx, bar: dict, run: dict, wiring, flags: list[str], preparing: str, loaded: str, started: str):
    def on_demo():
        yield {bar["status"]: preparing, run["message"]: preparing}
        try:
            if runner.active_run(ctx.runs_root) is not None:
                raise runner.RunBusy("A run is still training; stop it before starting the demo.")
            path = prepare(ctx.demo_dir, ctx.project_root, flags)
            preset = load_preset(path)
        except ConfigError as exc:
            yield {bar["problems"]: "**The demo preset has problems:**\n" + format_problems(exc.problems, wiring.form)}
            return
        except (RuntimeError, OSError, subprocess.TimeoutExpired, runner.RunBusy) as exc:
            yield {bar["problems"]: f"**Demo:** {exc}", run["message"]: f"**Demo:** {exc}"}
            return
        ctx.allow(Path(preset.dataset.path))
        updates = wiring.loaded(preset, str(path), loaded)
        try:
            view = tab_run.start_new(preset, ctx)
        except (runner.RunBusy, OSError) as exc:
            yield {**updates, run["message"]: f"**Could not start:** {exc}"}
            return
        view.poll()
        view.say(started, until="finished")
        yield {**updates, run["view"]: view, **tab_run.render(view, run, force=True)}

    return on_demo
