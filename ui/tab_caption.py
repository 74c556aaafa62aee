"""Captions tab: automatic captioning (an engine subprocess, tailed like a run, with stop) and bulk caption edits
with a preview and undo (engine/caption_edit.py; every changed caption is backed up first)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import gradio as gr

from engine.captions import edit as caption_edit
from ui import runner
from ui.fields import Form
from ui.run_state import RunView
from ui.tab_run import progress_html

CAPTIONER_MODELS = ("blip", "blip-base", "florence2", "florence2-base", "wd14")  # engine/caption.py KNOWN_MODELS
MODES = {"missing": "only images without a caption", "overwrite": "replace every caption (backed up)",
         "append": "add to the existing captions"}
# bulk edit -> (label, the parameters it takes)
EDITS = {"add_trigger": ("Put the trigger word first", ("trigger",)),
         "remove_trigger": ("Remove the trigger word", ("trigger",)),
         "prefix": ("Add text at the start", ("text_to_add",)),
         "suffix": ("Add text at the end", ("text_to_add",)),
         "replace": ("Find and replace", ("find", "replace", "regex")),
         "remove_tags": ("Remove tags (comma-separated)", ("tags",)),
         "dedupe_tags": ("Remove duplicate tags", ()),
         "strip_tags": ("Tidy spaces and commas", ()),
         "lowercase": ("Lowercase everything", ())}


def build(form: Form) -> dict:
    gr.Markdown("Captions tell the model what is in each picture besides your subject. Caption automatically "
                "with a local model, then tidy up in bulk. Every change keeps the old captions: **Undo** restores "
                "them exactly. The dataset folder and trigger word are the ones on the Dataset tab.")
    target = gr.Markdown(elem_id="caption-target")
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### Caption automatically")
            model = gr.Dropdown(choices=list(CAPTIONER_MODELS), value="florence2", allow_custom_value=True,
                                label="Captioning model", elem_id="caption-model",
                                info="A short name, a downloaded model folder, or a Hugging Face id. Models are "
                                     "used from your disk; Easel tells you what to download if one is missing.")
            mode = gr.Radio(choices=[(f"{k}: {v}", k) for k, v in MODES.items()], value="missing", label="Which "
                            "images", elem_id="caption-mode")
            with gr.Row():
                start = gr.Button("Start captioning", variant="primary", elem_id="caption-start")
                stop = gr.Button("Stop", variant="stop", elem_id="caption-stop")
            progress = gr.HTML(progress_html(None).replace("No run yet. Load a preset (or press Demo) and start "
                                                           "training.", "Not captioning."), elem_id="caption-progress")
            log = gr.Textbox(label="Captioning log", lines=8, max_lines=8, autoscroll=True, interactive=False,
                             elem_id="caption-log")
        with gr.Column():
            gr.Markdown("### Edit all captions")
            op = gr.Dropdown(choices=[(label, key) for key, (label, _) in EDITS.items()], value="add_trigger",
                             label="Edit", elem_id="caption-op")
            with gr.Row():
                text = gr.Textbox(label="Text / tags", elem_id="caption-text",
                                  info="prefix / suffix: the text; remove tags: a, b, c")
                find = gr.Textbox(label="Find", elem_id="caption-find")
                replace = gr.Textbox(label="Replace with", elem_id="caption-replace")
            regex = gr.Checkbox(label="Find is a regular expression", value=False)
            with gr.Row():
                preview = gr.Button("Preview", elem_id="caption-preview")
                apply = gr.Button("Apply", variant="primary", elem_id="caption-apply")
                undo = gr.Button("Undo last caption change", elem_id="caption-undo")
            result = gr.Markdown(elem_id="caption-result")
            diff = gr.Code(language=None, label="Preview of the changes", interactive=False, lines=12,
                           elem_id="caption-diff")
    return {"target": target, "model": model, "mode": mode, "start": start, "stop": stop, "progress": progress, "log": log,
            "op": op, "text": text, "find": find, "replace": replace, "regex": regex, "preview": preview,
            "apply": apply, "undo": undo, "result": result, "diff": diff, "view": gr.State(None),
            "timer": gr.Timer(1.0)}


def edit_params(op: str, trigger: str, text: str, find: str, replace: str, regex: bool) -> dict:
    given = {"trigger": (trigger or "").strip(), "text_to_add": text or "", "find": find or "",
             "replace": replace or "", "regex": bool(regex),
             "tags": [t.strip() for t in (text or "").split(",") if t.strip()]}
    params = {name: given[name] for name in EDITS[op][1]}
    if "trigger" in params and not params["trigger"]:
        raise ValueError("Set the trigger word on the Dataset tab first.")
    if op == "replace" and not params["find"]:
        raise ValueError("Type what to find.")
    return params


def start_captioning(root: Path, model: str, mode: str, trigger: str, events_root: Path) -> RunView:
    """`python -m engine caption ...` in a subprocess; its events land in a folder of their own."""
    if not root.is_dir():
        raise ValueError(f"The dataset folder {root} does not exist (set it on the Dataset tab).")
    events_dir = events_root / f"caption-{time.strftime('%Y%m%d-%H%M%S')}"
    args = ["caption", str(root), "--model", model, "--mode", mode, "--events-dir", str(events_dir)]
    if trigger:
        args += ["--trigger", trigger]
    proc = runner.spawn_engine(args, events_dir / runner.LOG_NAME)
    (events_dir / runner.PID_NAME).write_text(f'{{"pid": {proc.pid}}}', encoding="utf-8")
    return RunView(events_dir)


def wire(ctx, form: Form, parts: dict) -> None:
    path_w, trigger_w = form.widgets["dataset.path"], form.widgets["dataset.trigger"]
    p = parts

    def target_text(folder, trigger):
        folder = (folder or "").strip()
        if not folder:
            return "**Dataset:** none chosen yet — set the folder on the Dataset tab."
        return f"**Dataset:** `{folder}` · **trigger word:** `{(trigger or '').strip() or '(none)'}`"

    gr.on([path_w.change, trigger_w.change], target_text, inputs=[path_w, trigger_w], outputs=p["target"],
          show_progress="hidden")

    def on_edit(values, write: bool):
        root = Path((values[path_w] or "").strip())
        op = values[p["op"]]
        try:
            params = edit_params(op, values[trigger_w], values[p["text"]], values[p["find"]],
                                 values[p["replace"]], values[p["regex"]])
            if not root.is_dir():
                raise ValueError(f"The dataset folder '{root}' does not exist (set it on the Dataset tab).")
            changes = caption_edit.preview(root, op, **params)
            if write and changes:
                caption_edit.apply(root, op, **params)
        except re.error as exc:
            return f"**Find is not a valid regular expression:** {exc}", ""
        except (ValueError, OSError) as exc:
            return f"**{exc}**", ""
        diff_text = "".join(c.diff() for c in changes[:200])
        n = len(changes)
        if write:
            return (f"Changed {n} caption(s); the old ones are backed up (Undo restores them)." if n else
                    "Nothing to change."), diff_text
        return f"{n} caption(s) would change (nothing written yet):" if n else "No caption would change.", diff_text

    edit_inputs = {path_w, trigger_w, p["op"], p["text"], p["find"], p["replace"], p["regex"]}
    p["preview"].click(lambda v: on_edit(v, False), inputs=edit_inputs, outputs=[p["result"], p["diff"]],
                       api_name="preview_caption_edit")
    p["apply"].click(lambda v: on_edit(v, True), inputs=edit_inputs, outputs=[p["result"], p["diff"]],
                     api_name="apply_caption_edit")

    def on_undo(folder):
        root = Path((folder or "").strip())
        if not root.is_dir():
            return "Set the dataset folder on the Dataset tab first.", ""
        entry = caption_edit.undo(root)
        return (f"Undone: {entry.get('label') or entry.get('action')}." if entry else "No caption change to undo."), ""

    p["undo"].click(on_undo, inputs=path_w, outputs=[p["result"], p["diff"]], api_name="undo_caption_edit")

    def on_start(folder, trigger, model, mode, view):
        if view is not None and not view.finished and runner.is_running(view.run_dir):
            return view, "Captioning is already running."
        try:
            view = start_captioning(Path((folder or "").strip()), (model or "").strip(), mode,
                                    (trigger or "").strip(), ctx.runs_root / "_captioning")
        except (ValueError, OSError) as exc:
            return None, f"{exc}"
        return view, f"Started: {model} on {folder}"

    p["start"].click(on_start, inputs=[path_w, trigger_w, p["model"], p["mode"], p["view"]],
                     outputs=[p["view"], p["log"]])

    def on_stop(view):
        if view is None or view.finished:
            return view
        runner.request(view.run_dir, "stop")
        view.stop_requested_at = time.time()
        return view

    p["stop"].click(on_stop, inputs=p["view"], outputs=p["view"])

    def on_tick(view):
        if view is None:
            return gr.skip(), gr.skip(), gr.skip()
        from ui.tab_run import check_process, error_markdown
        if not view.finished:
            view.poll()
            check_process(view)
        log = "\n".join(view.log)
        if view.finished == "error":
            log += "\n\n" + error_markdown(view).replace("### ", "").replace("**", "")
        return view, progress_html(view), log

    p["timer"].tick(on_tick, inputs=p["view"], outputs=[p["view"], p["progress"], p["log"]],
                    show_progress="hidden")
