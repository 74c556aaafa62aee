"""engine/ keeps its import rules (tests/import_rules.py): no cycles, no GUI imports, each part imports only the
parts below it. The checker is also run on planted breakages, so a checker that finds nothing cannot pass."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from import_rules import ALLOWED, import_problems, part_of

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def test_engine_keeps_its_import_rules():
    assert import_problems(ENGINE) == []


def test_every_part_of_the_engine_says_what_it_holds_and_may_import():
    for package in sorted(p.parent for p in ENGINE.glob("*/__init__.py")):
        doc = (package / "__init__.py").read_text(encoding="utf-8")
        assert doc.startswith('"""') and "May import" in doc, f"{package.name}/__init__.py needs its docstring"
        assert package.name in ALLOWED, f"engine/{package.name}/ is not in tests/import_rules.py ALLOWED"


@pytest.fixture
def engine_copy(tmp_path) -> Path:
    copy = tmp_path / "engine"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n" + code + "\n", encoding="utf-8")


def test_a_planted_cycle_is_reported_with_its_files(engine_copy):
    # the cycle the flat layout had: the WD14 loader reaching back into the captioning run for its error class
    _append(engine_copy / "captions" / "captioners" / "wd14.py",
            "def _late():\n    from engine.captions.captioning import caption_dataset  # planted\n")
    problems = import_problems(engine_copy)
    cycles = [p for p in problems if p.startswith("import cycle")]
    assert len(cycles) == 1, problems
    assert "engine.captions.captioners.wd14" in cycles[0] and "engine.captions.captioning" in cycles[0]
    assert "wd14.py:" in cycles[0]  # names the line to change


def test_a_planted_upward_import_is_reported(engine_copy):
    _append(engine_copy / "data" / "plan.py", "from engine.training.loop import run  # planted")
    problems = import_problems(engine_copy)
    assert any("data/plan.py" in p and "data/ imports engine.training.loop" in p for p in problems), problems


def test_a_planted_gui_import_is_reported(engine_copy):
    _append(engine_copy / "events.py", "def _show():\n    import gradio  # planted\n")
    problems = import_problems(engine_copy)
    assert any("events.py" in p and "imports gradio" in p for p in problems), problems


def test_a_new_folder_must_be_given_its_rules(engine_copy):
    (engine_copy / "video").mkdir()
    (engine_copy / "video" / "__init__.py").write_text('"""Video."""\n', encoding="utf-8")
    (engine_copy / "video" / "frames.py").write_text("from engine.atomic import atomic_write\n", encoding="utf-8")
    assert any("'video' is a new part" in p for p in import_problems(engine_copy))


def test_parts_are_named_by_folder_and_helpers_by_file():
    assert part_of("engine.data.plan", "engine") == "data"
    assert part_of("engine.models.families.sd.record", "engine") == "models"
    assert part_of("engine.events", "engine") == "helpers"
    assert part_of("engine.cli", "engine") == "entry"
    assert part_of("engine", "engine") == "entry"
