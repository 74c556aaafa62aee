"""The Easel window: the preset bar on top, one tab per concern, all widgets bound once through ui/fields.py."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr

from engine.config.load import ConfigError, load_preset
from engine.config.save import dump_preset
from engine.config.schema import Preset
from engine.config.validate import advice
from ui import (demo, fit_gauge, runner, tab_caption, tab_dataset, tab_rl, tab_run, tab_runs, tab_samples,
                tab_schedule, tab_system, tab_training)
from ui.fields import Form, format_problems, problems_of
from ui.presets import PROJECT_ROOT, PresetLibrary

CSS = Path(__file__).with_name("style.css").read_text(encoding="utf-8") + fit_gauge.GAUGE_CSS


@dataclass
class AppContext:
    """Where things live; tests point every folder at a temporary one."""

    project_root: Path = PROJECT_ROOT
    runs_root: Path = PROJECT_ROOT / "runs"
    demo_dir: Path = PROJECT_ROOT / "demo"
    library: PresetLibrary = field(default_factory=PresetLibrary)
    use_preset_output_dir: bool = True     # False (gui.py --runs-dir, tests): every run folder goes under runs_root
    allowed_paths: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.runs_root = Path(self.runs_root)
        self.allow(self.runs_root)

    def runs_root_for(self, preset: Preset) -> Path:
        from engine.runs import runs_root
        return runs_root(preset.output.dir) if self.use_preset_output_dir else self.runs_root

    def allow(self, folder) -> None:
        """Let the browser load files under folder (samples, LoRAs, dataset thumbnails). Gradio reads this list on
        every request, so folders chosen while the app runs are served too; nothing else on the disk is."""
        folder = str(Path(folder).resolve())
        if folder not in self.allowed_paths:
            self.allowed_paths.append(folder)


def build_app(ctx: AppContext | None = None) -> gr.Blocks:
    ctx = ctx or AppContext()
    form = Form()
    with gr.Blocks(title="Easel — LoRA training") as app:
        bar = _preset_bar(ctx)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Dataset", id="dataset"):
                ds = tab_dataset.build(form)
            with gr.Tab("Captions", id="captions"):
                cap = tab_caption.build(form)
            with gr.Tab("Training", id="training"):
                tr = tab_training.build(form)
            with gr.Tab("Optimizer & LR", id="schedule"):
                sch = tab_schedule.build(form)
            with gr.Tab("Samples", id="samples"):
                tab_samples.build(form)
            with gr.Tab("RL", id="rl"):
                rl_tab = tab_rl.build(form)
            with gr.Tab("Run", id="run"):
                run = tab_run.build()
            with gr.Tab("Runs", id="runs") as runs_page:
                runs_tab = tab_runs.build()
            with gr.Tab("System", id="system"):
                system = tab_system.build()
            with gr.Tab("YAML", id="yaml"):
                gr.Markdown("The preset exactly as it will be saved (and as the engine reads it).")
                yaml_view = gr.Code(language="yaml", interactive=False, elem_id="yaml-view", show_label=False,
                                    lines=30, max_lines=45)
        missing = form.unbound()
        if missing:
            raise RuntimeError(f"preset keys without a widget: {', '.join(missing)}")
        problem_outputs = [*form.components(), *dict.fromkeys(form.accordion_of.values())]
        fit_gauge.wire(form, tr["fit"])  # every widget exists now
        wiring = _Wiring(ctx, form, bar, yaml_view, sch, problem_outputs, tr["fit"], tr["family_fields"])
        wiring.live_checks()  # first: defines the LR redraw that loads chain to
        wiring.presets()
        tab_schedule.wire(form, sch)
        wiring.after_load(tr["fit"]["applied"]).then(
            wiring.on_edit, inputs={*form.inputs(), bar["baseline"], bar["path"]}, outputs=wiring.edit_outputs)
        for name, button in tr["profile_buttons"].items():
            wiring.after_load(button.click(lambda name=name: tab_training.profile_updates(form, name),
                                           outputs=form.components())).then(
                wiring.on_edit, inputs={*form.inputs(), bar["baseline"], bar["path"]}, outputs=wiring.edit_outputs)
        tab_run.wire(ctx, form, run, problem_outputs, ds)
        tab_rl.wire(form, rl_tab, run["view"])
        tab_runs.wire(ctx, runs_tab, run, bar["remember"], runs_page)
        tab_system.wire(ctx, system)
        # its own load, not the preset chain: the doctor takes seconds and the form must not wait for it
        tab_system.wire_first_start(ctx, app, system, bar["system_banner"])
        tab_dataset.wire(ctx, form, ds)
        tab_caption.wire(ctx, form, cap)
        demo.wire(ctx, form, bar, run, wiring)
        app.load(lambda path: {run["view"]: tab_run.attach(ctx, path)}, inputs=bar["remember"], outputs=[run["view"]]) \
            .then(lambda v: tab_run.render(v, run, force=True), inputs=run["view"], outputs=tab_run.rendered(run))
        # one load chain (not parallel loads that could overwrite each other): reopen, then draw the LR curve
        wiring.after_load(app.load(wiring.restore, inputs=[bar["remember"], bar["draft"]],
                                   outputs=wiring.load_outputs))
    app.easel_ctx, app.easel_form = ctx, form  # for tests and gui.py
    return app


def _preset_bar(ctx: AppContext) -> dict:
    with gr.Row(elem_id="preset-bar", equal_height=True):
        gr.HTML('<div class="easel-title">Easel</div>', elem_id="easel-title")
        choices = ctx.library.choices()
        dropdown = gr.Dropdown(choices=choices, value=None, label="Preset", scale=3, elem_id="preset-choice",
                               allow_custom_value=False)
        load = gr.Button("Load", scale=0, min_width=70, elem_id="preset-load")
        save = gr.Button("Save", scale=0, min_width=70, elem_id="preset-save")
        name = gr.Textbox(label="Save as (name)", scale=2, elem_id="preset-name", placeholder="my-lora")
        save_as = gr.Button("Save as", scale=0, min_width=100, elem_id="preset-save-as")
        reset = gr.Button("Reset", scale=0, min_width=70, elem_id="preset-reset")
        demo_button = gr.Button("Demo", variant="secondary", scale=0, min_width=70, elem_id="demo")
        lora_demo_button = gr.Button("LoRA demo", variant="secondary", scale=0, min_width=100, elem_id="lora-demo")
    status = gr.Markdown(elem_id="preset-status")
    problems = gr.Markdown(elem_id="preset-problems")
    system_banner = gr.Markdown(elem_id="system-banner")  # the system doctor's verdict when something needs attention
    return {"dropdown": dropdown, "load": load, "save": save, "name": name, "save_as": save_as, "reset": reset,
            "demo": demo_button, "lora_demo": lora_demo_button, "status": status, "problems": problems,
            "system_banner": system_banner,
            "baseline": gr.State(dump_preset(Preset())), "path": gr.State(None),
            # the last loaded or saved preset file, kept by the browser: a reload or a GUI restart shows it again
            "remember": gr.BrowserState(None, storage_key="easel-last-preset", secret="easel-local"),
            # the form's unsaved edits ({"path", "t", "values": {key: widget value}}): a reload keeps them
            "draft": gr.BrowserState(None, storage_key="easel-draft", secret="easel-local")}


class _Wiring:
    """The preset bar's handlers and the live checks (unsaved marker, problems next to fields, YAML, LR plot)."""

    def __init__(self, ctx, form: Form, bar: dict, yaml_view, sch: dict, problem_outputs: list, fit: dict,
                 family_fields: dict):
        self.ctx, self.form, self.bar, self.yaml_view, self.sch, self.fit = ctx, form, bar, yaml_view, sch, fit
        self.family_fields = family_fields
        self.problem_outputs = problem_outputs
        self.edit_outputs = [bar["status"], bar["problems"], yaml_view, bar["draft"], *problem_outputs]
        self.load_outputs = [*form.components(), bar["baseline"], bar["path"], bar["remember"], bar["draft"],
                             bar["status"], bar["problems"], yaml_view, bar["dropdown"], *sch["helps"].values(),
                             *problem_outputs]

    # --- state of the form ---
    def status_text(self, path, dirty: bool, problems=()) -> str:
        name = Path(path).name if path else "New preset"
        if dirty:
            mark = '<span class="dirty">● unsaved changes</span>'
        else:
            mark = ('<span class="clean">saved</span>' if path else
                    '<span class="new">the defaults, not saved yet (Save as keeps it)</span>')
        extra = f" · {len(problems)} problem(s) to fix" if problems else ""
        return f"**{name}** — {mark}{extra}"

    def on_edit(self, values):
        """After any edit: validate like the engine, mark the preset dirty, refresh the YAML view, and keep the
        form in the browser (a reload or a restarted GUI shows these edits, saved or not)."""
        baseline, path = values.pop(self.bar["baseline"]), values.pop(self.bar["path"], None)
        draft = {self.bar["draft"]: {"path": path, "t": time.time(),
                                     "values": {k: values[w] for k, w in self.form.widgets.items() if w in values}}}
        try:
            preset = self.form.to_preset(values)
        except ConfigError as exc:
            problems = problems_of(exc)
            return {**draft, self.bar["status"]: self.status_text(path, True, problems),
                    self.bar["problems"]: format_problems(problems, self.form),
                    **self.form.problem_updates(problems)}
        text = dump_preset(preset)
        missing = tab_run.preflight(preset, require=False)  # typed paths that are not there, marked as they change
        notes = advice(preset)
        listed = format_problems(missing, self.form) + ("\n\n**Worth a look:**\n" + format_problems(notes, self.form)
                                                        if notes else "")
        dirty = text != baseline
        return {self.bar["draft"]: draft[self.bar["draft"]] if dirty else None,
                self.bar["status"]: self.status_text(path, dirty, missing),
                self.bar["problems"]: listed, self.yaml_view: text,
                **self.form.problem_updates(missing, advice=notes)}

    def loaded(self, preset: Preset, path, message: str = "") -> dict:
        """Updates that put `preset` into the form and make it the new 'saved' baseline."""
        text = dump_preset(preset)
        helps = tab_schedule.help_updates(preset)
        notes = advice(preset)
        return {**self.form.problem_updates([], values=self.form.updates_from_preset(preset), advice=notes),
                self.bar["baseline"]: text, self.bar["path"]: path, self.bar["remember"]: path,
                self.bar["draft"]: None,
                self.bar["status"]: self.status_text(path, False) + (f" · {message}" if message else ""),
                self.bar["problems"]: "**Worth a look:**\n" + format_problems(notes, self.form) if notes else "",
                self.yaml_view: text,
                self.bar["dropdown"]: gr.update(choices=self._choices_with(path), value=path),
                **{self.sch["helps"][k]: v for k, v in helps.items()}}

    def restore(self, path, draft):
        """At page load, the newest of: this browser's unsaved edits, the preset file it saved or loaded last, and
        the preset of the run training now (a new browser, or a run started after the last edit); else defaults."""
        path = path if path and Path(path).is_file() else None
        run_dir = next(filter(None, map(runner.active_run, tab_run.run_roots(self.ctx, path))), None)
        times = {"draft": (draft or {}).get("t", -1.0) if (draft or {}).get("values") else -1.0,
                 "file": Path(path).stat().st_mtime if path else -1.0,
                 "run": (run_dir / "preset.yaml").stat().st_mtime if run_dir else -1.0}
        newest = max(times, key=times.get)
        if times[newest] < 0:
            return {self.bar["dropdown"]: gr.update(choices=self.ctx.library.choices()),  # presets saved since
                    self.bar["status"]: self.status_text(None, False), self.yaml_view: dump_preset(Preset())}
        if newest == "draft":
            own = draft.get("path")  # the file the edits were made to (it may have been deleted since)
            return self.restored_draft(draft, own if own and Path(own).is_file() else None)
        try:
            saved = load_preset(path) if path else None
        except ConfigError:   # the remembered file was edited by hand into a preset that no longer loads
            saved, path = None, None
        if newest == "file" and saved is not None:
            return self.loaded(saved, path, "reopened")
        try:
            running = load_preset(run_dir / "preset.yaml") if run_dir else None
        except ConfigError:
            running = None
        if running is None:
            return self.loaded(Preset(), None, "defaults")
        shown = self.loaded(running, path, f"running: the form shows the preset `{run_dir.name}` trains with")
        if saved is not None:  # the file is the baseline: where the run's preset differs from it, the form says so
            shown[self.bar["baseline"]] = dump_preset(saved)
            if shown[self.bar["baseline"]] != dump_preset(running):
                shown[self.bar["status"]] = self.status_text(path, True) + f" · running `{run_dir.name}`"
        return shown

    def restored_draft(self, draft: dict, path) -> dict:
        """The form as this browser left it, unsaved edits and all (invalid ones too, marked as problems)."""
        form = self.form
        values = {form.widgets[k]: v for k, v in draft["values"].items() if k in form.widgets}
        try:
            baseline = dump_preset(load_preset(path)) if path else dump_preset(Preset())
        except ConfigError:
            baseline, path = dump_preset(Preset()), None
        try:
            preset, problems = form.to_preset(values), []
        except ConfigError as exc:
            preset, problems = None, problems_of(exc)
        updates = {**form.problem_updates(problems, values=values), self.bar["baseline"]: baseline,
                   self.bar["path"]: path, self.bar["remember"]: path,
                   self.bar["status"]: self.status_text(path, True, problems) + " · your edits, kept by this browser",
                   self.bar["problems"]: format_problems(problems, form),
                   self.bar["dropdown"]: gr.update(choices=self._choices_with(path), value=path)}
        if preset is not None:
            updates[self.yaml_view] = dump_preset(preset)
            updates.update({self.sch["helps"][k]: v for k, v in tab_schedule.help_updates(preset).items()})
        return updates

    def _choices_with(self, path) -> list:
        """The library's presets, plus `path` when it lives elsewhere (the demo's preset)."""
        choices = self.ctx.library.choices()
        if path and str(path) not in [value for _, value in choices]:
            choices.append((f"{Path(path).stem} (other folder)", str(path)))
        return choices

    # --- the preset bar ---
    def presets(self) -> None:
        bar, form = self.bar, self.form

        def on_load(path):
            if not path:
                return {bar["problems"]: "Choose a preset in the list first."}
            try:
                return self.loaded(load_preset(path), path, "loaded")
            except ConfigError as exc:
                return {bar["problems"]: f"**{Path(path).name} has problems; the form is unchanged:**\n"
                                         + format_problems(exc.problems, form)}

        self.after_load(bar["load"].click(on_load, inputs=bar["dropdown"], outputs=self.load_outputs,
                                          api_name="load_preset"))

        def on_save(values, as_name=None):
            path = values.pop(bar["path"])
            name = values.pop(bar["name"], None)
            try:
                preset = form.to_preset(values)
            except ConfigError as exc:
                problems = problems_of(exc)
                return {bar["problems"]: "**Not saved — fix these first:**\n" + format_problems(problems, form),
                        **form.problem_updates(problems)}
            try:
                saved = self.ctx.library.save_as(preset, name) if as_name else self.ctx.library.save(preset, path)
            except (ValueError, OSError) as exc:
                return {bar["problems"]: f"**Not saved:** {exc}"}
            return self.loaded(preset, str(saved), f"saved to {saved}")

        self.after_load(bar["save"].click(on_save, inputs={*form.inputs(), bar["path"]},
                                          outputs=self.load_outputs, api_name="save_preset"))
        bar["save_as"].click(lambda values: on_save(values, as_name=True),
                             inputs={*form.inputs(), bar["path"], bar["name"]}, outputs=self.load_outputs,
                             api_name="save_preset_as")
        bar["name"].submit(lambda values: on_save(values, as_name=True),
                           inputs={*form.inputs(), bar["path"], bar["name"]}, outputs=self.load_outputs)

        def on_reset(path):
            """Back to the loaded file (or to the defaults for a new preset)."""
            if path:
                try:
                    return self.loaded(load_preset(path), path, "changes discarded")
                except ConfigError:
                    pass
            return self.loaded(Preset(), None, "defaults")

        self.after_load(bar["reset"].click(on_reset, inputs=bar["path"], outputs=self.load_outputs,
                                           api_name="reset_preset"))

    def after_load(self, event):
        """Once a handler has filled the form: redraw the LR plot, show the fields of the loaded family and its
        VRAM tiers, and redraw the will-it-fit gauge."""
        event = event.then(self.sch["redraw"], inputs=self.form.inputs(),
                           outputs=[self.sch["plot"], self.sch["plot_note"]], show_progress="hidden")
        fields, fit = self.family_fields, self.fit
        event = event.then(fields["follow"], inputs=fields["inputs"], outputs=fields["outputs"], show_progress="hidden")
        event = event.then(fit["follow_family"], inputs=fit["family_inputs"], outputs=fit["family_outputs"],
                           show_progress="hidden")
        return event.then(fit["redraw"], inputs=fit["inputs"], outputs=fit["gauge"], show_progress="hidden")

    def live_checks(self) -> None:
        form = self.form
        gr.on(triggers=[w.input for w in form.components()], fn=self.on_edit,
              inputs={*form.inputs(), self.bar["baseline"], self.bar["path"]}, outputs=self.edit_outputs,
              show_progress="hidden", trigger_mode="always_last", api_name="form_edited")
        lr_keys = [k for k in form.specs if k.split(".")[0] in ("optimizers", "schedules", "training")]
        tab_schedule.wire_plot(form, self.sch, [form.widgets[k] for k in lr_keys])
