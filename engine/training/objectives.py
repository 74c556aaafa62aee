"""Training objectives: how noise is added, what the model must predict, how noise levels are drawn.

One time convention everywhere: t in [0, 1] is the noise level (0 = the clean image, 1 = pure noise).
Each objective (Epsilon, VPrediction, Sample on a DDPM schedule; Flow; PathFlow on paths.py's paths) gives
    add_noise(x0, noise, t) -> x_t          the noisy input
    target(x0, noise, t)    -> y            what the model is trained to output at x_t
    sample_t(n, generator)  -> t [n]        the noise levels of one batch
    snr(t)                  -> [n]          signal-to-noise ratio alpha^2 / sigma^2 (for min-SNR weighting)
    min_snr_weight(t, gamma) -> [n]         the per-sample loss weight of Min-SNR-gamma (Hang et al. 2023)
Shapes: x0 and noise are [B, C, H, W]; t is [B]. Everything runs on x0's device.

The discrete-time (DDPM) objectives keep the model's 1000-step grid: sample_t returns t = k / (N - 1) for integer
k, and a family turns t back into the UNet's timestep k with `round(t * (N - 1))`, so the two never disagree.
"""
from __future__ import annotations

import math

import torch

from engine.registry import choose
from engine.training.paths import from_library, make_path


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, 1, ...] so it broadcasts against `like`."""
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def uniform_t(n: int, generator: torch.Generator, device, scale: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device)


def logit_normal_t(n: int, generator: torch.Generator, device, scale: float = 1.0) -> torch.Tensor:
    """sigmoid(scale * N(0, 1)): favours the middle noise levels (Esser et al. 2024, SD3; sd-scripts' `sigmoid`)."""
    return torch.sigmoid(scale * torch.randn(n, generator=generator, device=device))


# The draws; the flow objective shifts them further for `shift` and `flux_shift` (Flow.sample_t).
TIMESTEP_SAMPLING = {"uniform": uniform_t, "logit_normal": logit_normal_t, "sigmoid": logit_normal_t,
                     "shift": logit_normal_t, "flux_shift": logit_normal_t}
FLOW_ONLY_SAMPLING = ("shift", "flux_shift")


def shift_t(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t): s > 1 moves noise levels towards 1 (pure noise), where large images need more
    training (SD3's shift; sd-scripts' discrete_flow_shift)."""
    return shift * t / (1 + (shift - 1) * t)


def flux_shift_of(image_tokens: int, base: float = 0.5, top: float = 1.15, base_tokens: int = 256,
                  top_tokens: int = 4096) -> float:
    """FLUX's resolution-dependent shift e^mu, mu linear in the image's token count from 0.5 at 256 tokens (256 px)
    to 1.15 at 4096 (1024 px): the same mu FluxPipeline's scheduler uses when it samples (use_dynamic_shifting)."""
    mu = base + (top - base) * (image_tokens - base_tokens) / (top_tokens - base_tokens)
    return math.exp(mu)


class Epsilon:
    """DDPM epsilon prediction (SD1.x, SDXL): x_t = a_t x0 + s_t noise, target = noise.

    a_t = sqrt(alphas_cumprod[k]), s_t = sqrt(1 - alphas_cumprod[k]), k = round(t (N - 1)).
    """

    name = "epsilon"

    def __init__(self, alphas_cumprod: torch.Tensor, timestep_sampling: str = "uniform", sigmoid_scale: float = 1.0):
        if timestep_sampling in FLOW_ONLY_SAMPLING:
            raise ValueError(f"training.timestep_sampling: {timestep_sampling!r} is for flow models (objective flow)")
        self.alphas_cumprod = alphas_cumprod.double()
        self.num_steps = len(alphas_cumprod)
        self._draw = choose(TIMESTEP_SAMPLING, timestep_sampling, "training.timestep_sampling")
        self.scale = sigmoid_scale

    def index(self, t: torch.Tensor) -> torch.Tensor:
        return torch.round(t.double() * (self.num_steps - 1)).long().clamp(0, self.num_steps - 1)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acp = self.alphas_cumprod[self.index(t).cpu()].to(t.device)
        return acp.sqrt().float(), (1 - acp).sqrt().float()

    def sample_t(self, n: int, generator: torch.Generator, device="cpu", image_tokens: int = 0) -> torch.Tensor:
        k = self.index(self._draw(n, generator, device, self.scale))
        return k.float() / (self.num_steps - 1)

    def add_noise(self, x0, noise, t):
        a, s = self.alpha_sigma(t)
        return _expand(a, x0) * x0 + _expand(s, x0) * noise

    def target(self, x0, noise, t):
        return noise

    def snr(self, t):
        a, s = self.alpha_sigma(t)
        return (a / s) ** 2

    def min_snr_weight(self, t, gamma: float):
        snr = self.snr(t)
        return torch.clamp(snr, max=gamma) / snr


class VPrediction(Epsilon):
    """v-prediction (SD2-768-v; Salimans & Ho 2022): target v = a_t noise - s_t x0. Same noising as Epsilon."""

    name = "v_prediction"

    def target(self, x0, noise, t):
        a, s = self.alpha_sigma(t)
        return _expand(a, x0) * noise - _expand(s, x0) * x0

    def min_snr_weight(self, t, gamma: float):
        # The v loss is (snr + 1) times the epsilon loss, so divide by snr + 1 (Hang et al. 2023, eq. for v).
        snr = self.snr(t)
        return torch.clamp(snr, max=gamma) / (snr + 1)


class Sample(Epsilon):
    """x0 prediction (diffusers' prediction_type "sample"): target = x0. Same noising as Epsilon."""

    name = "sample"

    def target(self, x0, noise, t):
        return x0

    def min_snr_weight(self, t, gamma: float):
        # The x0 loss is 1 / snr times the epsilon loss, so Min-SNR-gamma's weight is min(snr, gamma) itself.
        return torch.clamp(self.snr(t), max=gamma)


class Flow:
    """Rectified flow / flow matching (FLUX; Liu et al. 2022, Lipman et al. 2023):
    x_t = (1 - t) x0 + t noise, target = noise - x0 (the velocity of the straight path).

    Noise levels (training.timestep_sampling): uniform; sigmoid / logit_normal = sigmoid(scale N(0, 1)); shift =
    that, shifted by discrete_flow_shift; flux_shift = that, shifted by flux_shift_of(the batch's image tokens)."""

    name = "flow"

    def __init__(self, timestep_sampling: str = "uniform", sigmoid_scale: float = 1.0,
                 discrete_flow_shift: float = 3.1582):
        self._draw = choose(TIMESTEP_SAMPLING, timestep_sampling, "training.timestep_sampling")
        self.sampling, self.scale, self.shift = timestep_sampling, sigmoid_scale, discrete_flow_shift

    def sample_t(self, n: int, generator: torch.Generator, device="cpu", image_tokens: int = 0) -> torch.Tensor:
        """[n] noise levels; image_tokens (latent h * w / 4) is what flux_shift depends on."""
        t = self._draw(n, generator, device, self.scale)
        if self.sampling == "shift":
            t = shift_t(t, self.shift)
        elif self.sampling == "flux_shift":
            t = shift_t(t, flux_shift_of(image_tokens or 4096))
        # keep away from the exact ends, where snr is 0 or infinite
        return t.clamp(1e-4, 1 - 1e-4)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] -> (1 - t, t) [B]: the weights of x0 and noise in x_t (as every objective gives them)."""
        return 1 - t, t

    def add_noise(self, x0, noise, t):
        t = _expand(t, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0, noise, t):
        return noise - x0

    def snr(self, t):
        return ((1 - t) / t) ** 2

    def min_snr_weight(self, t, gamma: float):
        snr = self.snr(t)
        return torch.clamp(snr, max=gamma) / snr


class PathFlow(Flow):
    """Flow matching on a probability path of the flow-matching package (paths.py: condot, cosine, vp, linear_vp):
    x_t = a_t x0 + s_t noise, target = d x_t / d t, with a_t, s_t the library's alpha, sigma at its time 1 - t. Noise levels are drawn as Flow draws them
    (training.timestep_sampling, kept away from the exact ends, where linear_vp's velocity is infinite).
    `name` stays "flow": what the model predicts (a velocity) is what the saved file's metadata says."""

    name = "flow"

    def __init__(self, flow_path: str = "condot", timestep_sampling: str = "uniform", sigmoid_scale: float = 1.0,
                 discrete_flow_shift: float = 3.1582):
        self.path = make_path(flow_path)
        self.flow_path = flow_path
        super().__init__(timestep_sampling, sigmoid_scale, discrete_flow_shift)

    def add_noise(self, x0, noise, t):
        return from_library(self.path, x0, noise, t.to(x0.dtype))[0]

    def target(self, x0, noise, t):
        return from_library(self.path, x0, noise, t.to(x0.dtype))[1]

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B] -> (a_t, s_t) [B]: the weights of x0 and noise in x_t."""
        out = self.path.scheduler(1 - t)
        return out.alpha_t, out.sigma_t

    def snr(self, t):
        a, s = self.alpha_sigma(t)
        return (a / s) ** 2
    # min_snr_weight: Flow's clamp(snr, gamma) / snr, on this path's snr


OBJECTIVES = {"epsilon": Epsilon, "v_prediction": VPrediction, "sample": Sample, "flow": Flow}


def make_objective(name: str, alphas_cumprod: torch.Tensor | None, timestep_sampling: str = "uniform",
                   sigmoid_scale: float = 1.0, discrete_flow_shift: float = 3.1582, flow_path: str = "condot"):
    """The objective `name`; the DDPM ones need the model's alphas_cumprod [N]. For "flow", flow_path picks the
    probability path: condot is `Flow` (FLUX, SD2 reflow), the others the flow-matching package's (paths.py)."""
    cls = choose(OBJECTIVES, name, "training.objective")
    if cls is Flow:
        if flow_path != "condot":
            return PathFlow(flow_path, timestep_sampling, sigmoid_scale, discrete_flow_shift)
        return Flow(timestep_sampling, sigmoid_scale, discrete_flow_shift)
    if alphas_cumprod is None:
        raise ValueError(f"training.objective: {name!r} needs a model with a DDPM noise schedule")
    return cls(alphas_cumprod, timestep_sampling, sigmoid_scale)


