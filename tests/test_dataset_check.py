"""The dataset doctor finds one planted instance of every problem, and nothing wrong in a clean dataset."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_factory import (PLANTED_BATCH_SIZE, PLANTED_RESOLUTION_PX, TRIGGER, make_clean_dataset,
                             make_planted_dataset, pattern, write_caption, write_image)
from engine.data import buckets
from engine.data import layout as dataset_layout
from engine.dataset_doctor.check_dataset import check_dataset, cli
from engine.dataset_doctor.checks import estimate_clip_tokens
from engine.dataset_doctor.report import SEVERITIES

# the trainer's bucket settings for the planted dataset (kohya's usual half to double the resolution)
PLANTED_BUCKETS = {"min_bucket_px": PLANTED_RESOLUTION_PX // 2, "max_bucket_px": PLANTED_RESOLUTION_PX * 2}

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    expected = make_planted_dataset(root)
    return root, expected, check_dataset(root, TRIGGER, PLANTED_RESOLUTION_PX, PLANTED_BATCH_SIZE, **PLANTED_BUCKETS)


PLANTED_CODES = ["small_image", "extreme_aspect", "small_bucket", "alpha_channel", "cmyk_image", "palette_image",
                 "high_bit_depth", "exif_rotated", "missing_caption", "empty_caption", "missing_trigger",
                 "caption_too_long", "identical_captions", "caption_encoding", "near_duplicate", "exact_duplicate",
                 "zero_byte_image", "unreadable_image", "truncated_image", "unsupported_format", "orphan_caption",
                 "shared_caption", "nested_images"]


@pytest.mark.parametrize("code", PLANTED_CODES)
def test_each_planted_problem_is_reported_for_its_file(planted, code):
    _, expected, report = planted
    concerned = [f for f in report.findings if f.code == code]
    assert concerned, f"no {code} finding; got {sorted(report.codes())}"
    assert any(expected[code] in f.files for f in concerned), [f.files for f in concerned]


def test_findings_speak_to_the_user(planted):
    _, _, report = planted
    for f in report.findings:
        assert f.severity in SEVERITIES
        assert f.message.strip() and f.hint.strip(), f.code
    broken = {f.code for f in report.errors}
    assert {"zero_byte_image", "unreadable_image", "truncated_image", "missing_caption"} <= broken


def test_exact_duplicates_keep_the_original_and_set_aside_the_copy(planted):
    _, _, report = planted
    (dup,) = [f for f in report.findings if f.code == "exact_duplicate"]
    assert dup.files == ["photo 01.jpg", "photo 01 copy.jpg"] and dup.fix_files == ["photo 01 copy.jpg"]
    assert not any(set(f.files) == set(dup.files) for f in report.findings if f.code == "near_duplicate")


def test_gallery_rows_have_size_bucket_and_caption(planted):
    _, _, report = planted
    rows = {r.path: r for r in report.images}
    sideways = rows["sideways.jpg"]
    assert (sideways.width, sideways.height) == (256, 384)  # EXIF rotation applied to the displayed size
    assert sideways.bucket == buckets.assign_bucket(256, 384, buckets.make_buckets(PLANTED_RESOLUTION_PX))
    assert rows["no caption.jpg"].caption is None and "missing_caption" in rows["no caption.jpg"].codes
    assert json.loads(json.dumps(report.to_dict()))["counts"]["error"] == len(report.errors)


@pytest.mark.parametrize("layout", ["side_by_side", "separate"])
def test_clean_dataset_has_no_errors_or_warnings(tmp_path, layout):
    paths = make_clean_dataset(tmp_path, n=20, layout=layout)
    report = check_dataset(tmp_path, TRIGGER, resolution_px=256, **PLANTED_BUCKETS, batch_size=2)
    assert [(f.code, f.message) for f in report.findings if f.severity != "info"] == []
    assert len(report.images) == 20 and all(r.caption and r.bucket for r in report.images)
    assert any("写真" in r.path for r in report.images)  # non-ASCII names and spaces just work
    assert report.layout == layout and len(paths) == 20


def test_empty_folder_says_where_the_images_should_go(tmp_path):
    write_image(tmp_path / "holiday" / "a.jpg", pattern(1, 64, 64))
    (finding,) = [f for f in check_dataset(tmp_path).findings if f.code == "no_images"]
    assert finding.severity == "error" and "holiday/a.jpg" in finding.files and "subfolders" in finding.message


def test_few_images_warn_and_many_inform(tmp_path):
    make_clean_dataset(tmp_path / "few", n=5)
    assert "too_few_images" in check_dataset(tmp_path / "few", resolution_px=256, **PLANTED_BUCKETS).codes()
    make_clean_dataset(tmp_path / "many", n=31, sizes=((96, 96), (64, 96)))
    report = check_dataset(tmp_path / "many", resolution_px=64, min_bucket_px=64, max_bucket_px=128)
    assert "many_images" in report.codes() and not report.errors


def test_quick_mode_still_catches_truncated_files(tmp_path):
    make_clean_dataset(tmp_path, n=15)
    data = (tmp_path / "photo 01.jpg").read_bytes()
    (tmp_path / "photo 01.jpg").write_bytes(data[: len(data) // 2])
    report = check_dataset(tmp_path, resolution_px=256, **PLANTED_BUCKETS, deep=False)
    assert [f.files for f in report.findings if f.code == "truncated_image"] == [["photo 01.jpg"]]


def test_buckets_fit_the_area_and_pick_the_nearest_shape():
    found = buckets.make_buckets(1024)
    assert (1024, 1024) in found and all(w * h <= 1024 * 1024 and w % 64 == 0 == h % 64 for w, h in found)
    assert all((h, w) in found for w, h in found)
    assert buckets.assign_bucket(1920, 1080, found) == (1344, 768)
    assert buckets.assign_bucket(1080, 1920, found) == (768, 1344)
    assert buckets.assign_bucket(500, 500, found) == (1024, 1024)
    assert buckets.upscale_factor(500, 500, (1024, 1024)) == pytest.approx(2.048)


def test_layout_pairs_captions_case_insensitively(tmp_path):
    write_image(tmp_path / "images" / "Photo.JPG", pattern(1, 32, 32))
    write_caption(tmp_path / "captions" / "photo.TXT", "x")
    write_caption(tmp_path / "captions" / "lonely.txt", "y")
    (item,) = dataset_layout.find_items(tmp_path)
    assert item.caption == tmp_path / "captions" / "photo.TXT"
    assert dataset_layout.orphan_captions(tmp_path) == [tmp_path / "captions" / "lonely.txt"]


def test_token_estimate_is_close_for_plain_english():
    assert estimate_clip_tokens("ohwx, a man standing outdoors, sunny day") in range(8, 12)


def test_cli_json_and_exit_code(tmp_path, capsys):
    make_clean_dataset(tmp_path, n=15)
    (tmp_path / "photo 01.txt").unlink()
    assert cli([str(tmp_path), "--json", "--resolution", "256"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["findings"][0]["code"] == "missing_caption"


def test_gui_facing_modules_import_no_torch():
    code = ("import sys; import engine.dataset_doctor.check_dataset, engine.dataset_doctor.fixes, engine.captions.edit, engine.captions.captioning; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_same_shape_in_other_colours_is_not_a_near_duplicate(tmp_path):
    from PIL import Image, ImageDraw

    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 60, 220)), ("red again", (222, 32, 30))):
        im = Image.new("RGB", (256, 256), (245, 240, 230))
        ImageDraw.Draw(im).ellipse((40, 40, 216, 216), fill=colour)
        im.save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text("ohwx, a circle", encoding="utf-8")
    near = [f for f in check_dataset(tmp_path, trigger="ohwx", resolution_px=256, **PLANTED_BUCKETS).findings
            if f.code == "near_duplicate"]
    assert len(near) == 1 and sorted(near[0].files) == ["red again.png", "red.png"]


BUCKET_SIZES = ((320, 320), (256, 384), (384, 256), (900, 300), (200, 700), (1000, 560))


def _buckets_by_size(report):
    return {(r.width, r.height): tuple(r.bucket) for r in report.images}


def test_bucketing_off_trains_every_image_square(tmp_path, capsys):
    make_clean_dataset(tmp_path, n=12, sizes=BUCKET_SIZES)
    report = check_dataset(tmp_path, resolution_px=512, deep=False, bucketing=False)
    assert set(_buckets_by_size(report).values()) == {(512, 512)} and report.buckets == {"512x512": 12}
    cli([str(tmp_path), "--json", "--quick", "--resolution", "512", "--no-bucketing"])
    assert json.loads(capsys.readouterr().out)["buckets"] == {"512x512": 12}


@pytest.mark.parametrize("resolution, settings", [
    (1024, {}),  # the schema's defaults (256-1024 px), not make_buckets' own (512-2048 px)
    (512, {"min_bucket_px": 384, "max_bucket_px": 640}),
    (512, {"min_bucket_px": 256, "max_bucket_px": 768, "bucket_step_px": 32}),
])
def test_doctor_buckets_exactly_as_the_trainer(tmp_path, resolution, settings):
    from engine.config.schema import DatasetConfig
    from engine.data.buckets import bucket_of

    make_clean_dataset(tmp_path, n=12, sizes=BUCKET_SIZES)
    dataset = DatasetConfig(resolution_px=resolution, **settings)
    report = check_dataset(tmp_path, resolution_px=resolution, deep=False, **settings)
    found = _buckets_by_size(report)
    assert len(found) == len(BUCKET_SIZES)
    assert all(bucket == bucket_of(size, dataset) for size, bucket in found.items())
    assert all(dataset.min_bucket_px <= side <= dataset.max_bucket_px for b in found.values() for side in b)


def test_cli_passes_the_bucket_settings(tmp_path, capsys):
    make_clean_dataset(tmp_path, n=12, sizes=BUCKET_SIZES)
    args = [str(tmp_path), "--json", "--quick", "--resolution", "512", "--min-bucket", "384", "--max-bucket", "640"]
    cli(args)
    report = json.loads(capsys.readouterr().out)
    expected = check_dataset(tmp_path, resolution_px=512, deep=False, min_bucket_px=384, max_bucket_px=640)
    assert report["buckets"] == expected.buckets != check_dataset(tmp_path, resolution_px=512, deep=False).buckets
    assert cli([str(tmp_path), "--resolution", "512", "--min-bucket", "640"]) == 2  # as the trainer refuses it
