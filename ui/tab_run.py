"""Run tab: start, stop, resume, sample now, save now; live log, progress, loss plot, samples, output files, errors.

The engine is a separate process (ui/runner.py); this tab tails its events.jsonl on a gr.Timer. The tail state
(a RunView) is per browser session, so a reload replays the run folder from the start and re-attaches.
"""
from __future__ import annotations

import html
import math
import re
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.config.load import ConfigError, load_preset
from engine.config.validate import needs_dataset
from engine.models.families import capabilities
from ui import runner, sample_grid
from ui.fields import format_problems, problems_of
from ui.run_state import RunView

# Textbox(autoscroll=True) does not follow a non-interactive box's new lines (measured: scrollTop stayed 0): this
# keeps the box at its last line, unless the person has scrolled up to read (then it stays where they are).
FOLLOW_JS = """() => { for (const id of ['run-log', 'run-engine-log']) {
  const t = document.querySelector('#' + id + ' textarea'); if (!t) continue;
  const seen = Number(t.dataset.easelSeen || 0);
  const atEnd = !seen || t.scrollTop + t.clientHeight >= seen - 8;
  requestAnimationFrame(() => { if (atEnd) t.scrollTop = t.scrollHeight; t.dataset.easelSeen = t.scrollHeight; });
} }"""
STOP_TIMEOUT_S = 60.0   # graceful stop saves state first; a big model on a slow disk can take a while
TICK_S = 1.0


def build() -> dict:
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="run-start")
        stop = gr.Button("Stop", variant="stop", elem_id="run-stop")
        resume = gr.Button("Resume", elem_id="run-resume")
        sample_now = gr.Button("Sample now", elem_id="run-sample-now")
        save_now = gr.Button("Save now", elem_id="run-save-now")
    message = gr.Markdown(elem_id="run-message")
    # shown when the dataset check found warnings: Start asks once, this starts with them
    start_anyway = gr.Button("Start anyway", variant="secondary", visible=False, elem_id="run-start-anyway")
    folder = gr.Markdown(elem_id="run-folder")
    progress = gr.HTML(progress_html(None), elem_id="run-progress")
    error = gr.Markdown(elem_id="run-error")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            log = gr.Textbox(label="Log", lines=14, max_lines=14, autoscroll=True, interactive=False,
                             elem_id="run-log")
        with gr.Column(scale=2):
            # training loss per step, and the validation loss (when the preset holds out a split) in its colour
            loss = gr.LinePlot(loss_frame([], []), x="step", y="loss", color="series", height=330,
                               elem_id="run-loss", x_title="step", y_title="loss", label="Loss",
                               color_map={"training": "#2563eb", "validation": "#dc2626"})
            # RL runs (training.mode rl): each epoch's mean reward; hidden until a run has one
            reward = gr.LinePlot(x="step", y="reward", height=220, elem_id="run-reward", x_title="step",
                                 y_title="mean reward", label="Reward (RL)", visible=False)
    with gr.Accordion("Sample grid: a row per step, a column per LoRA strength (click an image for full size)",
                      open=True, elem_id="sample-grid-box"):
        with gr.Row():
            grid_prompt = gr.Dropdown(label="Prompt", choices=[], elem_id="grid-prompt", scale=3)
            grid_step_a = gr.Dropdown(label="Compare step", choices=[], elem_id="grid-step-a", scale=1)
            grid_step_b = gr.Dropdown(label="with step", choices=[], elem_id="grid-step-b", scale=1)
        grid = gr.HTML(sample_grid.grid_html([], None), elem_id="sample-grid")
        compare = gr.HTML(elem_id="grid-compare")
    samples = gr.Gallery(label="Samples (newest step first; a LoRA's at each strength)", columns=6,
                         height="auto", elem_id="run-samples", object_fit="contain", preview=False)
    files = gr.File(label="Output files (.safetensors; the best by validation first)", file_count="multiple",
                    interactive=False, elem_id="run-files", visible=False)
    best = gr.Markdown(elem_id="run-best")
    with gr.Row():
        tensorboard = gr.Button("Open TensorBoard", size="sm", scale=0, min_width=180, elem_id="run-tensorboard")
        tensorboard_link = gr.Markdown(elem_id="run-tensorboard-link")
    with gr.Accordion("Engine output (engine.log)", open=False):
        engine_log = gr.Textbox(lines=12, max_lines=12, autoscroll=True, interactive=False, show_label=False,
                                elem_id="run-engine-log")
    view = gr.State(None)
    timer = gr.Timer(TICK_S)
    return {"start": start, "start_anyway": start_anyway, "accepted": gr.State(None), "stop": stop, "resume": resume,
            "sample_now": sample_now, "save_now": save_now, "message": message, "folder": folder,
            "progress": progress, "error": error, "log": log, "loss": loss, "reward": reward, "samples": samples,
            "files": files, "best": best, "tensorboard": tensorboard,
            "tensorboard_link": tensorboard_link, "engine_log": engine_log, "view": view, "timer": timer,
            "grid": grid, "compare": compare, "grid_prompt": grid_prompt, "grid_step_a": grid_step_a,
            "grid_step_b": grid_step_b}


