"""The rewards RL trains against, and RewardSet, which scores a batch with the preset's weighted sum of them.

    rewards = RewardSet.from_config(rl, device="cpu")   # UserError for any problem in rl.rewards and its keys
    total, parts = rewards(images, prompts)             # images: PIL RGB, prompts: str, one per image
    # total[i] = sum over names of weight * parts[name][i]; parts holds each reward's unweighted scores

REWARDS maps each rl.rewards name to a builder `build(rl, device, cache) -> score(images, prompts) -> scores`.
Builders run in from_config, so a broken model folder or reward file fails before any training, not after
rl.warmup_steps. `cache` is one dict per RewardSet: clip_score and aesthetic share one loaded CLIP model there.
A weight of 0 keeps a reward in `parts` (for the log) without training on it.

The modules of this package never import it back (no import cycles): the checks every reward shares (the paths its
keys name, the scores it returns) live here.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

from engine.failures import UserError
from engine.registry import suggest
from engine.rl.rewards import builtin, clip_models, python_file, server
from engine.rl.rewards.server import RewardServerDown

__all__ = ["REWARDS", "RewardSet", "RewardServerDown"]


def _fixed(score):
    """A builder for a reward that needs no settings and no model."""
    return lambda rl, device, cache: score


REWARDS = {
    "jpeg_compressibility": _fixed(builtin.jpeg_compressibility),
    "jpeg_incompressibility": _fixed(builtin.jpeg_incompressibility),
    "brightness": _fixed(builtin.brightness),
    "clip_score": clip_models.build_clip_score,
    "aesthetic": clip_models.build_aesthetic,
    "python": python_file.build,
    "server": server.build,
}

# The rl keys each reward reads; the last one is the reward's source, named in its error messages.
SETTINGS = {
    "clip_score": ("clip_model_path",),
    "aesthetic": ("clip_model_path", "aesthetic_model_path"),
    "python": ("reward_file",),
    "server": ("reward_server_url",),
}
# The keys that hold paths: what they must name ("dir" or "file"), and how to say it to the user.
PATH_KEYS = {
    "clip_model_path": ("dir", "a CLIP model folder in the transformers layout, e.g. clip-vit-large-patch14"),
    "aesthetic_model_path": ("file", "the LAION aesthetic predictor's weights, e.g. "
                                     "sac+logos+ava1-l14-linearMSE.pth"),
    "reward_file": ("file", "a .py file that defines reward(images, prompts) -> a list of floats"),
}


class RewardSet:
    """The preset's rewards, built and ready; call it on a batch. `names` keeps rl.rewards' order."""

    def __init__(self, scorers: dict, weights: dict[str, float], sources: dict[str, str]):
        self.scorers = scorers      # name -> score(images, prompts)
        self.weights = weights      # name -> weight
        self.sources = sources      # name -> " (rl.key: value)" or "", for error messages
        self.cache: dict = {}       # what the builders loaded (models), kept alive as long as the set

    @property
    def names(self) -> list[str]:
        return list(self.scorers)

    @classmethod
    def from_config(cls, rl, device="cpu") -> "RewardSet":
        """Check rl.rewards and the keys its rewards read, then build each reward (loading its models on
        `device`). Raises UserError naming the key for any problem."""
        weights = _weights(rl.rewards)
        sources = {name: _source(name, rl) for name in weights}
        for name in weights:
            for key in SETTINGS.get(name, ()):
                if key in PATH_KEYS:
                    _check_path(rl, key, name)
        reward_set = cls({}, weights, sources)
        for name in weights:
            reward_set.scorers[name] = REWARDS[name](rl, device, reward_set.cache)
        return reward_set

    def __call__(self, images: list, prompts: list[str]) -> tuple[list[float], dict[str, list[float]]]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; the rewards need one prompt per image")
        parts = {}
        for name, score in self.scorers.items():
            parts[name] = _checked_scores(score(images, prompts) if images else [], len(images), name,
                                          self.sources[name])
        total = [sum(self.weights[name] * parts[name][i] for name in parts) for i in range(len(images))]
        return total, parts


def _weights(rewards) -> dict[str, float]:
    example = "e.g. rl.rewards: {clip_score: 1.0, aesthetic: 0.5}"
    if not isinstance(rewards, dict) or not rewards:
        raise UserError(f"rl.rewards: {rewards!r} names no reward; it needs at least one reward and its weight.",
                        f"Choose from {', '.join(REWARDS)}, {example}.")
    weights = {}
    for name, weight in rewards.items():
        if name not in REWARDS:
            raise UserError(f"rl.rewards: {name!r} is not one of {', '.join(REWARDS)}{suggest(name, REWARDS)}.",
                            f"Use one of those names in rl.rewards, {example}.")
        # bool is an int to Python, but `true` as a weight is a typo, not a number
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise UserError(f"rl.rewards.{name}: the weight {weight!r} is not a number.",
                            f"Give each reward a number as its weight, {example}.")
        weights[name] = float(weight)
    return weights


def _source(name: str, rl) -> str:
    keys = SETTINGS.get(name)
    return f" (rl.{keys[-1]}: {getattr(rl, keys[-1])})" if keys else ""


def _check_path(rl, key: str, name: str) -> None:
    kind, what = PATH_KEYS[key]
    value = getattr(rl, key)
    if not str(value).strip():
        raise UserError(f"rl.rewards: {name} needs rl.{key}, {what}, but rl.{key} is empty.",
                        f"Set rl.{key} in the preset, or take {name} out of rl.rewards.")
    path = Path(value).expanduser()
    if not path.exists():
        raise UserError(f"rl.{key}: {path} does not exist (the {name} reward needs {what}).",
                        f"Check the path in rl.{key}: a relative path is taken from the folder Easel runs in "
                        f"({Path.cwd()}).")
    if kind == "dir" and not path.is_dir():
        raise UserError(f"rl.{key}: {path} is a file, not {what} (the {name} reward needs one).",
                        f"Set rl.{key} to the model's folder (the one holding config.json), not a file in it.")
    if kind == "file" and not path.is_file():
        raise UserError(f"rl.{key}: {path} is a folder, not {what} (the {name} reward needs one).",
                        f"Set rl.{key} to the file itself.")


def _checked_scores(scores, count: int, name: str, source: str) -> list[float]:
    """`scores` as floats, or a UserError naming the reward: one finite number per image is the contract."""
    if hasattr(scores, "tolist"):           # numpy arrays and torch tensors
        scores = scores.tolist()
    if not isinstance(scores, (list, tuple)):
        raise UserError(f"The {name} reward{source} returned {type(scores).__name__}, not a list of scores.",
                        "A reward returns a list with one number per image.")
    if len(scores) != count:
        raise UserError(f"The {name} reward{source} returned {_count(len(scores), 'score')} for "
                        f"{_count(count, 'image')}.",
                        "A reward returns exactly one number per image, in the order of the images.")
    for i, value in enumerate(scores):
        if not isinstance(value, numbers.Real):     # bools pass: True/False is a fair 1/0 reward
            raise UserError(f"The {name} reward{source} returned {value!r} for image {i}, which is not a number.",
                            "A reward returns a list with one number (int or float) per image.")
        if not math.isfinite(value):
            raise UserError(f"The {name} reward{source} returned {value} for image {i}; scores must be finite.",
                            "Check the reward for a division by zero or an overflow on this kind of image.")
    return [float(value) for value in scores]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
