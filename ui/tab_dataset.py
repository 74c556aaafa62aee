"""Dataset tab: the folder, the doctor's findings with one-click fixes (undoable), a gallery with captions, and
caption editing one image at a time (the old caption is backed up; Undo brings it back)."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import gradio as gr

from engine.captions import edit as caption_edit
from engine.config.schema import DatasetConfig
from engine.dataset_doctor import fixes as dataset_fix
from engine.dataset_doctor.check_dataset import check_dataset
from ui.fields import Form

THUMB_PX = 256
# words, not emoji: a PC without an emoji font draws those as empty boxes (the row's colour comes from style.css)
SEVERITY_WORDS = {"error": "Error", "warning": "Warning", "info": "Note"}
CHECK_KEYS = ("dataset.path", "dataset.trigger", "dataset.resolution_px", "dataset.caption_ext",
              "training.batch_size", "dataset.bucketing", "dataset.min_bucket_px", "dataset.max_bucket_px",
              "dataset.bucket_step_px")
_DATASET = DatasetConfig()


def build(form: Form) -> dict:
    gr.Markdown("Point Easel at your image folder: images with a .txt caption each, side by side or in "
                "`images/` + `captions/`. **Check** finds what would spoil the run; every fix keeps the originals "
                "and can be undone.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            form.grid(["dataset.path", "dataset.trigger"])
        with gr.Column(scale=1, min_width=160):
            check = gr.Button("Check dataset", variant="primary", elem_id="dataset-check")
            undo = gr.Button("Undo last change", elem_id="dataset-undo")
    summary = gr.Markdown(elem_id="dataset-summary")
    report = gr.State(None)

    @gr.render(inputs=report)
    def findings(rep):
        if not rep or not rep.get("findings"):
            return
        gr.Markdown("### Findings")
        for i, f in enumerate(rep["findings"]):
            with gr.Row(equal_height=True, elem_classes=["finding", f"finding-{f['severity']}"]):
                gr.Markdown(f"**{SEVERITY_WORDS.get(f['severity'], f['severity'])}** — {f['message']}  \n"
                            f"*{f['hint']}*")
                if f.get("fix"):
                    button = gr.Button(fix_label(f["fix"], len(f["fix_files"])), scale=0, min_width=220, size="sm",
                                       elem_id=f"fix-{i}")
                    button.click(lambda values, f=f: apply_fix(form, values, f), inputs=form_inputs,
                                 outputs=[summary, report, gallery, fix_note])

    fix_note = gr.Markdown(elem_id="dataset-fix-note")
    gallery = gr.Gallery(label="Images and captions (click one to edit its caption)", columns=8, height="auto",
                         elem_id="dataset-gallery", object_fit="cover", allow_preview=False)
    with gr.Row(equal_height=False):
        chosen = gr.Textbox(label="Image", interactive=False, scale=1, elem_id="dataset-chosen")
        caption = gr.Textbox(label="Caption", lines=3, scale=3, elem_id="dataset-caption")
        save_caption = gr.Button("Save caption", scale=0, min_width=140, elem_id="dataset-save-caption")
    gr.Markdown("### Dataset settings")
    form.section("dataset", advanced_label="Advanced dataset options")
    form_inputs = set()  # filled in by wire(): the widgets the check reads (bound on other tabs too)
    return {"check": check, "undo": undo, "summary": summary, "report": report, "gallery": gallery,
            "chosen": chosen, "caption": caption, "save_caption": save_caption, "fix_note": fix_note,
            "form_inputs": form_inputs}


FIX_BUTTONS = {"set_aside": "Set aside {n} file(s)", "add_trigger": "Add the trigger to {n} caption(s)",
               "create_missing_captions": "Create {n} caption(s) from the trigger",
               "apply_exif_rotation": "Turn {n} image(s) upright", "flatten_alpha": "Flatten {n} transparent "
               "image(s)", "convert_to_rgb": "Convert {n} image(s) to RGB"}


def fix_label(fix: str, n: int | None = None) -> str:
    if n is not None and fix in FIX_BUTTONS:
        return FIX_BUTTONS[fix].format(n=n)
    return dataset_fix.FIXES.get(fix, fix).split(" (")[0]


def thumbnail(path: Path) -> str:
    """A small JPEG copy in the temp folder: the gallery stays fast with 24-megapixel photos, and the dataset
    folder itself need not be served to the browser."""
    from PIL import Image, ImageOps
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}".encode("utf-8")).hexdigest()[:20]
    out = Path(tempfile.gettempdir()) / "easel-thumbs" / f"{key}.jpg"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.thumbnail((THUMB_PX, THUMB_PX))
            im.convert("RGB").save(out.with_suffix(".tmp.jpg"), "JPEG", quality=85)
        out.with_suffix(".tmp.jpg").replace(out)
    return str(out)


def gallery_items(rep: dict) -> list[tuple[str, str]]:
    """(thumbnail, "name: caption") per readable image; rep["shown"] maps gallery positions to rep["images"]."""
    items, rep["shown"] = [], []
    for index, row in enumerate(rep["images"]):
        path = Path(rep["root"]) / row["path"]
        try:
            thumb = thumbnail(path)
        except Exception:  # a broken image is in the findings already; the gallery just leaves it out
            continue
        text = row["caption"] if row["caption"] is not None else "(no caption)"
        items.append((thumb, f"{Path(row['path']).name}: {text}"))
        rep["shown"].append(index)
    return items


def run_check(values: dict, form: Form) -> tuple[str, dict | None, list]:
    v = {k: values.get(form.widgets[k]) for k in CHECK_KEYS}
    bucket = {k: getattr(_DATASET, k) if v[f"dataset.{k}"] is None else v[f"dataset.{k}"]
              for k in ("bucketing", "min_bucket_px", "max_bucket_px", "bucket_step_px")}
    folder = (v["dataset.path"] or "").strip()
    if not folder:
        return "Type the path of your dataset folder first.", None, []
    try:
        report = check_dataset(Path(folder), trigger=(v["dataset.trigger"] or "").strip() or None,
                               resolution_px=int(v["dataset.resolution_px"] or 512),
                               batch_size=int(v["training.batch_size"] or 1),
                               caption_ext=v["dataset.caption_ext"] or ".txt", bucketing=bool(bucket["bucketing"]),
                               min_bucket_px=int(bucket["min_bucket_px"]), max_bucket_px=int(bucket["max_bucket_px"]),
                               bucket_step_px=int(bucket["bucket_step_px"]))
    except FileNotFoundError as exc:
        return f"**{exc}** Check the path (copy it from the address bar of your file manager).", None, []
    except ValueError as exc:  # bucket settings the trainer would refuse too
        return f"**{exc}** Change the dataset settings below.", None, []
    rep = report.to_dict()
    return summary_text(rep), rep, gallery_items(rep)


def summary_text(rep: dict) -> str:
    counts = rep["counts"]
    buckets = ", ".join(f"{size} × {n}" for size, n in sorted(rep["buckets"].items(), key=lambda kv: -kv[1])[:6])
    verdict = ("Ready to train." if counts["error"] == 0 else "Fix the errors before training.")
    return (f"**{len(rep['images'])} images** in `{rep['root']}` · {counts['error']} errors · {counts['warning']} "
            f"warnings · {counts['info']} notes · checked in {rep['seconds']:.1f} s. **{verdict}**"
            + (f"  \nBuckets (px): {buckets}" if buckets else ""))


def apply_fix(form: Form, values: dict, finding: dict):
    root = Path(values[form.widgets["dataset.path"]].strip())
    trigger = (values[form.widgets["dataset.trigger"]] or "").strip() or None
    try:
        entry = dataset_fix.apply(root, finding["fix"], finding["fix_files"], trigger=trigger)
    except (ValueError, OSError) as exc:
        summary, rep, items = run_check(values, form)
        return summary, rep, items, f"**The fix did not apply:** {exc}"
    summary, rep, items = run_check(values, form)
    done = (f"Done: {fix_label(finding['fix'])} ({len(finding['fix_files'])} file(s)). Undo last change puts "
            "everything back." if entry else "Nothing needed changing.")
    return summary, rep, items, done


def wire(ctx, form: Form, parts: dict) -> None:
    parts["form_inputs"].update(form.widgets[k] for k in CHECK_KEYS)
    inputs = parts["form_inputs"]
    outs = [parts["summary"], parts["report"], parts["gallery"]]

    def on_check(values):
        summary, rep, items = run_check(values, form)
        if rep:
            ctx.allow(rep["root"])
        return summary, rep, items, ""

    parts["check"].click(on_check, inputs=inputs, outputs=[*outs, parts["fix_note"]], api_name="check_dataset")

    def on_undo(values):
        folder = (values[form.widgets["dataset.path"]] or "").strip()
        if not folder:
            return gr.skip(), gr.skip(), gr.skip(), "No dataset folder chosen."
        entry = dataset_fix.undo(Path(folder))
        summary, rep, items = run_check(values, form)
        note = f"Undone: {entry.get('label') or entry.get('action')}." if entry else "Nothing to undo."
        return summary, rep, items, note

    parts["undo"].click(on_undo, inputs=inputs, outputs=[*outs, parts["fix_note"]], api_name="undo_dataset")

    def on_select(rep, evt: gr.SelectData):
        if not rep or evt.index is None:
            return "", ""
        row = rep["images"][rep["shown"][evt.index]]
        return row["path"], row["caption"] or ""

    parts["gallery"].select(on_select, inputs=parts["report"], outputs=[parts["chosen"], parts["caption"]])

    def on_save_caption(values):
        rel, text = values[parts["chosen"]], values[parts["caption"]]
        rep = values[parts["report"]]
        if not rep or not rel:
            return gr.skip(), gr.skip(), gr.skip(), "Click an image in the gallery first."
        root = Path(rep["root"])
        from engine.data import layout as dataset_layout
        target = dataset_layout.caption_path_for(root, root / rel, values[form.widgets["dataset.caption_ext"]])
        entry = caption_edit.write_captions(root, {target: text.strip()}, f"edit caption of {Path(rel).name}")
        summary, rep, items = run_check(values, form)
        note = (f"Saved `{target.name}` (the old caption is backed up; Undo last change restores it)."
                if entry else "The caption is unchanged.")
        return summary, rep, items, note

    parts["save_caption"].click(on_save_caption, inputs={*inputs, parts["chosen"], parts["caption"],
                                                         parts["report"]}, outputs=[*outs, parts["fix_note"]],
                                api_name="save_caption")
