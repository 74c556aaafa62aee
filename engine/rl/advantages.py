"""Advantages: how much better than expected each image's reward is.

    tracker = PromptStats(buffer_size, min_count)          # rl.per_prompt_stat_tracking on
    advantages = tracker.advantages(prompts, rewards)
    advantages = epoch_advantages(rewards)                  # off: against the whole epoch's mean and std

Per prompt (DDPO's PerPromptStatTracker, kvablack/ddpo-pytorch stat_tracking.py): each prompt keeps its last
buffer_size rewards across epochs; a reward is normalised by its own prompt's mean and std once the prompt has
min_count of them, by the epoch's before that. So a prompt that always scores high does not drown the others.
"""
from __future__ import annotations

from collections import deque

import torch

EPS = 1e-6


def epoch_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """(r - mean) / std over the epoch; zeros when every reward is the same (nothing to learn from)."""
    rewards = rewards.double()
    return ((rewards - rewards.mean()) / (rewards.std(unbiased=False) + EPS)).float()


class PromptStats:
    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        self.buffer_size, self.min_count = buffer_size, min_count
        self.history: dict[str, deque] = {}

    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        values = rewards.double().cpu()
        out = torch.zeros_like(values)
        everyone_mean, everyone_std = values.mean(), values.std(unbiased=False) + EPS
        for prompt in dict.fromkeys(prompts):
            mine = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            seen = self.history.setdefault(prompt, deque(maxlen=self.buffer_size))
            seen.extend(values[mine].tolist())
            if len(seen) < self.min_count:
                mean, std = everyone_mean, everyone_std
            else:
                past = torch.tensor(list(seen), dtype=torch.float64)
                mean, std = past.mean(), past.std(unbiased=False) + EPS
            out[mine] = (values[mine] - mean) / std
        return out.float().to(rewards.device)

    def prompt_means(self) -> dict[str, float]:
        """Each prompt's mean reward over its history (for the monitoring)."""
        return {p: sum(v) / len(v) for p, v in self.history.items() if v}

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "history": {p: list(v) for p, v in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history = {p: deque(v, maxlen=self.buffer_size) for p, v in state.get("history", {}).items()}
