"""RL fine-tuning (empty until its issue): rollouts with log-probabilities, rewards (functions, model scores, a
reward server), the GRPO and DiffusionNFT losses.

May import: training, sampling, models, data, config, the helpers.
"""
