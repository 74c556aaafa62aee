"""training.mode rl: the RL phase after the supervised warmup (engine/rl/mode.py makes it a Phase of the RL mode).

    outcome = train_rl(r, loop)     # 'done' | 'stopped'; loop: the loop's functions (engine/training/modes/phase.py)

An RL epoch (the RL guide's GRPO / NFT 流程):
 1. rollouts: rl.num_batches_per_epoch batches of training.batch_size prompts x rl.num_images_per_prompt images,
    sampled with the current (raw, not EMA) weights, every step recorded (engine/rl/rollout.py);
 2. rewards for the decoded images (engine/rl/rewards/), advantages against each prompt's history or the epoch's
    (engine/rl/advantages.py); an `rl` event with their statistics;
 3. rl.num_inner_epochs passes over the images in minibatches of training.batch_size, each image training a random
    rl.timestep_fraction of its steps; grad_accum minibatches make one optimizer step, each a `step` event with
    the RL figures (reward, advantage, KL, clip fraction) beside the loss;
 4. NFT: the old model follows the current one (rl.decay_type).
Checkpoints, samples (scored by the rewards), stop and save requests work as in every run: at the steps' boundary.
A reward server that does not answer pauses the run (a warning) until it answers again or the run is stopped.
With a LoRA the old and the reference model are weight states, not models: the reference is the base with the
adapter switched off (no memory), the NFT old model one more copy of the adapter's weights.
"""
from __future__ import annotations

import math
import time

import torch

from engine.failures import UserError
from engine.rl.advantages import PromptStats, epoch_advantages
from engine.rl.losses import grpo_loss, nft_loss, nft_r, old_model_decay
from engine.rl.policy import Policy, time_grid
from engine.rl.rollout import RolloutBatch, decode, roll_out
from engine.rl.steps import gaussian_log_prob
from engine.rl.weights import WeightState, reference_weights
from engine.training.modes.phase import Loop
from engine.training.placement import whole_model_on_device
from engine.training.run_state import freeze_finished_components

STOP_POLL_S = 0.5


def train_rl(r, loop: Loop) -> str:
    """RL epochs from r.step until training.max_steps (after the warmup, the denoiser's phase: rl.warmup_steps)."""
    return RlTrainer(r, loop).run()


