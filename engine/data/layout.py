"""Where the images and captions of a dataset folder are (torch-free; the trainer's data loader imports this).

The dataset contract (shared/seeds/flux-identity-lora-guide.md) allows two layouts:

    A  DATASET/images/photo1.jpg  +  DATASET/captions/photo1.txt
    B  DATASET/photo1.jpg         +  DATASET/photo1.txt            (side by side)

A folder is layout A when it has an `images/` subfolder; otherwise it is layout B. Only the top level of the image
folder is read: subfolders (and Easel's own `_set_aside/` and `_easel/`) are not part of the dataset.
A caption belongs to the image with the same file name stem; extensions are matched case-insensitively
(`Photo.JPG` and `photo.TXT` are fine on every OS).

API (stable; keep it small):
    find_items(root, caption_ext=".txt", by_class=False) -> list[Item]  every supported image, sorted, with its
                                                               caption or None (by_class: per sub-folder)
    caption_path_for(root, image, caption_ext=".txt") -> Path where the caption of `image` is (or should be created)
    orphan_captions(root, caption_ext=".txt") -> list[Path]   caption files whose image is missing
    unsupported_images(root) -> list[Path]                    image-like files Easel will not train on
    read_caption(path) -> str                                 caption text (UTF-8, a BOM is dropped)
    image_dir(root), caption_dir(root), layout(root)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUPPORTED_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
# Files that are images but that the trainer does not read: reported, never trained on.
UNSUPPORTED_IMAGE_EXTS = (".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".psd", ".jfif",
                          ".dng", ".cr2", ".nef", ".arw", ".raw", ".svg", ".ico")
EASEL_DIRS = ("_set_aside", "_easel")  # Easel's own folders inside a dataset: never part of it


@dataclass(frozen=True)
class Item:
    """One training image and its caption file (None when the caption file does not exist)."""

    image: Path
    caption: Path | None
    label: str | None = None   # find_items(by_class=True): the sub-folder (class) the image is in

    def to_dict(self) -> dict:
        return {"image": str(self.image), "caption": None if self.caption is None else str(self.caption)}


def layout(root: Path) -> str:
    """'separate' (images/ + captions/) or 'side_by_side'."""
    return "separate" if (Path(root) / "images").is_dir() else "side_by_side"


def image_dir(root: Path) -> Path:
    root = Path(root)
    return root / "images" if layout(root) == "separate" else root


def caption_dir(root: Path) -> Path:
    root = Path(root)
    return root / "captions" if layout(root) == "separate" else root


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name.lower())


def _captions_by_stem(root: Path, caption_ext: str) -> dict[str, Path]:
    ext = caption_ext.lower()
    return {p.stem.lower(): p for p in _files(caption_dir(root)) if p.suffix.lower() == ext}


def caption_path_for(root: Path, image: Path, caption_ext: str = ".txt") -> Path:
    """The caption file of `image`: the existing one (any case of the extension), or where a new one belongs."""
    existing = _captions_by_stem(Path(root), caption_ext).get(Path(image).stem.lower())
    return existing if existing is not None else caption_dir(root) / (Path(image).stem + caption_ext)


def find_items(root: Path, caption_ext: str = ".txt", by_class: bool = False) -> list[Item]:
    """Every supported image of the dataset at `root`, sorted by name, each with its caption file or None.
    by_class: instead, the images of each sub-folder of the image folder (a class per sub-folder, its name the
    Item's label; Easel's own and hidden folders skipped), sorted by class then name; captions are not read."""
    root = Path(root)
    if by_class:
        top = image_dir(root)
        subs = sorted(p for p in top.iterdir() if p.is_dir() and p.name not in EASEL_DIRS
                      and not p.name.startswith(".")) if top.is_dir() else []
        return [Item(image=p, caption=None, label=sub.name) for sub in subs for p in _files(sub)
                if p.suffix.lower() in SUPPORTED_IMAGE_EXTS]
    captions = _captions_by_stem(root, caption_ext)
    images = [p for p in _files(image_dir(root)) if p.suffix.lower() in SUPPORTED_IMAGE_EXTS]
    return [Item(image=p, caption=captions.get(p.stem.lower())) for p in images]


def orphan_captions(root: Path, caption_ext: str = ".txt") -> list[Path]:
    """Caption files with no image of the same name (supported or not) next to them."""
    root = Path(root)
    image_stems = {p.stem.lower() for p in _files(image_dir(root))
                   if p.suffix.lower() in SUPPORTED_IMAGE_EXTS + UNSUPPORTED_IMAGE_EXTS}
    return [p for stem, p in sorted(_captions_by_stem(root, caption_ext).items()) if stem not in image_stems]


def unsupported_images(root: Path) -> list[Path]:
    """Image-like files in the image folder that the trainer will skip (GIF, BMP, TIFF, HEIC, RAW ...)."""
    return [p for p in _files(image_dir(Path(root))) if p.suffix.lower() in UNSUPPORTED_IMAGE_EXTS]


def nested_images(root: Path) -> list[Path]:
    """Supported images in subfolders of the image folder: they are NOT used (a common 'no images found' cause)."""
    top = image_dir(Path(root))
    if not top.is_dir():
        return []
    found = []
    for sub in sorted(p for p in top.iterdir() if p.is_dir()):
        if sub.name in EASEL_DIRS or sub.name.startswith(".") or (top == Path(root) and sub.name == "captions"):
            continue
        found += [p for p in sorted(sub.rglob("*")) if p.is_file() and p.suffix.lower() in SUPPORTED_IMAGE_EXTS]
    return found


def read_caption(path: Path) -> str:
    """The text of a caption file: UTF-8 (a leading BOM from Windows Notepad is dropped).

    A file that is not UTF-8 is read as Windows-1252 so training still sees its words; the doctor reports it.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def is_utf8(path: Path) -> bool:
    try:
        Path(path).read_bytes().decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
