"""The family record, its capabilities, and the loaded components it works on.

A family is data plus a few functions; nothing subclasses anything. The trainer only ever calls:
    load(model_cfg, dtype, device) -> Components
    encode_text(comps, captions: list[str]) -> cond: dict[str, Tensor]   (every tensor has the batch dim first)
    encode_image(comps, pixels [B,3,H,W] in [-1,1]) -> latents [B,C,H/8,W/8] (scaled for the denoiser)
    predict(comps, x_t, t [B] in [0,1], cond, size_cond [B,6]) -> prediction shaped like x_t
    pipeline(comps) -> the diffusers pipeline (sharing the trained modules) for samples and the LoRA self-check
`size_cond` is (original_h, original_w, crop_top, crop_left, target_h, target_w) per image: SDXL conditions on it,
the others ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# sampling.sampler values by what the run trains: a diffusion objective (epsilon, v_prediction, sample) or a flow
DIFFUSION, FLOW = "diffusion", "flow"


@dataclass(frozen=True)
class Capabilities:
    """What a family can do, as data. config/validate.py, the GUI, rl/, training and failures.py (told by its caller)
    decide by these, never by the family's name. Torch-free (each family folder's caps.py), so the GUI and the preset
    checks read them.

    Each family's caps.py has CAPABILITIES = {name: Capabilities} for the families its folder holds."""

    name: str                            # model.family
    label: str                           # how messages name it: "FLUX.1", "SD 1.x"
    a_label: str                         # the same with its article: "a FLUX.1", "an SD 1.x"
    latent_multiple_px: int = 8          # image sides are multiples of this (FLUX packs 2x2 latents: 16)
    multiple_why: str = ""               # said after the multiple in messages: " (its latents are packed ...)"
    # training.objective values it trains, besides auto; `auto` trains the base model's own prediction type
    # ("model": read from its scheduler config at load) or the named objective
    objectives: tuple = ("epsilon", "v_prediction", "flow")
    auto_objective: str = "model"
    # sampling.sampler values it samples with, by what the run trains (DIFFUSION or FLOW); "default" is the model's
    # own scheduler. A rectified flow on a DDPM UNet samples with flow Euler only.
    samplers: dict = field(default_factory=lambda: {DIFFUSION: ("default", "euler", "ddim", "dpmpp_2m"),
                                                    FLOW: ("default", "flow_euler")})
    guidance: str = "cfg"                # cfg (classifier-free: a second, unconditional pass), embedded
                                         # (distilled into an input, FLUX dev), none
    network_types: tuple = ("lora", "full")   # network.type values it trains
    trainable_text_encoders: int | None = None   # how many of its text encoders may train (FLUX: CLIP-L); None: all
    default_precision: str = "auto"      # what training.precision auto means on a GPU: auto (bf16 where the card
                                         # has it natively, else fp16) or a fixed one (FLUX: bf16)
    flow_paths: tuple = ("condot",)      # training.flow_path values (pretrained models: the straight path only)
    base_model: bool = True              # False: trained from scratch (no model.path, no pipeline, no LoRA,
                                         # no captions or trigger: the dataset doctor does not apply)
    separate_files: tuple = ()           # model.* keys of separate component files it loads (FLUX: clip_l_path ...)
    block_swap: bool = False             # model.block_swap applies (transformer blocks wait in CPU RAM)
    block_lists: tuple = ()              # the denoiser's lists of blocks in run order (fp8 casting, block swap)
    block_swap_max: int = 0              # the most blocks worth swapping (what failures.py still suggests)
    preview_model: str = ""              # its distilled sibling that model.preview_path names (Z-Image: "Z-Image
                                         # Turbo"); "" when it has none
    size_shift: bool = False             # flow noise levels shifted by the image size when sampling (FLUX)
    token_patch: int = 2                 # latents per image token, each side: FLUX packs 2x2 latents into a token;
                                         # FLUX.2's latents are its tokens already (patchified by the family: 1)
    # (preset) -> [(key, message)]: checks of the family's own keys (the DiT's model.dit.*)
    checks: Callable = lambda preset: []
    # (preset) -> [(key, message)]: its valid settings that are rarely what was meant (warned, never refused:
    # training Z-Image Turbo itself)
    advice: Callable = lambda preset: []
    # (model config) -> the multiple, for families whose multiple depends on the preset (the DiT's patch size)
    multiple_of: Callable | None = None

    def image_tokens(self, latent_shape) -> int:
        """Image tokens of a latent [..., h, w]: what flux_shift and the rollouts' size shift count."""
        return latent_shape[-2] * latent_shape[-1] // self.token_patch ** 2

    def latent_multiple(self, model) -> int:
        return self.multiple_of(model) if self.multiple_of else self.latent_multiple_px

    def objective_kind(self, objective: str, prediction_type: str = "auto") -> str:
        """FLOW or DIFFUSION for training.objective (auto: the model's prediction type, else auto_objective)."""
        if objective == "auto":
            objective = prediction_type if prediction_type != "auto" else self.auto_objective
        return FLOW if objective == "flow" else DIFFUSION

    def samplers_for(self, objective: str, prediction_type: str = "auto") -> tuple:
        """The sampling.sampler values for what the run trains; while that is the base model's own, unknown until
        its scheduler config is read at load, those of every kind it may be."""
        if objective == "auto" and prediction_type == "auto" and self.auto_objective == "model":
            return tuple(dict.fromkeys(s for kind in self.samplers.values() for s in kind))
        return self.samplers.get(self.objective_kind(objective, prediction_type), ("default",))

    @property
    def flow_only(self) -> bool:
        """It trains nothing but a flow (FLUX): flow settings always apply."""
        return self.objectives == (FLOW,)