def offset_noise(noise: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Noise offset (Guttenberg 2023): a per-image, per-channel constant added to the noise, so the model can learn
    images much darker or brighter than average. noise [B, C, H, W]."""
    if offset <= 0:
        return noise
    shift = torch.randn(noise.shape[0], noise.shape[1], 1, 1, generator=generator, device=noise.device)
    return noise + offset * shift.to(noise.dtype)


def scaled_linear_alphas_cumprod(beta_start: float, beta_end: float, num_steps: int) -> torch.Tensor:
    """alphas_cumprod of SD's 'scaled_linear' schedule (betas linear in sqrt space)."""
    betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                        beta_start: float = 0.0001, beta_end: float = 0.02) -> torch.Tensor:
    """alphas_cumprod [N] (float64) of diffusers' DDPMScheduler, for a DDPM model trained from scratch.

    beta_schedule: linear / scaled_linear (betas linear in sqrt space, SD's) between beta_start and beta_end, or
    squaredcos_cap_v2 (Nichol & Dhariwal 2021's cosine, which ignores beta_start / beta_end)."""
    from diffusers import DDPMScheduler

    choose(dict.fromkeys(BETA_SCHEDULES), beta_schedule, "training.beta_schedule")
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                              beta_start=beta_start, beta_end=beta_end)
    return scheduler.alphas_cumprod.double()
