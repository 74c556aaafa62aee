"""engine/rl/rewards: each reward against a value computed by hand, the weighted sum, and every config mistake as a
UserError that names the key. The CLIP models are tiny and random, the reward server is a thread on 127.0.0.1."""
import contextlib
import dataclasses
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engine.config.schema import REWARD_NAMES, Preset
from engine.failures import UserError
from engine.rl.rewards import REWARDS, RewardServerDown, RewardSet
from engine.rl.rewards import builtin, server

CLIP_PROJECTION_DIM = 16


def rl_config(**changes):
    return dataclasses.replace(Preset().rl, **changes)


def flat(value=128, size=(32, 32)):
    return Image.new("RGB", size, (value, value, value))


def noisy(seed=0, size=(32, 32)):
    import random

    rng = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))


@contextlib.contextmanager
def raises_user_error(*fragments):
    """Expect a UserError whose message contains every fragment."""
    with pytest.raises(UserError) as info:
        yield info
    for fragment in fragments:
        assert fragment in info.value.message, (fragment, info.value.message)


# ---------------------------------------------------------------------------------------------- registry, builtins

def test_the_registry_has_every_reward_the_config_accepts():
    assert set(REWARDS) == set(REWARD_NAMES)


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, engine.rl.rewards; assert 'torch' not in sys.modules and 'PIL' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_jpeg_rewards_are_the_size_in_kb_with_opposite_signs():
    image = noisy()
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    size_kb = len(buffer.getvalue()) / 1000
    assert builtin.jpeg_incompressibility([image], [""]) == [pytest.approx(size_kb)]
    assert builtin.jpeg_compressibility([image], [""]) == [pytest.approx(-size_kb)]


def test_a_noisy_image_is_less_compressible_than_a_flat_one():
    flat_score, noisy_score = builtin.jpeg_compressibility([flat(), noisy()], ["", ""])
    assert noisy_score < flat_score < 0


def test_brightness_of_black_white_and_grey():
    assert builtin.brightness([flat(0), flat(255), flat(51)], [""] * 3) == pytest.approx([0.0, 1.0, 0.2])
    half = Image.new("RGB", (2, 1))
    half.putpixel((1, 0), (255, 255, 255))
    assert builtin.brightness([half], [""]) == pytest.approx([0.5])


def test_the_total_is_the_weighted_sum_and_parts_are_unweighted():
    rewards = RewardSet.from_config(rl_config(rewards={"brightness": 2.0, "jpeg_incompressibility": -0.5}))
    images = [flat(0), flat(255), noisy()]
    total, parts = rewards(images, ["a", "b", "c"])
    assert rewards.names == ["brightness", "jpeg_incompressibility"]
    assert parts["brightness"] == pytest.approx(builtin.brightness(images, [""] * 3))
    assert parts["jpeg_incompressibility"] == pytest.approx(builtin.jpeg_incompressibility(images, [""] * 3))
    expected = [2.0 * b - 0.5 * j for b, j in zip(parts["brightness"], parts["jpeg_incompressibility"])]
    assert total == pytest.approx(expected)
    assert rewards([], []) == ([], {"brightness": [], "jpeg_incompressibility": []})


def test_an_unknown_reward_name_suggests_the_closest():
    with raises_user_error("rl.rewards", "'brightnes'", "did you mean 'brightness'"):
        RewardSet.from_config(rl_config(rewards={"brightnes": 1.0}))


@pytest.mark.parametrize("weight", ["high", True, None, float("nan")])
def test_a_weight_that_is_not_a_number_names_the_reward(weight):
    with raises_user_error("rl.rewards.brightness", "not a number"):
        RewardSet.from_config(rl_config(rewards={"brightness": weight}))


def test_no_rewards_at_all_is_an_error():
    with raises_user_error("rl.rewards"):
        RewardSet.from_config(rl_config(rewards={}))


# ---------------------------------------------------------------------------------------------- CLIP models

