"""Automatic captions for a dataset, with the same events and stop file as training.

    python -m engine caption DATASET --model blip [--mode missing|overwrite|append] [--trigger ohwx]
                             [--batch-size 4] [--device auto|cpu|cuda] [--events-dir DIR]

--model is a folder (a downloaded model), a Hub id, or a short name from KNOWN_MODELS. Which captioner runs is read
from the model's config.json (or, for a WD14 tagger, its model.onnx + selected_tags.csv), or given with --captioner.
Hub ids are looked up in the local Hugging Face cache first; offline with nothing local, the run fails at once with
one message naming what to download. Captions already on disk are never overwritten without a backup: every run
is one journal entry (engine.data.journal), undone by `python -m engine captions DATASET undo`.
Events (--events-dir DIR -> DIR/events.jsonl): status {phase, text, n, total}, warning, error {message, hint,
traceback}, then done or stopped. The run stops before the next batch when the file DIR/control/stop appears.
torch and transformers are imported only inside the captioner loaders (engine/captioners/).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from engine.captions.edit import trigger_pattern, write_caption
from engine.data import layout
from engine.events import EventWriter
from engine.failures import CaptionerUnavailable

MODES = ("missing", "overwrite", "append")
# short names -> Hub ids (what a user downloads once); the value of --model may also be any folder or Hub id
KNOWN_MODELS = {
    "blip": "Salesforce/blip-image-captioning-large",
    "blip-base": "Salesforce/blip-image-captioning-base",
    "florence2": "florence-community/Florence-2-large",
    "florence2-base": "florence-community/Florence-2-base",
    "wd14": "SmilingWolf/wd-vit-tagger-v3",
}


@dataclass
class CaptionSettings:
    mode: str = "missing"            # missing: only images without a (non-empty) caption; overwrite; append
    trigger: str | None = None       # put first in every caption (unless already there)
    batch_size: int = 4
    device: str = "auto"             # auto: cuda if available, else cpu
    max_new_tokens: int = 40         # the longest caption, in tokens (BLIP, Florence-2)
    task: str = "<DETAILED_CAPTION>"  # Florence-2 task prompt
    threshold: float = 0.35          # WD14: minimum tag confidence


def resolve_model(model: str) -> Path:
    """A local folder for `model` (folder, short name or Hub id): the folder itself, the Hugging Face cache, or a
    download when online. Raises CaptionerUnavailable naming what to download."""
    if Path(model).expanduser().is_dir():
        return Path(model).expanduser()
    repo_id = KNOWN_MODELS.get(model, model)
    if "/" not in repo_id or Path(model).suffix or "\\" in model:
        raise CaptionerUnavailable(f"The captioning model '{model}' is neither a folder on this computer nor a "
                                   "known model name.", f"Use a folder, a Hugging Face id, or one of: "
                                   f"{', '.join(KNOWN_MODELS)}.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass  # not in the cache: try the network below
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:
        raise CaptionerUnavailable(
            f"The captioning model '{repo_id}' is not on this computer and could not be downloaded "
            f"({type(exc).__name__}).",
            f"Connect to the internet and run: hf download {repo_id}   (or download it in a browser from "
            f"https://huggingface.co/{repo_id} into a folder and pass that folder as the model).") from None


def detect_captioner(folder: Path) -> str:
    """'blip', 'florence2' or 'wd14', from what the model folder contains."""
    from engine.captions.captioners import detect

    return detect(folder)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _targets(root: Path, mode: str) -> list[layout.Item]:
    items = layout.find_items(root)
    if mode == "missing":
        return [i for i in items if i.caption is None or not layout.read_caption(i.caption).strip()]
    return items


def _compose(generated: str, existing: str | None, settings: CaptionSettings) -> str:
    text = generated.strip()
    if settings.mode == "append" and existing and existing.strip():
        text = f"{existing.strip()}, {text}" if text else existing.strip()
    if settings.trigger and not trigger_pattern(settings.trigger).search(text):
        text = f"{settings.trigger.strip()}, {text}" if text else settings.trigger.strip()
    return text


class Progress:
    """Events to DIR/events.jsonl (the GUI tails it) or lines on the console; and the stop file."""

    def __init__(self, events_dir: Path | None):
        self.events_dir = Path(events_dir) if events_dir else None
        self.writer = EventWriter(self.events_dir / "events.jsonl") if self.events_dir else None

    def emit(self, kind: str, **fields) -> None:
        if self.writer:
            self.writer.emit(kind, **fields)
        else:
            text = fields.get("text") or fields.get("message") or ""
            where = f" [{fields['n']}/{fields['total']}]" if "n" in fields and "total" in fields else ""
            print(f"{kind}{where}: {text}" + (f"\n  hint: {fields['hint']}" if fields.get("hint") else ""),
                  file=sys.stderr if kind in ("warning", "error") else sys.stdout, flush=True)

    def stop_requested(self) -> bool:
        stop = self.events_dir / "control" / "stop" if self.events_dir else None
        if stop is not None and stop.exists():
            stop.unlink()  # acted on: a later run in the same folder must not stop at once
            return True
        return False

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _load_images(items: list[layout.Item], progress: Progress) -> list[tuple[layout.Item, object]]:
    from PIL import Image, ImageOps

    loaded = []
    for item in items:
        try:
            with Image.open(item.image) as im:
                loaded.append((item, ImageOps.exif_transpose(im).convert("RGB")))
        except Exception as exc:  # a broken image must not end the whole run
            progress.emit("warning", message=f"Skipped {item.image.name}: it could not be opened ({exc}).")
    return loaded


def caption_dataset(root: Path, model: str, captioner: str | None = None,
                    settings: CaptionSettings | None = None, events_dir: Path | None = None) -> dict:
    """Caption the images of the dataset at `root` with `model` (folder, Hub id or KNOWN_MODELS name).

    Returns {"written": n, "total": n, "stopped": bool, "journal_id": id or None}. Raises CaptionerUnavailable
    (with .hint) when the model cannot be loaded; errors are also written as an `error` event when events_dir is set.
    """
    settings = settings or CaptionSettings()
    from engine.registry import choose

    choose(dict.fromkeys(MODES), settings.mode, "mode")
    if not Path(root).is_dir():  # before a captioning model loads for minutes
        raise ValueError(f"The dataset folder {root} does not exist" if not Path(root).exists() else
                         f"{root} is a file: captioning needs the folder that holds the images.")
    progress = Progress(events_dir)
    try:
        return _run(Path(root), model, captioner, settings, progress)
    except CaptionerUnavailable as exc:
        progress.emit("error", message=str(exc), hint=exc.hint, traceback="")
        raise
    except Exception as exc:
        progress.emit("error", message=f"Captioning failed: {exc}", hint="See the traceback; if it mentions memory, "
                      "use a smaller batch size or --device cpu.", traceback=traceback.format_exc())
        raise
    finally:
        progress.close()


def _run(root: Path, model: str, captioner: str | None, settings: CaptionSettings, progress: Progress) -> dict:
    from engine.captions.captioners import CAPTIONERS
    from engine.data.journal import JournalEntry
    from engine.registry import choose

    items = _targets(root, settings.mode)
    total, written = len(items), 0
    progress.emit("status", phase="loading", text=f"Loading the captioning model {model}")
    folder = resolve_model(model)
    kind = captioner or detect_captioner(folder)
    caption_batch = choose(CAPTIONERS, kind, "captioner")(folder, pick_device(settings.device), settings)
    label = f"caption {kind} ({model}), mode {settings.mode}"
    with JournalEntry(root, "caption_run", label) as entry:
        for start in range(0, total, max(1, settings.batch_size)):
            if progress.stop_requested():
                progress.emit("stopped", step=start, text=f"Stopped after {written} of {total} captions.")
                return {"written": written, "total": total, "stopped": True, "journal_id": _id(entry)}
            progress.emit("status", phase="captioning", text=f"Captioning {root.name}", n=start, total=total)
            batch = _load_images(items[start:start + settings.batch_size], progress)
            for (item, _), generated in zip(batch, caption_batch([image for _, image in batch])):
                path = item.caption or layout.caption_path_for(root, item.image)
                existing = layout.read_caption(item.caption) if item.caption else None
                write_caption(entry, path, _compose(generated, existing, settings))
                written += 1
    progress.emit("status", phase="captioning", text=f"Captioned {written} images", n=total, total=total)
    progress.emit("done", written=written, total=total)
    return {"written": written, "total": total, "stopped": False, "journal_id": _id(entry)}


def _id(entry) -> str | None:
    return entry.id if entry.changed() else None


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine caption", description="Caption a dataset's images.")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--model", required=True, help=f"a folder, a Hub id, or one of {', '.join(KNOWN_MODELS)}")
    parser.add_argument("--captioner", help="blip, florence2 or wd14 (default: read from the model folder)")
    parser.add_argument("--mode", default="missing", help=f"{', '.join(MODES)} (default missing)")
    parser.add_argument("--trigger")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--task", default="<DETAILED_CAPTION>", help="Florence-2 task prompt")
    parser.add_argument("--threshold", type=float, default=0.35, help="WD14 tag confidence")
    parser.add_argument("--events-dir", type=Path)
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(errors="replace")
    settings = CaptionSettings(args.mode, args.trigger, args.batch_size, args.device, args.max_new_tokens,
                               args.task, args.threshold)
    try:
        result = caption_dataset(args.dataset, args.model, args.captioner, settings, args.events_dir)
    except CaptionerUnavailable as exc:
        if args.events_dir:  # without an events folder Progress has already printed it
            print(f"error: {exc}\n  hint: {exc.hint}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'stopped' if result['stopped'] else 'done'}: {result['written']} of {result['total']} captions written"
          + ("; undo with: python -m engine captions DATASET undo" if result["journal_id"] else ""))
    return 0
