"""The training data: layouts, captions, repeats, bucket batches (the plan's arithmetic), skips and caches."""
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.data.cache import BatchSource, cache_latents, cache_text, latent_key, file_digest
from engine.data.samples import (Sample, caption_for_step, collect_samples, epoch_batches, load_pixels, step_generator,
                         with_trigger)
from engine.config.schema import DatasetConfig
from engine.data.plan import batches_per_epoch
from engine.failures import UserError


def _image(path: Path, size=(64, 64), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _dataset(root: Path, n=4, layout="side_by_side", sizes=None, captions=True):
    images = root / "images" if layout == "separate" else root
    caps = root / "captions" if layout == "separate" else root
    for i in range(n):
        _image(images / f"pic {i} é.png", (sizes or [(64, 64)] * n)[i], (i * 40, 80, 120))
        if captions:
            caps.mkdir(parents=True, exist_ok=True)
            (caps / f"pic {i} é.txt").write_text(f"a photo, tag{i}, red", encoding="utf-8")
    return root


def _cfg(root, **kw):
    base = dict(path=str(root), resolution_px=64, min_bucket_px=64, max_bucket_px=128, bucket_step_px=64)
    return DatasetConfig(**{**base, **kw})


@pytest.mark.parametrize("layout", ["side_by_side", "separate"])
def test_both_layouts_give_the_same_samples_with_trigger_and_repeats(tmp_path, layout):
    samples = collect_samples(_cfg(_dataset(tmp_path, layout=layout), trigger="ohwx", repeats=3), print)
    assert len(samples) == 4
    assert all(s.caption.startswith("ohwx, a photo") and s.repeats == 3 for s in samples)


def test_trigger_is_not_added_twice():
    assert with_trigger("ohwx, a man", "ohwx") == "ohwx, a man"
    assert with_trigger("a man", "ohwx") == "ohwx, a man"
    assert with_trigger("", "ohwx") == "ohwx"


def test_unreadable_image_is_skipped_with_a_warning_naming_it(tmp_path):
    root = _dataset(tmp_path, n=3)
    (root / "broken.png").write_bytes(b"this is not a png")
    (root / "broken.txt").write_text("x", encoding="utf-8")
    warnings = []
    samples = collect_samples(_cfg(root), warnings.append)
    assert len(samples) == 3
    assert any("broken.png" in w for w in warnings)


def test_missing_or_empty_dataset_says_which_path(tmp_path):
    with pytest.raises(UserError, match="dataset.path.*does not exist"):
        collect_samples(_cfg(tmp_path / "nope"), print)
    with pytest.raises(UserError, match="no usable images"):
        collect_samples(_cfg(tmp_path), print)


def test_regularization_images_carry_their_weight_and_no_trigger(tmp_path):
    _dataset(tmp_path / "data", n=2)
    _dataset(tmp_path / "reg", n=3)
    cfg = _cfg(tmp_path / "data", trigger="ohwx", use_reg=True, reg_path=str(tmp_path / "reg"), reg_weight=0.5,
               reg_repeats=2)
    samples = collect_samples(cfg, print)
    reg = [s for s in samples if s.loss_weight == 0.5]
    assert len(reg) == 3 and all(s.repeats == 2 and "ohwx" not in s.caption for s in reg)


def test_epoch_batches_match_the_plan_and_hold_one_bucket_each(tmp_path):
    sizes = [(64, 64)] * 5 + [(128, 64)] * 3
    samples = collect_samples(_cfg(_dataset(tmp_path, n=8, sizes=sizes), repeats=2, resolution_px=128,
                                   max_bucket_px=256), print)
    counts = {}
    for s in samples:
        counts[s.bucket] = counts.get(s.bucket, 0) + s.repeats
    assert len(counts) == 2
    batches = epoch_batches(samples, batch_size=4, seed=1, epoch=0)
    assert len(batches) == batches_per_epoch(counts, 4) == math.ceil(10 / 4) + math.ceil(6 / 4)
    assert all(len({samples[i].bucket for i in b}) == 1 for b in batches)
    seen = sorted(i for b in batches for i in b)
    assert seen == sorted(list(range(8)) * 2)  # every image x repeats exactly once per epoch


def test_order_depends_only_on_seed_and_epoch(tmp_path):
    samples = collect_samples(_cfg(_dataset(tmp_path, n=4), repeats=4), print)
    assert epoch_batches(samples, 2, 7, 3) == epoch_batches(samples, 2, 7, 3)
    assert epoch_batches(samples, 2, 7, 3) != epoch_batches(samples, 2, 7, 4)


def test_caption_dropout_and_tag_shuffle_keep_the_leading_tags():
    sample = Sample(Path("x.png"), "ohwx, a, b, c, d, e", (64, 64), (64, 64), 1, 1.0)
    shuffle = DatasetConfig(shuffle_tags=True, keep_tags=1)
    seen = {caption_for_step(sample, shuffle, step_generator(0, 0, i)) for i in range(20)}
    assert len(seen) > 1 and all(c.startswith("ohwx, ") for c in seen)
    assert all(sorted(c.split(", ")) == sorted(sample.caption.split(", ")) for c in seen)
    always = DatasetConfig(caption_dropout=1.0)
    assert caption_for_step(sample, always, step_generator(0, 0, 0)) == ""
    never = DatasetConfig()
    assert caption_for_step(sample, never, step_generator(0, 0, 0)) == sample.caption


def test_pixels_are_cropped_to_the_bucket_with_sdxl_size_conditioning(tmp_path):
    path = _image(tmp_path / "wide.png", (200, 100))
    pixels, size_cond = load_pixels(path, (200, 100), (128, 64))
    assert pixels.shape == (3, 64, 128) and -1 <= pixels.min() and pixels.max() <= 1
    assert size_cond.tolist() == [100, 200, 0, 0, 64, 128]  # original h, w, crop top, left, target h, w


def _fake_encoder(calls):
    def encode(pixels):
        calls.append(len(pixels))
        return pixels[:, :4, ::8, ::8] * 0.5
    return encode


def test_latent_cache_is_reused_and_keyed_by_content_and_vae(tmp_path):
    root = _dataset(tmp_path / "d", n=2)
    samples = collect_samples(_cfg(root), print)
    calls = []
    first = cache_latents(samples, _fake_encoder(calls), tmp_path / "cache", "vae-a", lambda n, t: None, print)
    again = cache_latents(samples, _fake_encoder(calls), tmp_path / "cache", "vae-a", lambda n, t: None, print)
    assert len(calls) == 2  # the second pass read every latent from disk
    assert torch.equal(first[0][0], again[0][0])
    other_vae = latent_key(samples[0], file_digest(samples[0].image), "vae-b")
    assert other_vae != latent_key(samples[0], file_digest(samples[0].image), "vae-a")
    _image(samples[0].image, (64, 64), (1, 2, 3))  # the user edits the picture
    cache_latents(samples, _fake_encoder(calls), tmp_path / "cache", "vae-a", lambda n, t: None, print)
    assert len(calls) == 3


def test_caching_reports_progress_and_skips_undecodable_files(tmp_path):
    root = _dataset(tmp_path, n=2)
    samples = collect_samples(_cfg(root), print)
    (root / "pic 1 é.png").write_bytes(b"truncated")  # the header was fine when collected; now it is not
    progress, warnings = [], []
    found = cache_latents(samples, _fake_encoder([]), tmp_path / "c", "v", lambda n, t: progress.append((n, t)),
                          warnings.append)
    assert list(found) == [0]
    assert progress[0] == (0, 2) and progress[-1] == (2, 2)
    assert "pic 1 é.png" in warnings[0]


def test_batch_source_uses_the_text_cache_and_weights(tmp_path):
    samples = collect_samples(_cfg(_dataset(tmp_path, n=2)), print)
    latents = cache_latents(samples, _fake_encoder([]), tmp_path / "c", "v", lambda n, t: None, print)
    encoded = []

    def encode_text(captions):
        encoded.extend(captions)
        return {"prompt_embeds": torch.stack([torch.full((3,), float(len(c))) for c in captions])}

    text = cache_text([s.caption for s in samples], encode_text, lambda n, t: None)
    source = BatchSource(samples, _cfg(tmp_path), 0, None, encode_text, latents, text)
    encoded.clear()
    batch = source([0, 1], epoch=0, batch_index=0)
    assert encoded == []  # nothing re-encoded
    assert batch["latents"].shape == (2, 3, 8, 8) and batch["cond"]["prompt_embeds"].shape == (2, 3)
    assert batch["loss_weight"].tolist() == [1.0, 1.0] and batch["files"][0].endswith("pic 0 é.png")


def test_an_unwritable_cache_folder_trains_from_memory_with_one_warning(tmp_path):
    samples = collect_samples(_cfg(_dataset(tmp_path / "d", n=2)), print)
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be", encoding="utf-8")
    warnings = []
    found = cache_latents(samples, _fake_encoder([]), blocker / "latents", "v", lambda n, t: None, warnings.append)
    assert sorted(found) == [0, 1]
    assert len(warnings) == 1 and "cannot be written" in warnings[0]
