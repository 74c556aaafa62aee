"""Captioning offline with a tiny random BLIP saved to disk and loaded like a downloaded model."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from dataset_factory import make_clean_dataset  # noqa: E402
from engine.captions import edit as caption_edit  # noqa: E402
from engine.captions.captioners import detect, wd14  # noqa: E402
from engine.captions.captioning import caption_dataset, CaptionSettings, cli  # noqa: E402
from engine.events import read_all  # noqa: E402
from engine.failures import CaptionerUnavailable  # noqa: E402

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "person", "red", "hat", "dog"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """The tiniest BLIP: 1 layer, 16 wide, 32 px images, a 13-word BERT tokenizer written to disk."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("tiny-blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]", model_max_length=32)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    small = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(text_config=dict(vocab_size=len(WORDS), max_position_embeddings=32, bos_token_id=5,
                                         pad_token_id=0, sep_token_id=3, eos_token_id=3, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    torch.manual_seed(0)  # random weights, but the same ones every run: the generated words are reproducible
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder


def settings(**changes):
    return CaptionSettings(**{"trigger": "ohwx", "batch_size": 2, "max_new_tokens": 4, "device": "cpu", **changes})


def test_missing_mode_writes_only_missing_captions_with_the_trigger(tmp_path, tiny_blip):
    paths = make_clean_dataset(tmp_path / "set", n=4)
    kept = paths[0].with_suffix(".txt").read_bytes()
    for p in paths[1:3]:
        p.with_suffix(".txt").unlink()
    result = caption_dataset(tmp_path / "set", str(tiny_blip), settings=settings(), events_dir=tmp_path / "run")
    assert result["written"] == 2 and not result["stopped"]
    for p in paths[1:3]:
        text = p.with_suffix(".txt").read_text(encoding="utf-8")
        assert text.startswith("ohwx, ") and len(text.split()) > 1
    assert paths[0].with_suffix(".txt").read_bytes() == kept
    events = read_all(tmp_path / "run" / "events.jsonl")
    assert events[-1]["kind"] == "done"
    assert any(e["kind"] == "status" and e.get("total") == 2 for e in events)


def test_overwrite_backs_up_and_one_undo_restores(tmp_path, tiny_blip):
    make_clean_dataset(tmp_path, n=3)
    before = {p: p.read_bytes() for p in tmp_path.glob("*.txt")}
    result = caption_dataset(tmp_path, str(tiny_blip), "blip", settings(mode="overwrite"))
    assert result["written"] == 3 and {p: p.read_bytes() for p in tmp_path.glob("*.txt")} != before
    caption_edit.undo(tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.glob("*.txt")} == before


def test_append_keeps_the_existing_caption_first(tmp_path, tiny_blip):
    paths = make_clean_dataset(tmp_path, n=1)
    old = paths[0].with_suffix(".txt").read_text(encoding="utf-8")
    caption_dataset(tmp_path, str(tiny_blip), settings=settings(mode="append"))
    new = paths[0].with_suffix(".txt").read_text(encoding="utf-8")
    assert new.startswith(old + ", ") and len(new) > len(old) + 2


def test_stop_file_stops_before_the_next_batch(tmp_path, tiny_blip):
    make_clean_dataset(tmp_path / "set", n=2)
    (tmp_path / "run" / "control").mkdir(parents=True)
    (tmp_path / "run" / "control" / "stop").write_bytes(b"")
    result = caption_dataset(tmp_path / "set", str(tiny_blip), settings=settings(mode="overwrite"),
                             events_dir=tmp_path / "run")
    assert result == {"written": 0, "total": 2, "stopped": True, "journal_id": None}
    assert read_all(tmp_path / "run" / "events.jsonl")[-1]["kind"] == "stopped"


def test_offline_without_the_model_names_what_to_download(tmp_path):
    make_clean_dataset(tmp_path / "set", n=1)
    with pytest.raises(CaptionerUnavailable) as info:
        caption_dataset(tmp_path / "set", "blip", events_dir=tmp_path / "run")
    assert "Salesforce/blip-image-captioning-large" in str(info.value) and "hf download" in info.value.hint
    (error,) = [e for e in read_all(tmp_path / "run" / "events.jsonl") if e["kind"] == "error"]
    assert error["hint"] == info.value.hint
    assert cli([str(tmp_path / "set"), "--model", "no-such-model"]) == 2


def test_captioner_is_read_from_the_model_folder(tmp_path, tiny_blip):
    assert detect(tiny_blip) == "blip"
    with pytest.raises(ValueError, match="--captioner"):
        detect(tmp_path)


def test_wd14_tags_sorted_characters_first_ratings_dropped(tmp_path):
    (tmp_path / "selected_tags.csv").write_text("tag_id,name,category,count\n1,general,9,0\n2,long_hair,0,0\n"
                                                "3,^_^,0,0\n4,hatsune_miku,4,0\n5,hat,0,0\n", encoding="utf-8")
    tags = wd14.read_tags(tmp_path)
    assert wd14.tags_from_scores([0.9, 0.5, 0.8, 0.4, 0.1], tags, 0.35) == "hatsune miku, ^_^, long hair"
