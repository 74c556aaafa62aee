"""The model as an RL policy: its guided prediction at (x_t, t) for a batch of prompts, and the Gaussian step of the
rollout sampler built on it (engine/rl/steps.py).

    policy = Policy.of(r)                       # from a training Run (engine/training/run_state.py)
    pred = policy.predict(x, t, cond)           # classifier-free guided when rl.guidance_scale > 1 (SD families)
    mean, std = policy.step(x, pred, t, t_prev) # DDIM (DDPM objectives) or Flow-GRPO's SDE (flow objectives)
    x0 = policy.x0(x, pred, t)                  # the clean image the prediction implies

One convention for every family: t in [0, 1] is the noise level, the family's predict turns it into the model's
own timestep (as in training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch



def x0_and_eps(objective, x, pred, t):
    """(x0, eps) that the prediction implies at x = a x0 + s eps, for every objective Easel trains."""
    a, s = (v.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) for v in objective.alpha_sigma(t))
    if objective.name == "epsilon":
        return (x - s * pred) / a, pred
    if objective.name == "v_prediction":  # v = a eps - s x0, with a^2 + s^2 = 1
        return a * x - s * pred, s * x + a * pred
    if objective.name == "sample":
        return pred, (x - a * pred) / s
    # flow on the straight path: x = (1 - t) x0 + t eps, v = eps - x0
    return x - s * pred, x + a * pred


@dataclass
class Policy:
    family: object
    comps: object
    objective: object
    guidance_scale: float
    kind: str                 # "ddim" | "flow_sde"
    eta: float                # DDIM's eta (ddim)
    noise_level: float        # Flow-GRPO's SDE noise (flow_sde)
    dtype: torch.dtype
    uncond: dict | None = None  # the empty prompt's cond (one row), for classifier-free guidance

    @classmethod
    def of(cls, r, rl) -> "Policy":
        kind = "flow_sde" if r.objective.name == "flow" else "ddim"
        return cls(r.family, r.comps, r.objective, rl.guidance_scale, kind, rl.ddim_eta, rl.sde_noise_level,
                   r.weight_dtype)

    @property
    def guided(self) -> bool:
        # classifier-free guidance is a second, unconditional pass; FLUX dev has its guidance distilled into an
        # input (comps.extra["guidance_scale"]), and the DiT has no text (Capabilities.guidance)
        return self.family.caps.guidance == "cfg" and self.guidance_scale > 1.0

    def predict(self, x, t, cond: dict, size_cond=None, guided: bool | None = None):
        """The model's prediction in fp32; guided (default: self.guided) adds the unconditional pass."""
        guided = self.guided if guided is None else guided
        extra = self.comps.extra
        if "guidance_scale" in extra:  # FLUX dev's distilled guidance: the rollouts', then training's back
            trained_with, extra["guidance_scale"] = extra["guidance_scale"], self.guidance_scale
            try:
                return self._predict(x, t, cond, size_cond, guided)
            finally:
                extra["guidance_scale"] = trained_with
        return self._predict(x, t, cond, size_cond, guided)

    def _predict(self, x, t, cond, size_cond, guided: bool):
        if not guided:
            return self.family.predict(self.comps, x.to(self.dtype), t, cond, size_cond).float()
        n = len(x)
        uncond = {k: v.expand(n, *v.shape[1:]) for k, v in self.uncond.items()}
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        sizes = None if size_cond is None else torch.cat([size_cond, size_cond])
        out = self.family.predict(self.comps, torch.cat([x, x]).to(self.dtype), torch.cat([t, t]), both, sizes)
        u, c = out.float().chunk(2)
        return u + self.guidance_scale * (c - u)

    def x0(self, x, pred, t):
        return x0_and_eps(self.objective, x, pred, t)[0]

    def step(self, x, pred, t, t_prev, t_max: float = 1.0):
        """(mean, std) of the stochastic step from noise level t to t_prev ([B] each)."""
        from engine.rl.steps import ddim_step, flow_sde_step

        if self.kind == "flow_sde":
            return flow_sde_step(x, pred, t, t_prev, t_max, self.noise_level)
        x0, eps = x0_and_eps(self.objective, x, pred, t)
        a_t, s_t = self.objective.alpha_sigma(t)
        a_prev, s_prev = self.objective.alpha_sigma(t_prev)
        return ddim_step(x0, eps, a_t, s_t, a_prev, s_prev, self.eta)


def time_grid(objective, caps, steps: int, image_tokens: int, device) -> torch.Tensor:
    """[steps + 1] noise levels from 1 to 0 the rollout visits: DDPM models on their integer grid (t = k / (N - 1),
    trailing spacing, ending at k = 0 as DDPO's), flow models linear in t (shifted for the image size where the
    family's sampler does it: caps.size_shift, FLUX as FluxPipeline samples)."""
    if objective.name == "flow":
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        if caps.size_shift:
            from engine.training.objectives import flux_shift_of, shift_t

            grid = shift_t(grid, flux_shift_of(image_tokens))
        return grid.float().to(device)
    n = objective.num_steps
    ks = torch.round(torch.linspace(n - 1, 0, steps + 1, dtype=torch.float64))
    return (ks / (n - 1)).float().to(device)