class RlTrainer:
    def __init__(self, r, loop: Loop):
        from engine.rl.rewards import RewardSet

        self.r, self.loop, self.rl = r, loop, r.preset.rl
        rl = self.rl
        if r.step == r.main_steps and r.main_steps:
            r.status("training", f"Warmup done: RL ({rl.method.upper()}) from step {r.step} to {r.total_steps}")
        else:
            r.status("training", f"RL ({rl.method.upper()}) from step {r.step} to {r.total_steps}")
        self.rewards = RewardSet.from_config(rl, device=r.device)
        self.prompts = rl_prompts(r)
        self.policy = Policy.of(r, rl)
        self.cond_cache: dict[str, dict] = {}
        self.policy.uncond = self.encode([r.preset.sampling.negative_prompt])
        self.tracker = PromptStats(rl.stat_buffer_size, rl.stat_min_count) if rl.per_prompt_stat_tracking else None
        self.old = WeightState(r.params) if rl.method == "nft" else None  # the old model: the weights RL starts from
        self.reference = reference_weights(r) if rl.kl_beta > 0 else None
        self.epoch = 0
        state = r.phase_state.get("rl")
        if state:  # a resumed run: its statistics and old model go on; the interrupted epoch rolls out afresh
            self.epoch = state["epoch"]
            if self.tracker is not None and state.get("tracker"):
                self.tracker.load_state_dict(state["tracker"])
            if self.old is not None and state.get("old"):
                self.old.load_state_dict(state["old"])
        r.phase_state["rl"] = self  # what the resume state saves (state_dict below)
        network = r.preset.network
        if network.train_text_encoder:
            r.emit("warning", message="RL trains the denoiser only: the text encoder's LoRA keeps the weights of the "
                                      "warmup (network.train_text_encoder).")
        if rl.method == "grpo" and network.type == "lora" and network.dropout > 0:
            r.emit("warning", message=f"network.dropout {network.dropout:g}: the rollouts run without dropout and "
                                      f"the training steps with it, so GRPO's probability ratios start off 1 and "
                                      f"clip sooner. 0 is usual for RL.")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "tracker": self.tracker.state_dict() if self.tracker else None,
                "old": self.old.state_dict() if self.old else None}

    # ------------------------------------------------------------------------------------------------ the epochs

    def run(self) -> str:
        r = self.r
        while r.step < r.total_steps:
            started = time.perf_counter()
            batches = self.collect()
            if batches is None:  # stopped while the reward server was away
                self.loop.save_checkpoint(r)
                r.emit("stopped", step=r.step)
                return "stopped"
            if self.train(batches, rollout_s=time.perf_counter() - started) == "stop":
                return "stopped"
            if self.old is not None:
                # DiffusionNFT's schedule counts RL steps, not the warmup's
                self.old.follow(r.params, old_model_decay(r.step - r.main_steps, self.rl.decay_type))
            self.epoch += 1
        return "done"

    def collect(self) -> list[RolloutBatch] | None:
        """This epoch's rollouts with their rewards and advantages; None when the run was stopped meanwhile."""
        r, rl = self.r, self.rl
        n = rl.num_batches_per_epoch
        batches = []
        for k in range(n):
            r.status("rollout", f"RL epoch {self.epoch + 1}: rolling out batch {k + 1}/{n}", n=k, total=n)
            batch = self.roll_out_batch(k)
            scores = self.score(batch.images, batch.prompts)
            if scores is None:
                return None
            batch.rewards, batch.parts = torch.tensor(scores[0], dtype=torch.float32), scores[1]
            batches.append(batch)
        rewards = torch.cat([b.rewards for b in batches])
        prompts = [p for b in batches for p in b.prompts]
        advantages = self.tracker.advantages(prompts, rewards) if self.tracker else epoch_advantages(rewards)
        start = 0
        for b in batches:
            b.advantages = advantages[start:start + len(b.prompts)].to(r.device)
            start += len(b.prompts)
        self.report_epoch(batches, prompts, rewards, advantages)
        return batches

    def roll_out_batch(self, k: int) -> RolloutBatch:
        """Rollout batch k of this epoch: its prompts drawn from the run's seed, epoch and k."""
        r, rl = self.r, self.rl
        g = torch.Generator().manual_seed(r.preset.training.seed + 100_003 * self.epoch + k)
        chosen = [self.prompts[int(i)] for i in torch.randint(len(self.prompts), (r.preset.training.batch_size,),
                                                              generator=g)]
        prompts = [p for p in chosen for _ in range(rl.num_images_per_prompt)]
        cond = self.encode(prompts)
        size = r.preset.dataset.resolution_px
        shape = latent_shape(r.family, r.comps, size)
        size_cond = torch.tensor([[size, size, 0, 0, size, size]] * len(prompts), device=r.device,
                                 dtype=torch.float32)
        grid = time_grid(r.objective, r.family.caps, rl.num_inference_steps, r.family.caps.image_tokens(shape),
                         r.device)
        noise = torch.randn((len(prompts), *shape), generator=r.noise_gen, device=r.device)
        was_training = r.comps.denoiser.training
        r.comps.denoiser.eval()  # the LoRA's dropout off: the recorded log-probabilities are the policy's own
        try:
            with r.accelerator.autocast():
                batch = roll_out(self.policy, prompts, cond, size_cond, noise, grid, r.noise_gen,
                                 stochastic=rl.method == "grpo")
            with whole_model_on_device(r, text_encoders=False):
                batch.images = decode(r.family, r.comps, batch.latents[:, -1])
        finally:
            r.comps.denoiser.train(was_training)
        return batch

    def encode(self, prompts: list[str]) -> dict:
        """The prompts' cond on the device, each prompt encoded once per run (kept in CPU RAM)."""
        r = self.r
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cond_cache]
        if missing:
            with torch.no_grad():
                cond = r.batches.encode_text(missing)
            for i, p in enumerate(missing):
                self.cond_cache[p] = {k: v[i:i + 1].detach().cpu() for k, v in cond.items()}
        return {k: torch.cat([self.cond_cache[p][k] for p in prompts]).to(r.device)
                for k in self.cond_cache[prompts[0]]}

    def score(self, images, prompts):
        """(totals, parts) from the rewards; a reward server that is down pauses here until it answers."""
        from engine.rl.rewards import RewardServerDown

        r, paused = self.r, False
        while True:
            try:
                scores = self.rewards(images, prompts)
                if paused:
                    r.status("rollout", "The reward server answers again: RL goes on")
                return scores
            except RewardServerDown as e:
                wait = min(30.0, self.rl.reward_server_timeout_s)
                if not paused:
                    r.emit("warning", message=f"{e} The run is paused and asks again every {wait:.0f} s.",
                           hint=f"Start the reward server (rl.reward_server_url: {e.url}), or stop the run: its "
                                f"last checkpoint is kept.")
                    r.status("paused", f"Waiting for the reward server at {e.url}")
                    paused = True
                if self.stop_requested(wait):
                    return None

    def stop_requested(self, seconds: float) -> bool:
        """Waits up to `seconds`, True as soon as control/stop appears (it is taken)."""
        stop = self.r.run_dir / "control" / "stop"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if stop.exists():
                stop.unlink(missing_ok=True)
                return True
            time.sleep(STOP_POLL_S)
        return False

    # ------------------------------------------------------------------------------------------------ training

    def train(self, batches: list[RolloutBatch], rollout_s: float) -> str | None:
        """num_inner_epochs passes over the epoch's images; 'stop' when a stop was asked for."""
        r, rl, training = self.r, self.rl, self.r.preset.training
        images = [(b, i) for b in batches for i in range(len(b.prompts))]
        per_step = training.batch_size * training.grad_accum
        steps_here = min(rl.num_inner_epochs * math.ceil(len(images) / per_step), r.total_steps - r.step)
        share = rollout_s / max(steps_here, 1)  # each step's share of the rollout time, for an honest ETA
        g = torch.Generator().manual_seed(training.seed + 7919 * self.epoch)
        for _ in range(rl.num_inner_epochs):
            order = [images[int(i)] for i in torch.randperm(len(images), generator=g)]
            for start in range(0, len(order), per_step):
                if r.step >= r.total_steps:
                    return None
                began = time.perf_counter()
                group = order[start:start + per_step]
                loss = self.optimizer_step([group[k:k + training.batch_size]
                                            for k in range(0, len(group), training.batch_size)], g)
                r.step += 1
                self.loop.report_step(r, loss, time.perf_counter() - began + share)
                if self.loop.at_boundary(r, epoch_ended=False) == "stop":
                    return "stop"
        return None

    def optimizer_step(self, minibatches: list, g: torch.Generator) -> float:
        r, rl = self.r, self.rl
        terms_sum: dict[str, torch.Tensor] = {}
        losses = []
        for minibatch in minibatches:
            steps = len(minibatch[0][0].grid) - 1
            trained = max(1, int(steps * rl.timestep_fraction))
            perms = torch.stack([torch.randperm(steps, generator=g) for _ in minibatch])[:, :trained]
            for k in range(trained):
                with r.accelerator.autocast():
                    terms = self.loss_terms(minibatch, perms[:, k])
                r.accelerator.backward(terms["loss"] / (trained * len(minibatches)))
                losses.append(terms["loss"].detach())
                for name, value in terms.items():
                    terms_sum[name] = terms_sum.get(name, 0) + value.detach() / (trained * len(minibatches))
        mean = torch.stack(losses).float().mean().item()  # the step's one host sync
        if not math.isfinite(mean):  # before the optimizer step: the weights keep their last values
            raise UserError(f"The RL loss became {mean} at step {r.step + 1}, so the weights were not updated; the "
                            f"run's last checkpoint is kept.",
                            "Lower optimizers.unet.lr, rl.adv_clip_max or the reward weights (rl.rewards), or raise "
                            "rl.kl_beta, and resume from the last checkpoint.")
        if r.preset.training.clip_grad_norm > 0:
            r.accelerator.clip_grad_norm_(r.params, r.preset.training.clip_grad_norm)
        r.optim.step(mean)
        r.optim.zero_grad()
        if r.ema is not None:
            r.ema.update(r.step + 1)
        freeze_finished_components(r)
        terms_sum.pop("loss", None)
        r.step_extras = {**terms_sum, **self.epoch_figures}
        return mean

    def loss_terms(self, minibatch: list, js: torch.Tensor) -> dict:
        """The method's loss terms for the images of `minibatch` ((batch, index) pairs) at their steps `js`."""
        r, rl, policy = self.r, self.rl, self.policy
        cond = {k: torch.cat([b.cond[k][i:i + 1] for b, i in minibatch]) for k in minibatch[0][0].cond}
        size_cond = torch.cat([b.size_cond[i:i + 1] for b, i in minibatch])
        advantages = torch.stack([b.advantages[i] for b, i in minibatch])
        grid = minibatch[0][0].grid
        t, t_prev, t_max = grid[js], grid[js + 1], float(grid[1])
        if rl.method == "grpo":
            x = torch.stack([b.latents[i, j] for (b, i), j in zip(minibatch, js.tolist())])
            x_next = torch.stack([b.latents[i, j + 1] for (b, i), j in zip(minibatch, js.tolist())])
            old_log_prob = torch.stack([b.log_probs[i, j] for (b, i), j in zip(minibatch, js.tolist())])
            mean_ref = None
            if self.reference is not None:  # before the forward with gradients: it may swap weights in place
                with torch.no_grad(), self.reference():
                    mean_ref, _ = policy.step(x, policy.predict(x, t, cond, size_cond), t, t_prev, t_max)
            mean, std = policy.step(x, policy.predict(x, t, cond, size_cond), t, t_prev, t_max)
            log_prob = gaussian_log_prob(x_next, mean, std)
            return grpo_loss(log_prob, old_log_prob, advantages, rl.clip_range, rl.adv_clip_max, rl.kl_beta,
                             mean, mean_ref, std)
        x0 = torch.stack([b.latents[i, -1] for b, i in minibatch])
        noise = torch.randn(x0.shape, generator=r.noise_gen, device=x0.device)
        x_t = r.objective.add_noise(x0, noise, t)
        with torch.no_grad():
            with self.old.swapped_in(r.params):
                old_pred = policy.predict(x_t, t, cond, size_cond, guided=False)
            ref_pred = None
            if self.reference is not None:
                with self.reference():
                    ref_pred = policy.predict(x_t, t, cond, size_cond, guided=False)
        pred = policy.predict(x_t, t, cond, size_cond, guided=False)
        return nft_loss(pred, old_pred, x_t, x0, lambda x, p: policy.x0(x, p, t),
                        nft_r(advantages, rl.adv_mode, rl.adv_clip_max), rl.nft_beta, rl.kl_beta, ref_pred)

    # ------------------------------------------------------------------------------------------------ monitoring

    def report_epoch(self, batches, prompts, rewards, advantages) -> None:
        per_prompt: dict[str, list[float]] = {}
        for p, v in zip(prompts, rewards.tolist()):
            per_prompt.setdefault(p, []).append(v)
        parts = {name: sum(sum(b.parts[name]) for b in batches) / len(prompts) for name in batches[0].parts}
        std = rewards.std(unbiased=False).item()
        self.epoch_figures = {"reward_mean": rewards.mean(), "reward_std": torch.tensor(std),
                              "adv_abs_mean": advantages.abs().mean()}
        self.r.emit("rl", rl_epoch=self.epoch + 1, step=self.r.step, images=len(prompts),
                    reward_mean=round(rewards.mean().item(), 6), reward_std=round(std, 6),
                    reward_min=round(rewards.min().item(), 6), reward_max=round(rewards.max().item(), 6),
                    rewards={k: round(v, 6) for k, v in parts.items()},
                    per_prompt={p: {"mean": round(sum(v) / len(v), 6), "std": round(float(torch.tensor(v).std(
                        unbiased=False)), 6), "n": len(v)} for p, v in per_prompt.items()},
                    adv_mean=round(advantages.mean().item(), 6), adv_std=round(advantages.std(unbiased=False).item(),
                                                                                6))

    def score_samples(self, results: list[dict]) -> None:
        """The rewards of the run's sample images, added to their `sample` events (a server that is down: none)."""
        from PIL import Image

        from engine.rl.rewards import RewardServerDown

        if not results:
            return
        images = []
        for result in results:
            with Image.open(result["path"]) as image:
                images.append(image.convert("RGB"))
        try:
            totals, _ = self.rewards(images, [result["prompt"] for result in results])
        except RewardServerDown:
            return
        for result, value in zip(results, totals):
            result["reward"] = round(float(value), 6)


