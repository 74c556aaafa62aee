"""No family name is tested outside engine/models/families/, and no engine file is over 400 lines
(tests/family_rules.py). The checker also runs on planted breakages every time, so a checker that finds nothing
cannot pass."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from family_rules import MAX_LINES, family_names, family_rule_problems

ROOT = Path(__file__).resolve().parents[1]
ENGINE, UI = ROOT / "engine", ROOT / "ui"


def test_no_family_name_is_tested_outside_its_folder_and_no_engine_file_is_too_long():
    assert family_rule_problems(ENGINE, UI) == []


def test_the_names_are_the_registrys():
    from engine.models.families import FOLDERS

    assert family_names(ENGINE) == set(FOLDERS) >= {"sd15", "sd2", "sdxl", "flux", "dit"}


@pytest.fixture
def trees(tmp_path) -> tuple[Path, Path]:
    copies = tmp_path / "engine", tmp_path / "ui"
    for source, copy in zip((ENGINE, UI), copies):
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copies


PLANTS = {  # file under the tree -> (planted line, what the report must say)
    "data/plan.py": ('def _p(model):\n    return model.family == "flux"', "family name(s) flux"),
    "rl/plan.py": ('def _p(preset):\n    return preset.model.family in ("sd15", "sd2", "sdxl")',
                   "family name(s) sd15, sd2, sdxl"),
    "training/speed.py": ('def _p(family):\n    return family.name != "dit"', "family name(s) dit"),
    "config/validate.py": ('def _p(p):\n    return {"flux": 16, "dit": 1}.get(p.model.family, 8)',
                           "a table keyed by family names (flux, dit)"),
    "sampling/scratch.py": ('def _p(name):\n    match name:\n        case "sdxl":\n            return 1',
                            "matches family name sdxl"),
}


def _plant(target: Path, code: str) -> int:
    """Appends code after a blank line; the line number of its last line."""
    text = target.read_text(encoding="utf-8")
    target.write_text(text + "\n" + code + "\n", encoding="utf-8")
    return len(text.splitlines()) + 1 + len(code.splitlines())


def _new_problems(engine: Path, ui: Path, plant) -> list[str]:
    """What planting adds to the copy's problems (the checker's verdict on the tree itself is the first test's)."""
    before = family_rule_problems(engine, ui)
    plant()
    return [p for p in family_rule_problems(engine, ui) if p not in before]


@pytest.mark.parametrize("file", sorted(PLANTS))
def test_a_planted_family_name_test_is_reported_with_its_line(trees, file):
    engine, ui = trees
    code, words = PLANTS[file]
    lines = {}
    problems = _new_problems(engine, ui, lambda: lines.setdefault("last", _plant(engine / file, code)))
    line = lines["last"] - (1 if "match" in code else 0)   # the compare is the last line; a match's case the one before
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"engine/{file}:{line}: "), problems
    assert words in problems[0] and "Capabilities" in problems[0]


def test_a_planted_name_test_in_the_gui_is_reported(trees):
    engine, ui = trees
    problems = _new_problems(engine, ui, lambda: _plant(ui / "tab_run.py", 'def _p(m):\n    return m.family == "dit"'))
    assert len(problems) == 1 and problems[0].startswith("ui/tab_run.py:") and "dit" in problems[0], problems


def test_the_family_folders_and_config_importers_may_name_families(trees):
    engine, ui = trees

    def plant():
        for file in ("models/families/flux/record.py", "config/imports/kohya_ss.py"):
            _plant(engine / file, 'def _p(name):\n    return name == "flux"')
    assert _new_problems(engine, ui, plant) == []


def test_a_planted_long_file_is_reported(trees):
    engine, ui = trees

    def plant():
        (engine / "data" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1), encoding="utf-8")
        (engine / "data" / "just_fits.py").write_text("x = 1\n" * MAX_LINES, encoding="utf-8")
    problems = _new_problems(engine, ui, plant)
    assert problems == [f"engine/data/long.py: {MAX_LINES + 1} lines; split it by concern (at most {MAX_LINES})"]