# what render() updates: every handler that shows a run lists these as outputs
RENDERED = ("message", "folder", "progress", "log", "loss", "reward", "samples", "files", "best", "error",
            "engine_log", "grid", "compare", "grid_prompt", "grid_step_a", "grid_step_b")


def rendered(parts: dict) -> list:
    return [parts[k] for k in RENDERED]


def progress_html(view: RunView | None) -> str:
    if view is None:
        text, fraction, state = "No run yet. Load a preset (or press Demo) and start training.", 0.0, "idle"
    else:
        text, fraction = view.progress_text(), view.fraction()
        state = view.finished or "running"
    return (f'<div class="easel-progress" data-state="{state}"><div class="easel-progress-bar" '
            f'style="width:{fraction * 100:.1f}%"></div><div class="easel-progress-text">{html.escape(text)}'
            f'</div></div>')


def engine_log_tail(run_dir: Path, max_bytes: int = 20_000) -> str:
    path = Path(run_dir) / runner.LOG_NAME
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def error_markdown(view: RunView) -> str:
    e = view.error or {}
    text = f"### The run failed\n**{e.get('message', 'unknown error')}**"
    if e.get("hint"):
        text += f"\n\nWhat to do: {e['hint']}"
    return text + f"\n\nThe full log is in `{Path(view.run_dir) / runner.LOG_NAME}`."


def check_process(view: RunView) -> None:
    """A run whose engine died without a last event (killed, crashed before it could write) ends as an error."""
    if view.finished or runner.pid_alive(runner.read_pid(view.run_dir)):
        return
    view.poll()  # its last words may have landed since the previous poll
    if view.finished:
        return
    if view.stop_requested_at is not None:  # runner.stop's thread kills an engine still there after the timeout
        view.finished = "stopped"
        how = (f"did not stop within {STOP_TIMEOUT_S:.0f} s; it was ended (Resume continues from the last saved "
               "state)" if runner.stop_deadline_passed(view.stop_requested_at, STOP_TIMEOUT_S) else "was stopped")
        view.log.append(f"{time.strftime('%H:%M:%S')} the engine {how}")
        return
    tail = engine_log_tail(view.run_dir, 2000).strip().splitlines()[-3:]
    view.finished = "error"
    view.error = {"message": "The engine exited without finishing. " + (" ".join(tail) if tail else ""),
                  "hint": "Read the engine output below; press Resume to continue from the last saved state."}


def _files_update(view: RunView):
    files = view.output_files()
    return gr.update(value=files or None, visible=bool(files))


def _loss_frame(view: RunView) -> pd.DataFrame:
    return loss_frame(view.loss_points, view.val_points)


def loss_frame(train: list, val: list) -> pd.DataFrame:
    """The training and the validation loss as two series, for Gradio's LinePlot, which (measured in Chromium)
    - draws nothing after an empty first frame, and fixes the series' colours at the first data it gets, dropping
      a series that appears later (validation starts at the first checkpoint): so every frame starts with one
      point of each series with no loss (NaN, not drawn);
    - treats object-typed columns as categories (labels piled up, a falling loss drawn rising): so the columns
      are numeric even when there is nothing else yet."""
    first = min([s for s, _ in train + val], default=0)
    rows = [(first, math.nan, "training"), (first, math.nan, "validation")]
    rows += [(s, v, "training") for s, v in train] + [(s, v, "validation") for s, v in val]
    steps, losses, series = zip(*rows)
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "loss": pd.Series(losses, dtype="float64"),
                         "series": pd.Series(series, dtype="object")})


def _reward_update(view: RunView):
    steps, rewards = zip(*view.reward_points) if view.reward_points else ((), ())
    frame = pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "reward": pd.Series(rewards, dtype="float64")})
    return gr.update(value=frame, visible=bool(view.reward_points))


