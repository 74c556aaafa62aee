"""The tiny random models of every family (engine.models.tiny), built on first use and then shared by the whole
session (per xdist worker): building one takes a fraction of a second, but importing what builds it and building the
same folder in every test file added up. The folders are read-only: a test that needs a changed model copies one
(shutil.copytree) and changes its copy; a run writes only into its own run folder."""
from __future__ import annotations

from pathlib import Path


class TinyModels:
    """tiny_models(family) -> the folder of that family's tiny model (seed 0), built under `root` the first time."""

    def __init__(self, root: Path):
        self.root, self.built = Path(root), {}

    def __call__(self, family: str) -> Path:
        if family not in self.built:
            from engine.models.tiny import build_tiny

            self.built[family] = build_tiny(family, self.root / family, seed=0)
        return self.built[family]
