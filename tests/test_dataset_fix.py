"""Fixes move or back up, never delete; every fix is journaled and undo restores the dataset byte for byte."""
import hashlib
from pathlib import Path

import pytest
from PIL import Image

from dataset_factory import PLANTED_BATCH_SIZE, PLANTED_RESOLUTION_PX, TRIGGER, copy_planted_dataset
from engine.dataset_doctor import fixes as dataset_fix
from engine.dataset_doctor.check_dataset import check_dataset

# the trainer's bucket settings for the planted dataset (kohya's usual half to double the resolution)
PLANTED_BUCKETS = {"min_bucket_px": PLANTED_RESOLUTION_PX // 2, "max_bucket_px": PLANTED_RESOLUTION_PX * 2}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every dataset file (not Easel's own state) -> its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "_easel" not in p.relative_to(root).parts}


def all_blobs(root: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def check(root):
    return check_dataset(root, TRIGGER, PLANTED_RESOLUTION_PX, PLANTED_BATCH_SIZE, **PLANTED_BUCKETS)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return tmp_path_factory.mktemp("template")


@pytest.fixture
def planted(tmp_path, template):
    copy_planted_dataset(tmp_path / "set", template)
    return tmp_path / "set"


def apply_every_suggested_fix(root: Path) -> list[dict]:
    entries = []
    for finding in check(root).findings:
        if finding.fix and finding.code != "near_duplicate" and all((root / f).exists() for f in finding.fix_files):
            entries.append(dataset_fix.apply(root, finding.fix, finding.fix_files, trigger=TRIGGER))
    return entries


def test_fixes_solve_the_problems_lose_nothing_and_undo_restores_everything(planted):
    before, blobs_before = snapshot(planted), all_blobs(planted)
    entries = apply_every_suggested_fix(planted)
    assert all(entries)
    after = check(planted)
    fixed = {"exif_rotated", "alpha_channel", "cmyk_image", "high_bit_depth", "palette_image", "missing_caption",
             "missing_trigger", "exact_duplicate", "zero_byte_image", "unreadable_image", "truncated_image",
             "unsupported_format", "orphan_caption"}
    assert not fixed & after.codes(), fixed & after.codes()
    assert blobs_before <= all_blobs(planted)  # every original byte string still exists somewhere
    while dataset_fix.undo(planted):
        pass
    assert snapshot(planted) == before


def test_set_aside_moves_the_image_with_its_caption(planted):
    entry = dataset_fix.apply(planted, "set_aside", ["cut off.jpg"])
    assert not (planted / "cut off.jpg").exists() and not (planted / "cut off.txt").exists()
    assert (planted / "_set_aside" / "cut off.jpg").exists() and (planted / "_set_aside" / "cut off.txt").exists()
    assert [m["to"] for m in entry["moved"]] == ["_set_aside/cut off.jpg", "_set_aside/cut off.txt"]
    assert "cut off.jpg" not in {r.path for r in check(planted).images}


def test_setting_aside_one_twin_keeps_the_shared_caption(planted):
    dataset_fix.apply(planted, "set_aside", ["twin.png"])
    assert (planted / "twin.txt").exists() and (planted / "_set_aside" / "twin.png").exists()


def test_image_fixes_write_clean_rgb_and_keep_the_original(planted):
    original = (planted / "sideways.jpg").read_bytes()
    entry = dataset_fix.apply(planted, "apply_exif_rotation", ["sideways.jpg"])
    with Image.open(planted / "sideways.jpg") as im:
        assert im.size == (256, 384) and im.getexif().get(0x0112, 1) == 1
    assert (planted / entry["replaced"][0]["backup"]).read_bytes() == original
    dataset_fix.apply(planted, "convert_to_rgb", ["scan16.png", "print.jpg"])
    with Image.open(planted / "scan16.png") as im:
        assert im.mode == "RGB" and 20 < sum(im.convert("L").getextrema()) / 2 < 235  # scaled, not clipped white
    dataset_fix.apply(planted, "flatten_alpha", ["cutout.png"])
    with Image.open(planted / "cutout.png") as im:
        assert im.mode == "RGB"


def test_created_captions_use_the_template(planted):
    dataset_fix.apply(planted, "create_missing_captions", ["no caption.jpg"], trigger=TRIGGER,
                      template="{trigger}, a photo")
    assert (planted / "no caption.txt").read_text(encoding="utf-8") == "ohwx, a photo"
    with pytest.raises(ValueError, match="trigger"):
        dataset_fix.apply(planted, "create_missing_captions", ["café.jpg"])


def test_undo_keeps_an_edit_made_after_the_fix(planted):
    entry = dataset_fix.apply(planted, "flatten_alpha", ["cutout.png"])
    Image.new("RGB", (8, 8), "green").save(planted / "cutout.png")  # the user edits the fixed file
    edited = (planted / "cutout.png").read_bytes()
    result = dataset_fix.undo(planted)
    assert (planted / "cutout.png").read_bytes() == (planted / entry["replaced"][0]["backup"]).read_bytes()
    assert [(planted / k).read_bytes() for k in result["kept"]] == [edited]


def test_unknown_fix_suggests_the_closest(planted):
    with pytest.raises(ValueError, match="did you mean 'set_aside'"):
        dataset_fix.apply(planted, "set_asid", ["zero.png"])


def test_cli_applies_suggested_files_and_undoes(planted, capsys):
    assert dataset_fix.cli([str(planted), "convert_to_rgb"]) == 0
    assert "3 replaced" in capsys.readouterr().out
    assert dataset_fix.cli([str(planted), "undo"]) == 0
    assert dataset_fix.history(planted) == []