def render(view: RunView | None, parts: dict, force: bool = False) -> dict:
    """Updates for the tab's outputs; unchanged ones are skipped so the page does not flicker."""
    if view is None:
        return {parts["progress"]: progress_html(None)}
    sent = view.sent
    values = {
        "message": (view.message(), view.message),
        "progress": (progress_html(view), lambda: progress_html(view)),
        "log": (len(view.log), lambda: "\n".join(view.log)),
        "loss": ((len(view.loss_points), len(view.val_points)), lambda: _loss_frame(view)),
        "reward": (len(view.reward_points), lambda: _reward_update(view)),
        "samples": (len(view.samples), view.gallery),
        "files": ((len(view.saved), view.finished), lambda: _files_update(view)),
        "best": ((len(view.saved), view.finished), view.best_text),
        "folder": (str(view.run_dir), lambda: f"Run folder: `{view.run_dir}`"),
        "error": (view.finished, lambda: error_markdown(view) if view.finished == "error" else ""),
        "engine_log": (view.offset, lambda: engine_log_tail(view.run_dir)),
        **grid_values(view),
    }
    out = {}
    for name, (signature, make) in values.items():
        if force or sent.get(name) != signature:
            sent[name] = signature
            out[parts[name]] = make()
    return out


def grid_values(view: RunView) -> dict:
    """render()'s entries for the sample grid: the prompt and step choices follow the samples; the grid and the
    comparison follow them and the choices (view.grid: prompt, step A, step B)."""
    samples = view.samples
    prompts = sample_grid.prompts_of(samples)
    prompt, a, b = view.grid
    prompt = prompt if prompt in prompts else (prompts[0] if prompts else None)
    steps = sample_grid.steps_of(samples, prompt)
    if not view.grid_chosen or a not in steps or b not in steps:   # until a person picks: the last two steps
        a, b = (steps[-2], steps[-1]) if len(steps) > 1 else (None, None)
    view.grid = (prompt, a, b)
    best = {str(e["path"]) for e in view.best_files()}
    marks = sample_grid.step_marks(view.saved, best)
    return {
        "grid_prompt": (tuple(prompts), lambda: gr.update(choices=prompts, value=prompt)),
        "grid_step_a": (tuple(steps), lambda: gr.update(choices=steps, value=a)),
        "grid_step_b": (tuple(steps), lambda: gr.update(choices=steps, value=b)),
        "grid": ((len(samples), len(view.saved), prompt), lambda: sample_grid.grid_html(samples, prompt, marks)),
        "compare": ((len(samples), prompt, a, b), lambda: sample_grid.compare_html(samples, prompt, a, b)),
    }


def tick(view: RunView | None, parts: dict) -> dict:
    if view is None:  # no run yet: change nothing (an empty dict is read by Gradio as one missing value)
        return {parts["view"]: gr.skip()}
    if not view.finished:
        view.poll()
        check_process(view)
    return {parts["view"]: view, **render(view, parts)}


def run_roots(ctx, preset_path=None) -> list[Path]:
    """The folders that can hold this GUI's runs: ctx.runs_root, and the output.dir of the preset at preset_path
    (the one this browser worked on last) when runs follow the preset."""
    roots = [Path(ctx.runs_root)]
    if preset_path and Path(preset_path).is_file():
        try:
            roots.append(ctx.runs_root_for(load_preset(preset_path)))
        except ConfigError:
            pass
    return list(dict.fromkeys(r.resolve() for r in roots))


def attach(ctx, preset_path=None) -> RunView | None:
    """The run to show after a page load: the one training now, else the newest run folder (its results), looked
    for in run_roots(ctx, preset_path)."""
    from engine.runs import list_runs
    roots = run_roots(ctx, preset_path)
    run_dir = next((r for r in map(runner.active_run, roots) if r is not None), None)
    if run_dir is None:
        every = [r for root in roots for r in list_runs(root)]
        run_dir = max(every, key=lambda r: r.stat().st_mtime, default=None)
    if run_dir is None:
        return None
    ctx.allow(run_dir)
    view = RunView(run_dir)
    view.poll()
    if not view.finished and not runner.is_running(run_dir):
        check_process(view)
    return view


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name: a model the engine looks up in the Hub cache