def latent_shape(family, comps, size_px: int) -> tuple[int, int, int]:
    """(channels, h, w) the denoiser samples in: the VAE's latents (8x smaller sides), or the DiT's own space."""
    if not family.caps.base_model:
        down = comps.extra.get("downscale", 1)
        return comps.denoiser.config.in_channels, size_px // down, size_px // down
    vae = comps.vae.config
    down = 2 ** (len(vae.block_out_channels) - 1)
    return vae.latent_channels, size_px // down, size_px // down


def rl_prompts(r) -> list[str]:
    """rl.prompts_file's prompts, else the dataset's captions (each once)."""
    from engine.sampling.prompts import read_prompts_file

    rl = r.preset.rl
    if rl.prompts_file:
        prompts = read_prompts_file(rl.prompts_file, key="rl.prompts_file")
        if not prompts:
            raise UserError(f"rl.prompts_file: {rl.prompts_file} has no prompts.", "Write one prompt per line.")
        return prompts
    prompts = list(dict.fromkeys(s.caption for s in (r.dataset_samples or r.samples) if s.caption))
    if not prompts:
        raise UserError("training.mode rl needs prompts: rl.prompts_file is empty and the dataset has no captions.",
                        "Set rl.prompts_file to a text file with one prompt per line, or caption the dataset.")
    return prompts

