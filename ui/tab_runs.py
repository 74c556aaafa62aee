"""Runs tab: every past run (status, steps, last and best loss, files, when) in a table; the chosen one can be shown
on the Run tab (its plots, samples, grid and files), resumed, or opened in the file manager.

The table is folded from each run folder's events.jsonl with the Run tab's own RunView, so both tabs say the same."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.runs import is_run_dir, list_runs
from ui import runner, tab_run
from ui.demo import SHOW_RUN_TAB
from ui.run_state import RunView

COLUMNS = ["run", "status", "steps", "last loss", "best val loss", "files", "started", "folder"]


def summary(run_dir: Path) -> dict:
    """One row of the table for a run folder (RunView folds its events; a live engine makes it 'training')."""
    view = RunView(run_dir)
    view.poll()
    step, total = view.progress()
    status = view.finished or ("training" if runner.is_running(run_dir) else "ended without a last event")
    try:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime((run_dir / "preset.yaml").stat().st_mtime))
    except OSError:
        when = "?"
    vals = [v for _, v in view.val_points]
    return {"run": run_dir.name, "status": status, "steps": f"{step}/{total}" if total else str(step),
            "last loss": f"{view.loss_points[-1][1]:.4f}" if view.loss_points else "",
            "best val loss": f"{min(vals):.4f}" if vals else "", "files": len(view.output_files()),
            "started": when, "folder": str(run_dir)}


def runs_table(roots: list[Path]) -> pd.DataFrame:
    """Every run under roots, newest first."""
    dirs = sorted({d.resolve() for root in roots for d in list_runs(root)}, key=lambda d: d.stat().st_mtime,
                  reverse=True)
    return pd.DataFrame([summary(d) for d in dirs], columns=COLUMNS)


def open_folder(folder: Path) -> str:
    """Open the folder in the file manager (Explorer, Finder, the desktop's); the path in words if there is none."""
    folder = Path(folder)
    try:
        if sys.platform == "win32":
            os.startfile(str(folder))  # noqa: S606 - the user asked for this folder
        else:
            subprocess.Popen(["open" if sys.platform == "darwin" else "xdg-open", str(folder)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    except OSError:
        return f"No file manager could be started here; the folder is `{folder}`."
    return f"Opened `{folder}` in the file manager."


def build() -> dict:
    gr.Markdown("Every run in the runs folder: choose one in the table to see it on the Run tab (plots, samples, the "
                "sample grid, files), to resume it, or to open its folder.")
    with gr.Row():
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=120, elem_id="runs-refresh")
        show = gr.Button("Show on the Run tab", size="sm", scale=0, min_width=200, elem_id="runs-show")
        resume = gr.Button("Resume", size="sm", scale=0, min_width=120, elem_id="runs-resume")
        folder = gr.Button("Open folder", size="sm", scale=0, min_width=140, elem_id="runs-open-folder")
    chosen = gr.Markdown("No run chosen yet: click a row.", elem_id="runs-chosen")
    # widths: without them the long folder column squeezed "best val loss" to one letter a line
    table = gr.Dataframe(pd.DataFrame(columns=COLUMNS), interactive=False, wrap=True, elem_id="runs-table",
                         show_label=False, column_widths=["20%", "9%", "8%", "8%", "10%", "6%", "12%", "27%"])
    return {"refresh": refresh, "show": show, "resume": resume, "folder": folder, "chosen": chosen, "table": table,
            "selected": gr.State(None)}


def wire(ctx, parts: dict, run: dict, remember, page) -> None:
    """run: the Run tab's parts (its view is what Show and Resume set); remember: the preset path BrowserState;
    page: the Runs tab (opening it refreshes the table)."""
    def on_refresh(preset_path):
        return runs_table(tab_run.run_roots(ctx, preset_path))

    parts["refresh"].click(on_refresh, inputs=remember, outputs=parts["table"], api_name="list_runs")
    page.select(on_refresh, inputs=remember, outputs=parts["table"], show_progress="hidden")

    def on_select(frame, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if frame is None or row is None or row >= len(frame):
            return None, "No run chosen yet: click a row."
        record = frame.iloc[row]
        return record["folder"], f"Chosen: **{record['run']}** ({record['status']}, {record['steps']} steps)"

    parts["table"].select(on_select, inputs=parts["table"], outputs=[parts["selected"], parts["chosen"]])
    outs = [run["view"], *tab_run.rendered(run), parts["chosen"]]

    def shown(folder) -> RunView:
        if not folder or not is_run_dir(folder):
            raise ValueError("Choose a run in the table first.")
        ctx.allow(folder)
        view = RunView(Path(folder))
        view.poll()
        return view

    def on_show(folder):
        try:
            view = shown(folder)
        except ValueError as exc:
            return {parts["chosen"]: f"**{exc}**"}
        return {run["view"]: view, **tab_run.render(view, run, force=True),
                parts["chosen"]: f"Showing **{view.run_dir.name}** on the Run tab."}

    parts["show"].click(on_show, inputs=parts["selected"], outputs=outs, api_name="show_run").then(
        None, js=SHOW_RUN_TAB)

    def on_resume(folder):
        try:
            view = tab_run.resume_view(shown(folder), ctx)
        except (ValueError, runner.RunBusy, OSError) as exc:
            return {parts["chosen"]: f"**Could not resume:** {exc}"}
        return {run["view"]: view, **tab_run.render(view, run, force=True),
                parts["chosen"]: f"Resuming **{view.run_dir.name}**: follow it on the Run tab."}

    parts["resume"].click(on_resume, inputs=parts["selected"], outputs=outs, api_name="resume_listed_run").then(
        None, js=SHOW_RUN_TAB)

    def on_folder(folder):
        if not folder:
            return "**Choose a run in the table first.**"
        return open_folder(Path(folder))

    parts["folder"].click(on_folder, inputs=parts["selected"], outputs=parts["chosen"])