def preflight(preset, require: bool = True) -> list[tuple[str, str]]:
    """Problems a valid preset can still have on this PC (missing folders), found before a run folder is made.
    require=False (while the form is edited): only paths that are typed and not found, not the empty ones."""
    problems = []
    d, m = preset.dataset, preset.model
    if not d.path.strip():
        if require and needs_dataset(preset):
            problems.append(("dataset.path", "choose your dataset folder (Dataset tab)"))
    elif not Path(d.path).is_dir():
        problems.append(("dataset.path", f"folder not found: {d.path}"))
    if d.use_reg and d.reg_path and not Path(d.reg_path).is_dir():
        problems.append(("dataset.reg_path", f"folder not found: {d.reg_path}"))
    if not m.path.strip():
        if require and capabilities(m.family).base_model:   # a DiT from scratch has none
            problems.append(("model.path", "set the base model: a diffusers folder, a .safetensors file or a Hub "
                                           "id"))
    elif not Path(m.path).exists() and not HUB_ID.match(m.path.strip()):
        problems.append(("model.path", f"not found: {m.path} (neither a file, a folder nor a Hub id like "
                                       "org/model-name)"))
    return problems


def doctor_applies(preset) -> bool:
    """The dataset doctor checks captioned image datasets: every SD / FLUX run but VAE training (images without
    captions) and RL on a prompts file. A DiT's dataset is class folders, .npz arrays or bare images."""
    return (capabilities(preset.model.family).base_model and preset.training.mode != "vae" and needs_dataset(preset)
            and Path(preset.dataset.path).is_dir())


def dataset_verdict(values: dict, form) -> tuple[dict | None, list[dict], list[dict], str]:
    """(the doctor's report, its errors, its warnings, the summary line) for the form's dataset."""
    from ui.tab_dataset import run_check

    summary, rep, _ = run_check(values, form)
    findings = (rep or {}).get("findings", [])
    return (rep, [f for f in findings if f["severity"] == "error"], [f for f in findings if f["severity"] == "warning"],
            summary)


def findings_list(findings: list[dict], limit: int = 8) -> str:
    lines = [f"- {f['message']} *{f['hint']}*" for f in findings[:limit]]
    if len(findings) > limit:
        lines.append(f"- … and {len(findings) - limit} more (the Dataset tab lists them all)")
    return "\n".join(lines)


def warnings_key(preset, warnings: list[dict]) -> str:
    """What the user accepted with Start anyway: this dataset with these warnings (new ones ask again)."""
    return "\n".join([preset.dataset.path, *sorted(f["message"] for f in warnings)])


def start_new(preset, ctx) -> RunView:
    """A new run folder from the validated preset, and the engine started in it."""
    from engine.runs import create_run_dir
    root = ctx.runs_root_for(preset)
    runner.check_idle(ctx.runs_root, root)  # before making a run folder
    run_dir = create_run_dir(preset, root)
    ctx.allow(run_dir)
    runner.start_run(run_dir, ctx.runs_root)
    return RunView(run_dir)


def resume_view(view: RunView | None, ctx) -> RunView:
    if view is None or not view.finished:
        raise ValueError("Nothing to resume: resume continues a run that was stopped or failed.")
    runner.start_run(view.run_dir, ctx.runs_root, resume=True)
    view.finished, view.error, view.stop_requested_at = None, None, None
    view.sent.clear()
    view.say(f"Resuming `{view.run_dir.name}`…")
    return view


