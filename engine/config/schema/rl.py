"""rl: training.mode rl's section (GRPO or DiffusionNFT against rewards; the RL guide's defaults and ranges)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.config.schema.choices import NFT_ADV_MODES, RL_METHODS
from engine.config.schema.field_meta import opt


@dataclass(frozen=True)
class RlConfig:
    """training.mode rl: fine-tune the denoiser (its LoRA, or all of it) against a reward, with GRPO or DiffusionNFT
    (the RL guide). Defaults are the guide's; the help gives its recommended range."""
    method: str = opt("grpo", "grpo: PPO-style policy gradient on the sampler's log-probabilities (fast, low memory). "
                              "nft: DiffusionNFT, positive and implicit negative predictions against an old model "
                              "(steadier, one more forward).", choices=RL_METHODS)
    warmup_steps: int = opt(1000, "Supervised steps on the dataset before RL starts (0: RL from the first step; "
                                  "then no dataset is needed). Recommended 500-1000.", unit="steps", min=0,
                            max=10_000_000)
    num_images_per_prompt: int = opt(1, "Images per prompt in one rollout (the group its advantages are relative "
                                        "to). Recommended 4-8.", min=1, max=256)
    num_batches_per_epoch: int = opt(1, "Rollout batches per RL epoch; a batch is training.batch_size prompts x "
                                        "num_images_per_prompt images. Recommended 1-2.", min=1, max=100_000)
    num_inference_steps: int = opt(50, "Sampler steps of a rollout. Recommended 30-50.", unit="steps", min=2,
                                   max=1000)
    guidance_scale: float = opt(3.5, "Classifier-free guidance of the rollouts (FLUX dev: its distilled guidance). "
                                     "Recommended 3.0-4.0.", min=0.0, max=50.0)
    timestep_fraction: float = opt(1.0, "Share of each rollout's steps that train (drawn at random per image). "
                                        "Recommended 0.8-1.0.", min=0.01, max=1.0)
    num_inner_epochs: int = opt(1, "Passes of training over each epoch's rollouts. Recommended 1-3.", min=1,
                                max=100)
    adv_clip_max: float = opt(5.0, "Advantages are clipped to +-this. Recommended 3-10.", min=0.01, max=1000.0)
    per_prompt_stat_tracking: bool = opt(False, "Normalise each reward by its own prompt's history (mean and std), "
                                                "not the whole epoch's (recommended: on).")
    stat_buffer_size: int = opt(32, "Per-prompt statistics: rewards kept per prompt (DDPO's buffer).", min=1,
                                max=100_000, advanced=True)
    stat_min_count: int = opt(16, "Per-prompt statistics: below this many rewards a prompt uses the epoch's "
                                  "statistics.", min=1, max=100_000, advanced=True)
    clip_range: float = opt(0.2, "GRPO: the probability ratio is clipped to 1 +- this. Recommended 0.1-0.3.",
                            min=0.0, max=10.0)
    kl_beta: float = opt(0.1, "Weight of the KL term to the reference (the model without its LoRA). GRPO: default "
                              "0.1, recommended 0.05-0.2; NFT: the guide's 0.01, recommended 0.005-0.02.", min=0.0,
                         max=100.0)
    nft_beta: float = opt(0.5, "NFT: mix of the current model in the positive prediction (0.3-0.5 leans on the old "
                               "model: steadier; 0.7-0.9 on the current one: faster). Recommended 0.3-0.7.",
                          min=0.01, max=1.0)
    adv_mode: str = opt("normal", "NFT: how advantages become the positive weight r: normal, positive_only, "
                                  "negative_only, one_only (r is 0 or 1), binary (the advantage's sign).",
                        choices=NFT_ADV_MODES)
    decay_type: int = opt(0, "NFT: how the old model follows the current one after each RL epoch: 0 fixed (the "
                             "model RL started from); 1 slow (kept share rises 0.001 per step to 0.5, "
                             "recommended); 2 fast (copied for 75 steps, then the kept share rises 0.0075 per step "
                             "to 0.999).", min=0, max=2)
    ddim_eta: float = opt(1.0, "GRPO on SD models: DDIM's eta in the rollouts (must be > 0: the randomness is "
                               "what the policy gradient learns from; 1 as DDPO).", min=0.01, max=1.0,
                          advanced=True)
    sde_noise_level: float = opt(0.7, "GRPO on flow models: the noise of Flow-GRPO's SDE sampler (0.7 as "
                                      "Flow-GRPO).", min=0.01, max=2.0, advanced=True)
    prompts_file: str = opt("", "Prompts to roll out, one per line (# for comments); empty: the dataset's captions.")
    rewards: dict = opt({"jpeg_compressibility": 1.0}, "Rewards and their weights, summed: jpeg_compressibility, "
                                                       "jpeg_incompressibility, brightness, clip_score, aesthetic, "
                                                       "python (rl.reward_file), server (rl.reward_server_url).")
    clip_model_path: str = opt("", "clip_score and aesthetic: a CLIP model folder (transformers layout, e.g. "
                                   "clip-vit-large-patch14).")
    aesthetic_model_path: str = opt("", "aesthetic: the LAION aesthetic predictor's weights (e.g. "
                                        "sac+logos+ava1-l14-linearMSE.pth), on clip_model_path's ViT-L/14.")
    reward_file: str = opt("", "python: a .py file defining reward(images, prompts) -> list of floats (images are "
                               "PIL images).")
    reward_server_url: str = opt("http://127.0.0.1:8765/reward", "server: where the reward server listens. It gets "
                                 "a POST of JSON {images: [base64 PNG], prompts: [...]} and answers {scores: [...]}.")
    reward_server_timeout_s: float = opt(60.0, "server: seconds to wait for an answer.", unit="s", min=0.1,
                                         max=3600.0, advanced=True)
    reward_server_retries: int = opt(3, "server: tries before the run pauses and waits for the server.", min=1,
                                     max=100, advanced=True)
