"""RL fine-tuning (training.mode rl; the RL guide): GRPO and DiffusionNFT on a LoRA or a full fine-tune.

    mode.py       the RL mode: the denoiser's set-up with RL's steps, the supervised warmup, then the RL phase
    phase.py      the RL phase after the supervised warmup: rollouts, rewards, advantages, the training steps
    policy.py     the model's guided prediction and the sampler step built on it; rollout.py records rollouts
    steps.py      DDIM (eta > 0) and Flow-GRPO's SDE: stochastic steps with known log-probabilities
    losses.py     GRPO's clipped objective, DiffusionNFT's loss, the old model's decay
    advantages.py per-prompt (or per-epoch) reward statistics; weights.py the old and reference models
    rewards/      the reward registry: JPEG, brightness, CLIP score, aesthetic, a Python file, a reward server

May import: training, sampling, models, data, config, the helpers.
"""