@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP saved as a transformers folder, as a user's clip-vit-large-patch14 would be."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from engine.models.tiny import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    vocab = tokenizer.get_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    vision = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                  patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_PROJECTION_DIM))
    folder = tmp_path_factory.mktemp("tiny-clip")
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _by_hand_features(folder, images, prompts):
    """CLIP's image and text embeddings through its parts (encoder, then projection), not get_*_features."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    with torch.no_grad():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        tokens = processor.tokenizer(prompts, padding=True, return_tensors="pt")
        text = model.text_projection(model.text_model(**tokens).pooler_output)
    return image, text


def test_clip_score_is_100_times_the_cosine(tiny_clip):
    import torch

    images, prompts = [noisy(1), flat(200)], ["the cat", "a cat and the dog"]
    rewards = RewardSet.from_config(rl_config(rewards={"clip_score": 1.0}, clip_model_path=str(tiny_clip)))
    total, parts = rewards(images, prompts)
    image, text = _by_hand_features(tiny_clip, images, prompts)
    expected = (100 * torch.nn.functional.cosine_similarity(image, text, dim=-1)).tolist()
    assert all(math.isfinite(s) for s in parts["clip_score"])
    assert parts["clip_score"][0] != pytest.approx(parts["clip_score"][1])
    assert parts["clip_score"] == pytest.approx(expected, abs=1e-4)
    assert total == pytest.approx(expected, abs=1e-4)


def test_clip_score_and_aesthetic_share_one_loaded_model(tiny_clip, tmp_path):
    weights = _save_aesthetic(tmp_path / "aesthetic.pth", CLIP_PROJECTION_DIM)
    rewards = RewardSet.from_config(rl_config(rewards={"clip_score": 1.0, "aesthetic": 1.0},
                                              clip_model_path=str(tiny_clip), aesthetic_model_path=str(weights)))
    assert len(rewards.cache) == 1


def test_clip_score_without_clip_model_path_names_the_key(tmp_path):
    with raises_user_error("rl.clip_model_path", "clip_score", "empty"):
        RewardSet.from_config(rl_config(rewards={"clip_score": 1.0}))
    absent = tmp_path / "clip-vit-large-patch14"
    with raises_user_error("rl.clip_model_path", str(absent), "does not exist"):
        RewardSet.from_config(rl_config(rewards={"clip_score": 1.0}, clip_model_path=str(absent)))


def test_a_folder_that_is_not_a_clip_model_names_the_key(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    with raises_user_error("rl.clip_model_path", str(tmp_path), "could not be loaded"):
        RewardSet.from_config(rl_config(rewards={"clip_score": 1.0}, clip_model_path=str(tmp_path)))


def _aesthetic_state(width, seed=0):
    """Random weights for the LAION predictor's layers, under its file's names (layers.0 ... layers.7)."""
    import torch

    from engine.rl.rewards.clip_models import aesthetic_mlp

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = aesthetic_mlp(width)
    return {f"layers.{name}": value for name, value in mlp.state_dict().items()}


def _save_aesthetic(path, width):
    import torch

    state = _aesthetic_state(width)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_is_the_mlp_on_normalised_image_features(tiny_clip, tmp_path, suffix):
    import torch

    weights = _save_aesthetic(tmp_path / f"sac+logos+ava1-l14-linearMSE{suffix}", CLIP_PROJECTION_DIM)
    images = [noisy(2), flat(30)]
    rewards = RewardSet.from_config(rl_config(rewards={"aesthetic": 1.0}, clip_model_path=str(tiny_clip),
                                              aesthetic_model_path=str(weights)))
    _, parts = rewards(images, ["", ""])
    x, _ = _by_hand_features(tiny_clip, images, ["", ""])
    x = x / x.norm(dim=-1, keepdim=True)
    state = _aesthetic_state(CLIP_PROJECTION_DIM)
    for i in (0, 2, 4, 6, 7):  # Linear layers, no activations; dropout is off in eval mode
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert parts["aesthetic"] == pytest.approx(x.squeeze(1).tolist(), abs=1e-5)
    assert torch.isfinite(torch.tensor(parts["aesthetic"])).all()


def test_aesthetic_weights_for_another_clip_width_are_refused(tiny_clip, tmp_path):
    weights = _save_aesthetic(tmp_path / "predictor.pth", 768)
    with raises_user_error("rl.aesthetic_model_path", "768", str(CLIP_PROJECTION_DIM)):
        RewardSet.from_config(rl_config(rewards={"aesthetic": 1.0}, clip_model_path=str(tiny_clip),
                                        aesthetic_model_path=str(weights)))


def test_aesthetic_weights_with_other_layers_are_refused(tiny_clip, tmp_path):
    import torch

    weights = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(1, CLIP_PROJECTION_DIM)}, weights)
    with raises_user_error("rl.aesthetic_model_path", str(weights), "LAION"):
        RewardSet.from_config(rl_config(rewards={"aesthetic": 1.0}, clip_model_path=str(tiny_clip),
                                        aesthetic_model_path=str(weights)))


def test_aesthetic_without_its_weights_names_the_key(tiny_clip):
    with raises_user_error("rl.aesthetic_model_path", "empty"):
        RewardSet.from_config(rl_config(rewards={"aesthetic": 1.0}, clip_model_path=str(tiny_clip)))


# ---------------------------------------------------------------------------------------------- python file

def _reward_file(tmp_path, body, name="my reward ünï.py"):
    folder = tmp_path / "rewards é"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body, encoding="utf-8")
    return path


def _python_rewards(path):
    return RewardSet.from_config(rl_config(rewards={"python": 1.5}, reward_file=str(path)))


def test_a_python_reward_file_scores_the_batch(tmp_path):
    folder = tmp_path / "rewards é"
    folder.mkdir()
    (folder / "helper_width.py").write_text("def width(image):\n    return image.size[0]\n", encoding="utf-8")
    path = _reward_file(tmp_path, "# ünïcode comment\nfrom helper_width import width\n\n"
                                  "def reward(images, prompts):\n"
                                  "    return [width(im) + len(p) for im, p in zip(images, prompts)]\n")
    total, parts = _python_rewards(path)([flat(size=(8, 4)), flat(size=(16, 4))], ["ab", "é"])
    assert parts["python"] == [10.0, 17.0]
    assert total == [15.0, 25.5]


def test_two_reward_files_with_the_same_name_do_not_clash(tmp_path):
    first = _reward_file(tmp_path / "a", "def reward(images, prompts):\n    return [1] * len(images)\n", "r.py")
    second = _reward_file(tmp_path / "b", "def reward(images, prompts):\n    return [2] * len(images)\n", "r.py")
    one, two = _python_rewards(first), _python_rewards(second)
    assert one([flat()], [""])[1]["python"] == [1.0]
    assert two([flat()], [""])[1]["python"] == [2.0]


def test_a_file_without_reward_names_the_file(tmp_path):
    path = _reward_file(tmp_path, "def score(images, prompts):\n    return []\n")
    with raises_user_error("rl.reward_file", str(path), "reward(images, prompts)"):
        _python_rewards(path)


def test_a_file_that_fails_to_import_shows_the_line(tmp_path):
    path = _reward_file(tmp_path, "import math\n\nvalue = 1 / 0\n")
    with raises_user_error("rl.reward_file", str(path), "line 3", "1 / 0", "ZeroDivisionError"):
        _python_rewards(path)
    broken = _reward_file(tmp_path, "def reward(images, prompts)\n    return []\n", "broken.py")
    with raises_user_error(str(broken), "line 1", "SyntaxError"):
        _python_rewards(broken)


def test_an_error_inside_reward_shows_the_line(tmp_path):
    path = _reward_file(tmp_path, "def reward(images, prompts):\n    return [images[5]]\n")
    with raises_user_error("rl.reward_file", str(path), "line 2", "IndexError"):
        _python_rewards(path)([flat()], [""])


def test_an_absent_reward_file_names_the_key(tmp_path):
    with raises_user_error("rl.reward_file", "empty"):
        RewardSet.from_config(rl_config(rewards={"python": 1.0}))
    with raises_user_error("rl.reward_file", "does not exist"):
        _python_rewards(tmp_path / "nope.py")


@pytest.mark.parametrize("returned, fragment", [
    ("[1.0]", "1 score for 2 images"),
    ("[1.0, float('nan')]", "finite"),
    ("[1.0, 'good']", "not a number"),
    ("{'a': 1}", "not a list"),
])
def test_bad_scores_name_the_reward_and_its_file(tmp_path, returned, fragment):
    path = _reward_file(tmp_path, f"def reward(images, prompts):\n    return {returned}\n")
    with raises_user_error("python reward", str(path), fragment):
        _python_rewards(path)([flat(), flat()], ["", ""])


# ---------------------------------------------------------------------------------------------- reward server

def test_the_server_reward_matches_the_servers_scores(reward_server, monkeypatch):
    # a system proxy must not take the request for 127.0.0.1 (port 9: nothing listens there)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    srv = reward_server()
    images = [flat(0), flat(255), noisy(3)]
    rewards = RewardSet.from_config(rl_config(rewards={"server": 1.0}, reward_server_url=srv.url))
    _, parts = rewards(images, ["a", "b", "ünï"])
    assert parts["server"] == pytest.approx(builtin.brightness(images, [""] * 3))


def test_a_bare_list_answer_is_accepted(reward_server):
    srv = reward_server(answer="[0.25]")
    assert server.ServerReward(srv.url, 5.0, 1)([flat()], [""]) == [0.25]


def test_a_500_is_retried_after_a_backoff(reward_server):
    srv = reward_server(statuses=[500, 503])
    sleeps = []
    scores = server.ServerReward(srv.url, 5.0, 3, sleep=sleeps.append)([flat(255)], [""])
    assert scores == [pytest.approx(1.0)]
    assert sleeps == [1.0, 2.0] and srv.requests == 3


def test_the_backoff_is_capped_at_5_s():
    assert [server.backoff_s(n) for n in (1, 2, 5, 9)] == [1.0, 2.0, 5.0, 5.0]


def test_a_server_that_is_down_raises_reward_server_down(reward_server):
    srv = reward_server()
    srv.close()
    sleeps = []
    with pytest.raises(RewardServerDown) as info:
        server.ServerReward(srv.url, 2.0, 3, sleep=sleeps.append)([flat()], [""])
    assert info.value.url == srv.url
    assert srv.url in str(info.value) and "3 tries" in str(info.value)
    assert sleeps == [1.0, 2.0]
    rewards = RewardSet.from_config(rl_config(rewards={"server": 1.0}, reward_server_url=srv.url,
                                              reward_server_retries=1))
    with pytest.raises(RewardServerDown, match="after 1 try"):
        rewards([flat()], [""])


def test_a_400_is_a_user_error_with_the_servers_words(reward_server):
    srv = reward_server(statuses=[400], error_text="prompts must be English" + "!" * 500)
    with raises_user_error(srv.url, "HTTP 400", "prompts must be English") as info:
        server.ServerReward(srv.url, 5.0, 3, sleep=lambda s: pytest.fail("a 400 is not retried"))([flat()], [""])
    assert "!" * 201 not in info.value.message


def test_an_answer_without_scores_is_a_user_error(reward_server):
    srv = reward_server(answer='{"error": "model not loaded"}')
    with raises_user_error(srv.url, "model not loaded"):
        server.ServerReward(srv.url, 5.0, 1)([flat()], [""])


def test_the_wrong_number_of_server_scores_names_the_url(reward_server):
    srv = reward_server(answer="[1.0, 2.0]")
    rewards = RewardSet.from_config(rl_config(rewards={"server": 1.0}, reward_server_url=srv.url))
    with raises_user_error("server reward", srv.url, "2 scores for 1 image"):
        rewards([flat()], [""])


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/reward", "127.0.0.1:8765", "http://"])
def test_a_server_url_that_is_not_http_names_the_key(url):
    with raises_user_error("rl.reward_server_url", url):
        RewardSet.from_config(rl_config(rewards={"server": 1.0}, reward_server_url=url))
