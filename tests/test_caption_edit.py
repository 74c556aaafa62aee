"""Bulk caption edits: pure operations, a preview that writes nothing, and an undo that is byte-exact."""
import pytest

from dataset_factory import make_clean_dataset, write_caption
from engine.captions import edit as ce


@pytest.mark.parametrize("op, text, params, expected", [
    ("add_trigger", "a man, red hat", {"trigger": "ohwx"}, "ohwx, a man, red hat"),
    ("add_trigger", "photo of OHWX", {"trigger": "ohwx"}, "photo of OHWX"),
    ("add_trigger", "", {"trigger": "ohwx"}, "ohwx"),
    ("remove_trigger", "ohwx, a man, red hat", {"trigger": "ohwx"}, "a man, red hat"),
    ("remove_trigger", "a man, ohwx", {"trigger": "ohwx"}, "a man"),
    ("remove_trigger", "ohwxman stays", {"trigger": "ohwx"}, "ohwxman stays"),
    ("prefix", "a man", {"text_to_add": "photo, "}, "photo, a man"),
    ("suffix", "a man", {"text_to_add": ", 4k"}, "a man, 4k"),
    ("replace", "a man, man bun", {"find": "man", "replace": "person"}, "a person, person bun"),
    ("replace", "a man, man bun", {"find": r"\bman\b(?! bun)", "replace": "person", "regex": True},
     "a person, man bun"),
    ("strip_tags", " a ,, b ,  c , ", {}, "a, b, c"),
    ("dedupe_tags", "a, b, A, c, b", {}, "a, b, c"),
    ("remove_tags", "a, solo, b, SOLO", {"tags": ["solo"]}, "a, b"),
    ("lowercase", "A Man", {}, "a man"),
])
def test_operations(op, text, params, expected):
    assert ce.OPS[op](text, **params) == expected


def test_preview_writes_nothing_and_shows_a_diff(tmp_path):
    make_clean_dataset(tmp_path, n=3)
    before = {p: p.read_bytes() for p in tmp_path.glob("*.txt")}
    changes = ce.preview(tmp_path, "replace", find="a photo", replace="a picture")
    assert len(changes) == 3 and {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == before
    path, old, new = changes[0]
    assert "-ohwx, a photo" in changes[0].diff() and "+ohwx, a picture" in changes[0].diff()
    assert new == old.replace("a photo", "a picture") and path.suffix == ".txt"


def test_apply_then_undo_is_byte_identical(tmp_path):
    make_clean_dataset(tmp_path, n=4)
    write_caption(tmp_path / "photo 01.txt", "")
    (tmp_path / "photo 02.txt").write_bytes("\ufeffOHWX, Ünïcode,  Tag , tag\r\n".encode("utf-8"))  # BOM + CRLF
    before = {p: p.read_bytes() for p in tmp_path.glob("*.txt")}
    for op, params in [("lowercase", {}), ("strip_tags", {}), ("dedupe_tags", {}), ("remove_trigger",
                       {"trigger": "ohwx"}), ("add_trigger", {"trigger": "sks"})]:
        ce.apply(tmp_path, op, **params)
    assert (tmp_path / "photo 02.txt").read_text(encoding="utf-8") == "sks, ünïcode, tag"
    while ce.undo(tmp_path):
        pass
    assert {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == before


def test_one_undo_restores_one_edit_and_backs_up_every_changed_caption(tmp_path):
    make_clean_dataset(tmp_path, n=3)
    ce.apply(tmp_path, "suffix", text_to_add=", first")
    after_first = {p: p.read_bytes() for p in tmp_path.glob("*.txt")}
    entry = ce.apply(tmp_path, "suffix", text_to_add=", second")
    assert len(entry["replaced"]) == 3 and all((tmp_path / r["backup"]).exists() for r in entry["replaced"])
    ce.undo(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == after_first


def test_edit_limited_to_files(tmp_path):
    paths = make_clean_dataset(tmp_path, n=3)
    changes = ce.preview(tmp_path, "lowercase", files=[paths[1].name]) + \
        ce.preview(tmp_path, "prefix", files=[paths[1]], text_to_add="x ")
    assert {c.path.stem for c in changes} == {paths[1].stem}


def test_bad_regex_and_unknown_op_fail_clearly(tmp_path):
    make_clean_dataset(tmp_path, n=1)
    with pytest.raises(ValueError, match="did you mean 'lowercase'"):
        ce.preview(tmp_path, "lowercas")
    with pytest.raises(Exception):
        ce.preview(tmp_path, "replace", find="(", replace="", regex=True)


def test_cli_previews_then_applies(tmp_path, capsys):
    make_clean_dataset(tmp_path, n=2)
    before = {p: p.read_bytes() for p in tmp_path.glob("*.txt")}
    assert ce.cli([str(tmp_path), "prefix", "--text", "best, "]) == 0
    assert {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == before
    assert ce.cli([str(tmp_path), "prefix", "--text", "best, ", "--apply"]) == 0
    assert all(p.read_text(encoding="utf-8").startswith("best, ") for p in tmp_path.glob("*.txt"))
    assert ce.cli([str(tmp_path), "undo"]) == 0 and {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == before


KILL_MID_EDIT = """
import os, sys
from pathlib import Path
real_replace, n = os.replace, [0]
def replace(src, dst):  # the process dies just before it would replace its 3rd caption
    if Path(dst).suffix == ".txt" and "_easel" not in Path(dst).parts:
        n[0] += 1
        if n[0] == 3:
            os._exit(9)  # like SIGKILL: no __exit__, no finally
    real_replace(src, dst)
os.replace = replace
from engine.captions import edit as caption_edit
caption_edit.apply(Path(sys.argv[1]), "suffix", text_to_add=", edited")
"""


def test_edit_killed_half_way_is_still_undone_byte_for_byte(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    make_clean_dataset(tmp_path, n=5)
    (tmp_path / "photo 01.txt").write_bytes("\ufeffohwx, Ünïcode\r\n".encode("utf-8"))
    before = {p: p.read_bytes() for p in tmp_path.glob("*.txt")}
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", KILL_MID_EDIT, str(tmp_path)], cwd=repo, check=False)
    assert result.returncode == 9
    changed = [p for p in before if p.read_bytes() != before[p]]
    assert len(changed) == 2  # killed in the middle of the edit
    entry = ce.undo(tmp_path)
    assert entry is not None and entry["kept"] == []
    assert {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == before
    assert ce.undo(tmp_path) is None


def test_captions_are_fsynced_before_they_replace_the_old_ones(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    make_clean_dataset(tmp_path, n=3)
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(Path(dst)), real_replace(src, dst))[1])
    ce.apply(tmp_path, "suffix", text_to_add=", x")
    replaced = [i for i, e in enumerate(events) if isinstance(e, Path) and e.suffix == ".txt"
                and "_easel" not in e.parts]
    assert len(replaced) == 3 and all(events[i - 1] == "fsync" for i in replaced)