def wire(ctx, form, parts: dict, problem_outputs: list, dataset: dict) -> None:
    """dataset: the Dataset tab's parts (Start shows the doctor's findings there, with their fix buttons)."""
    outs = [parts["view"], *rendered(parts)]
    doctor_outs = [parts["start_anyway"], parts["accepted"], dataset["summary"], dataset["report"],
                   dataset["gallery"], dataset["fix_note"]]

    def on_start(values, anyway: bool = False):
        try:
            preset = form.to_preset(values)
            problems = preflight(preset)
        except ConfigError as exc:
            problems = problems_of(exc)
        if problems:
            return {**form.problem_updates(problems), parts["start_anyway"]: gr.update(visible=False),
                    parts["message"]: "**Fix these before starting:**\n" + format_problems(problems, form)}
        if doctor_applies(preset):
            rep, errors, warnings, summary = dataset_verdict(values, form)
            shown = {dataset["summary"]: summary, dataset["report"]: rep}
            if errors:
                from ui.tab_dataset import gallery_items
                return {**shown, dataset["gallery"]: gallery_items(rep),
                        parts["start_anyway"]: gr.update(visible=False),
                        dataset["fix_note"]: "**Start is waiting for these fixes.** Fix the errors below, then press "
                                             "Start training again.",
                        parts["message"]: f"**The dataset check found {len(errors)} error(s); the run did not start.** "
                                          f"The Dataset tab lists them with a fix button each:\n"
                                          + findings_list(errors)}
            key = warnings_key(preset, warnings)
            if warnings and not anyway and values.get(parts["accepted"]) != key:
                return {**shown, parts["start_anyway"]: gr.update(visible=True),
                        parts["message"]: f"**The dataset check found {len(warnings)} warning(s).** Training works "
                                          f"with them, but they may spoil the result:\n{findings_list(warnings)}\n\n"
                                          "Press **Start anyway** to train as it is, or fix them on the Dataset tab."}
            accepted = {parts["accepted"]: key}
        else:
            accepted = {}
        try:
            view = start_new(preset, ctx)
        except (runner.RunBusy, OSError) as exc:
            return {parts["message"]: f"**Could not start:** {exc}"}
        view.poll()
        view.say("Started: the engine is loading the model.")
        return {**form.problem_updates([]), parts["view"]: view, parts["start_anyway"]: gr.update(visible=False),
                **accepted, **render(view, parts, force=True)}

    inputs = {*form.inputs(), parts["accepted"]}
    parts["start"].click(on_start, inputs=inputs, outputs=[*outs, *doctor_outs, *problem_outputs],
                         api_name="start_run")
    parts["start_anyway"].click(lambda values: on_start(values, anyway=True), inputs=inputs,
                                outputs=[*outs, *doctor_outs, *problem_outputs], api_name="start_run_anyway")

    def on_stop(view):
        if view is None or view.finished or not runner.is_running(view.run_dir):
            return {parts["message"]: "No run is training."}
        view.stop_requested_at = time.time()
        runner.stop(view.run_dir, STOP_TIMEOUT_S)
        view.say("Stopping: the engine saves its state at the end of this step, then exits (forced after "
                 f"{STOP_TIMEOUT_S:.0f} s).")
        return {parts["view"]: view, **render(view, parts)}

    parts["stop"].click(on_stop, inputs=parts["view"], outputs=outs)

    def on_resume(view):
        try:
            view = resume_view(view, ctx)
        except (ValueError, runner.RunBusy, OSError) as exc:
            return {parts["message"]: f"**Could not resume:** {exc}"}
        return {parts["view"]: view, **render(view, parts, force=True)}

    parts["resume"].click(on_resume, inputs=parts["view"], outputs=outs)

    for what in ("sample_now", "save_now"):
        def on_request(view, what=what):
            if view is None or view.finished or not runner.is_running(view.run_dir):
                return {parts["message"]: "No run is training."}
            runner.request(view.run_dir, what)
            view.say(f"Asked the engine to {what.replace('_now', '')} at the next step.", until="next file")
            return {parts["view"]: view, **render(view, parts)}

        parts[what].click(on_request, inputs=parts["view"], outputs=outs)

    parts["timer"].tick(lambda view: tick(view, parts), inputs=parts["view"], outputs=outs,
                        show_progress="hidden", queue=False)

    def on_tensorboard(view):
        from ui.tensorboard import open_board

        root = Path(view.run_dir).parent if view is not None else Path(ctx.runs_root)
        try:
            url = open_board(root, ctx.project_root)
        except (RuntimeError, OSError) as exc:
            return f"**{exc}**"
        return f"[TensorBoard: {url}]({url}) (every run in `{root}`: losses, learning rates, samples)"

    parts["tensorboard"].click(on_tensorboard, inputs=parts["view"], outputs=parts["tensorboard_link"],
                               api_name="open_tensorboard")

    def on_grid_choice(view, prompt, a, b):
        if view is None:
            return {parts["view"]: gr.skip()}
        view.grid, view.grid_chosen = (prompt, a, b), True
        return {parts["view"]: view, **render(view, parts)}

    choices = [parts["view"], parts["grid_prompt"], parts["grid_step_a"], parts["grid_step_b"]]
    for choice in choices[1:]:
        choice.input(on_grid_choice, inputs=choices, outputs=outs, show_progress="hidden")
    for box in (parts["log"], parts["engine_log"]):
        box.change(None, js=FOLLOW_JS, show_progress="hidden")