@dataclass
class Components:
    """The loaded model. `denoiser` is the UNet (or a transformer); text_encoders/tokenizers in the pipeline's order."""

    pipe: Any
    denoiser: Any
    vae: Any
    text_encoders: tuple
    tokenizers: tuple
    prediction_type: str                 # epsilon | v_prediction | flow, after model.prediction_type
    alphas_cumprod: Any = None           # [N] tensor for DDPM models, None for flow models
    vae_dtype: Any = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """The runtime record: data for exports plus the functions the trainer calls; `caps` says what it can do."""

    name: str
    caps: Capabilities
    lora_targets: tuple                  # denoiser module names that get LoRA layers by default
    te_lora_targets: tuple               # text-encoder module names
    text_encoder_names: tuple            # the pipeline's text-encoder attribute names, in order
    # LoRA metadata as sd-scripts writes it, by the resolved prediction type ("epsilon" is the fallback):
    kohya_base_model: dict               # ss_base_model_version, e.g. {"epsilon": "sd_v2", "v_prediction": "sd_v2_v"}
    modelspec_architecture: dict         # modelspec.architecture, e.g. stable-diffusion-v2-768-v/lora for a v model
    load: Callable
    encode_text: Callable
    encode_image: Callable
    predict: Callable
    pipeline: Callable
    metadata: dict = field(default_factory=dict)  # extra ss_* / modelspec.* strings (e.g. ss_v2)
    # how its kohya LoRA files name its modules, as sd-scripts writes them (engine/models/lora_naming.KohyaNaming:
    # diffusers paths for SD1.x/SD2, the original LDM ones for SDXL, BFL's fused ones for FLUX); None: none
    kohya_naming: Any = None
    modelspec_implementation: str = "diffusers"   # what sd-scripts writes: "diffusers" for SD1.x/SD2 LoRAs
    # (denoiser, network config) -> full module paths of the LoRA targets, for denoisers whose targets are not simple
    # name suffixes (FLUX: the block linears, not the embedders'); None: lora_targets / network.targets as suffixes
    lora_target_names: Callable | None = None
    # its pipeline takes encode_text's output for samples (prompt_embeds + pooled_prompt_embeds, no negative prompt),
    # so frozen text encoders stay in CPU RAM while sampling (FLUX's T5 would not fit beside the transformer)
    cached_sample_prompts: bool = False
    # (cond of one prompt: encode_text's output without the batch dim, the negative prompt's or None, device) ->
    # the pipeline's keyword arguments for a prompt encoded ahead (cached_sample_prompts; FLUX: prompt_embeds +
    # pooled_prompt_embeds)
    sample_kwargs: Callable | None = None
    # sampling.guidance_scale (classifier-free guidance as A1111 / ComfyUI mean it: 1 = none) -> the value its
    # pipeline takes, where that means something else (ZImagePipeline: pos + g (pos - neg), so 0 = none); None: as is
    pipeline_guidance: Callable | None = None
    # model.preview_path (caps.preview_model): (comps, model config, compute dtype, progress) -> the distilled
    # sibling's pipeline with the run's LoRA as it is now; and the (steps, guidance) that sibling samples at
    preview_pipeline: Callable | None = None
    preview_sampling: tuple = (0, 0.0)
    writes_prediction_type: bool = True          # modelspec.prediction_type in LoRA headers (sd-scripts writes none for FLUX)
    # caps.base_model False (the DiT trained from scratch): no diffusers pipeline for samples, so
    # engine/sampling/scratch.py samples `predict` with the ODE / DDIM samplers; configure(comps, training) takes the
    # objective from the preset
    configure: Callable | None = None
    decode_image: Callable | None = None         # from scratch: (comps, x0 the model's space) -> pixels [-1, 1]


def by_prediction(table: dict, *keys: str) -> str:
    """A family's metadata value for the first of `keys` it has (the model's variant, its resolved prediction
    type); else its first entry (epsilon for the SD families)."""
    return next((table[k] for k in keys if k in table), next(iter(table.values())))
