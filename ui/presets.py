"""The preset library: shipped presets (presets/, read-only) and the user's own (my_presets/, gitignored).

Plain functions (no Gradio) so tests call them directly; ui/app.py wires them to the preset bar.
"""
from __future__ import annotations

import re
from pathlib import Path

from engine.config.save import save_preset
from engine.config.schema import Preset

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class PresetLibrary:
    def __init__(self, shipped_dir: Path = PROJECT_ROOT / "presets", user_dir: Path = PROJECT_ROOT / "my_presets"):
        self.shipped_dir = Path(shipped_dir)
        self.user_dir = Path(user_dir)

    def choices(self) -> list[tuple[str, str]]:
        """(label, path) for the dropdown: the user's presets first, then the shipped ones."""
        out = []
        for folder, tag in ((self.user_dir, "mine"), (self.shipped_dir, "shipped")):
            if folder.is_dir():
                files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml"), *folder.glob("*.json")],
                               key=lambda p: p.name.lower())
                out += [(f"{p.stem} ({tag})", str(p)) for p in files]
        return out

    def is_shipped(self, path) -> bool:
        try:
            Path(path).resolve().relative_to(self.shipped_dir.resolve())
            return True
        except ValueError:
            return False

    def save(self, preset: Preset, path) -> Path:
        if not path:
            raise ValueError("This preset has no file yet: use Save as and give it a name.")
        if self.is_shipped(path):
            raise ValueError(f"{Path(path).name} is a shipped preset and stays as it is: use Save as to keep your "
                             f"changes in {self.user_dir.name}/.")
        return save_preset(preset, path)

    def save_as(self, preset: Preset, name: str) -> Path:
        """A new file in my_presets/; an existing one is never replaced (Save does that, for the loaded preset)."""
        path = self.user_dir / f"{clean_name(name)}.yaml"
        if path.exists():
            raise FileExistsError(f"{self.user_dir.name}/{path.name} exists: choose another name, or load it and "
                                  "press Save")
        return save_preset(preset, path)


def clean_name(name: str) -> str:
    """A file name from what the user typed: any letters (accents too), no path separators or Windows-reserved
    characters."""
    name = re.sub(r'[<>:"/\\|?*\x00-\x1f]', "_", (name or "").strip()).strip(" .")
    name = re.sub(r"\.(ya?ml|json)$", "", name, flags=re.IGNORECASE)
    if not name:
        raise ValueError("Type a name for the preset first (e.g. my-character-lora).")
    return name
