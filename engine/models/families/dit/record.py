"""A small DiT trained from scratch (model.family: dit): diffusers' DiTTransformer2DModel on pixels in [-1, 1],
sized by model.dit (depth, width, heads, patch_size), conditioned on nothing (class label 0 for every image), on
a class (one per sub-folder of dataset.path; the class index is the label), or on channels: a folder of .npz files
(engine/data/npz.py), x0 the target_array's channels and the context_arrays (+ a (y, x) grid) concatenated with x_t,
so in_channels = target + context channels and out_channels = target channels.

Shapes: x_t [B, 3, H, W] pixels (encode_image is the identity at the bucket size), or with model.dit.space latent
the scaled latents [B, C, H/8, W/8] of model.vae_path's VAE; cond {"class_labels": [B] long}.
The DiT's timestep is t * 1000 for flow objectives and the integer DDPM step k = round(t (N - 1)) for epsilon /
v_prediction / sample (Epsilon.index), so the sinusoidal embedding sees the grid it was trained on.

No diffusers pipeline fits (DiTPipeline needs a VAE and ImageNet labels), so its samples come from
engine/sampling/scratch.py (ODE / DDIM samplers on `predict`) and it saves through `DitFolder`, which has the two methods the
full-fine-tune export uses: save_pretrained (transformer/ + easel_dit.json) and from_pretrained (the self-check).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.models.families.base import Components, Family
from engine.models.families.dit.caps import CAPABILITIES

SETTINGS_FILE = "easel_dit.json"
# The DiT's label table: room for this many classes (plus its own "no class" row for label dropout), fixed so a
# model can be built before the dataset is read; 1000 x width parameters, a few hundred KB at the sizes used here.
MAX_CLASSES = 1000
IMAGE_CHANNELS = 3


class Pixels(torch.nn.Module):
    """The "VAE" of a pixel-space model: nothing to encode (Components and the latent cache want a module)."""

    config = {"easel": "pixels"}

    def forward(self, x):
        return x


class DitFolder:
    """The saved model: `transformer/` (diffusers' save_pretrained) + easel_dit.json (conditioning, class names,
    objective, flow path / DDPM schedule). Stands in for a pipeline in checkpoints.export_full."""

    def __init__(self, transformer, settings: dict):
        self.transformer, self.settings = transformer, settings
        self.components = {"transformer": transformer}

    def save_pretrained(self, folder, safe_serialization: bool = True):
        folder = Path(folder)
        self.transformer.save_pretrained(folder / "transformer", safe_serialization=safe_serialization)
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder, torch_dtype=None):
        from diffusers import DiTTransformer2DModel

        folder = Path(folder)
        settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=torch_dtype)
        return cls(transformer, settings)


def is_dit_folder(path: Path) -> bool:
    return (Path(path) / SETTINGS_FILE).is_file()


def build_transformer(dit_cfg, resolution_px: int = 64, channels: int = IMAGE_CHANNELS,
                      out_channels: int | None = None):
    """A randomly initialised DiT sized by model.dit, from the global RNG (setup seeds it with training.seed, so
    the same seed gives the same weights). resolution_px only sizes the default position table: other sizes
    get theirs computed (diffusers' PatchEmbed)."""
    from diffusers import DiTTransformer2DModel

    from engine.failures import UserError

    if dit_cfg.width % dit_cfg.heads:
        raise UserError(f"model.dit.width: {dit_cfg.width} is not a multiple of model.dit.heads ({dit_cfg.heads}).",
                        f"Use a width such as {dit_cfg.heads * max(1, dit_cfg.width // dit_cfg.heads)}.")
    return DiTTransformer2DModel(
        num_attention_heads=dit_cfg.heads, attention_head_dim=dit_cfg.width // dit_cfg.heads, in_channels=channels,
        out_channels=channels if out_channels is None else out_channels, num_layers=dit_cfg.depth, sample_size=resolution_px, patch_size=dit_cfg.patch_size,
        num_embeds_ada_norm=MAX_CLASSES, norm_num_groups=1)


def load(model_cfg, dtype, device, progress=None) -> Components:
    """model.path a saved DiT folder: that model (its conditioning and class names); else a new one from model.dit.
    Everything stays on the CPU; setup moves the transformer to the device."""
    from engine.failures import UserError

    dit = model_cfg.dit
    path = Path(model_cfg.path).expanduser() if model_cfg.path else None
    vae = None
    saved_folder = path is not None and is_dit_folder(path)
    if saved_folder:
        saved = DitFolder.from_pretrained(path, torch_dtype=dtype)
        transformer, settings = saved.transformer, saved.settings
        settings.setdefault("space", "pixel")
    elif path is not None and path.exists():
        raise UserError(f"model.path: {path} is not a saved DiT folder (it has no {SETTINGS_FILE}).",
                        "Leave model.path empty to train a new DiT from scratch, or point it at a DiT folder a "
                        "previous run saved (RUN_DIR/NAME-diffusers).")
    else:
        vae = load_vae(model_cfg.vae_path) if dit.space == "latent" else None
        channels = channel_settings(dit)
        if channels:  # one channel per array until the data says otherwise (fit_channels)
            transformer = build_transformer(dit, channels=channels["target_channels"] + channels["context_channels"],
                                            out_channels=channels["target_channels"]).to(dtype)
        else:
            transformer = build_transformer(dit, channels=vae.config.latent_channels if vae else IMAGE_CHANNELS)
            transformer = transformer.to(dtype)
        settings = {**channels, "conditioning": dit.conditioning, "class_names": [], "objective": "flow",
                    "flow_path": "condot", "num_train_timesteps": 1000, "beta_schedule": "linear",
                    "space": dit.space,
                    "vae_path": str(Path(model_cfg.vae_path).expanduser().resolve()) if vae else ""}
    if settings["space"] == "latent":  # the preset's VAE when it names one, else the one the model was trained on
        vae = vae or load_vae(model_cfg.vae_path or settings.get("vae_path", ""))
        vae.requires_grad_(False)
    else:
        vae = Pixels()
    alphas = ddpm_alphas(settings) if settings["objective"] != "flow" else None
    return Components(pipe=None, denoiser=transformer, vae=vae, text_encoders=(), tokenizers=(),
                      prediction_type=settings["objective"], alphas_cumprod=alphas, vae_dtype=torch.float32,
                      extra={"dit_settings": settings, "conditioning": settings["conditioning"],
                             "class_names": list(settings["class_names"]), "objective": None,
                             "downscale": downscale(vae),
                             "fit_channels": fit_channels(transformer, dit, fresh=not saved_folder)})


def channel_settings(dit) -> dict:
    """conditioning channels: what the saved easel_dit.json records about the arrays (empty for none / class).
    The channel counts assume 2-D arrays (one channel each, the guide's masks) until fit_channels sees the data."""
    if dit.conditioning != "channels":
        return {}
    return {"target_array": dit.target_array, "context_arrays": list(dit.context_arrays),
            "coordinate_grid": bool(dit.coordinate_grid), "array_aliases": list(dit.array_aliases),
            "target_channels": 1, "context_channels": len(dit.context_arrays) + (2 if dit.coordinate_grid else 0)}


def fit_channels(transformer, dit_cfg, fresh: bool):
    """(target_channels, context_channels) -> None, called by the data loader once it has read the first file: a
    new DiT whose arrays are 3-D gets its patch embedding and output layer rebuilt for those counts (in place, so
    the trainables, optimizer and saved config all see them); a loaded one must already match."""
    from engine.failures import UserError

    def fit(target_channels: int, context_channels: int) -> None:
        in_channels = target_channels + context_channels
        config = transformer.config
        if (config.in_channels, config.out_channels) == (in_channels, target_channels):
            return
        if not fresh:
            raise UserError(f"model.path: this DiT takes {config.in_channels} input and {config.out_channels} output "
                            f"channels, but the .npz arrays give {in_channels} and {target_channels}.",
                            "Use the arrays it was trained on, or leave model.path empty to train a new DiT.")
        fresh_one = build_transformer(dit_cfg, config.sample_size, in_channels, target_channels)
        old = transformer.pos_embed.proj
        transformer.pos_embed.proj = fresh_one.pos_embed.proj.to(old.weight.device, old.weight.dtype)
        transformer.proj_out_2 = fresh_one.proj_out_2.to(old.weight.device, old.weight.dtype)
        transformer.out_channels = target_channels
        transformer.register_to_config(in_channels=in_channels, out_channels=target_channels)
    return fit


def load_vae(vae_path: str):
    """model.dit.space latent: the AutoencoderKL at model.vae_path (a diffusers folder, one with a vae/ sub-folder
    such as a whole SD model, or a single .safetensors file), in fp32."""
    from diffusers import AutoencoderKL

    from engine.failures import UserError

    path = Path(vae_path).expanduser() if vae_path else None
    if path is None or not path.exists():
        raise UserError(f"model.vae_path: {vae_path or '(empty)'} does not exist; model.dit.space latent trains on "
                        f"the latents of that VAE.", "Point model.vae_path at a VAE (e.g. an SD model's vae/ "
                                                     "folder), or use model.dit.space: pixel.")
    if path.is_file():
        return AutoencoderKL.from_single_file(str(path), torch_dtype=torch.float32)
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32)


def downscale(vae) -> int:
    """How many pixels one latent covers per side: 1 for pixels, 2^(blocks - 1) for a VAE (8 for SD's)."""
    if isinstance(vae, Pixels):
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


def ddpm_alphas(settings: dict) -> torch.Tensor:
    """alphas_cumprod [N] (float64) of diffusers' DDPMScheduler for the saved schedule (objectives.py's
    ddpm_alphas_cumprod, which models/ may not import; the same two lines)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=settings["num_train_timesteps"],
                              beta_schedule=settings["beta_schedule"])
    return scheduler.alphas_cumprod.double()


def configure(comps: Components, training) -> None:
    """What a model trained from scratch learns is the preset's: training.objective (`auto` keeps a loaded model's
    own, flow for a new one), training.flow_path and the DDPM schedule (num_train_timesteps, beta_schedule), as
    setup.build_run's objective uses them; the saved easel_dit.json records them."""
    settings = comps.extra["dit_settings"]
    if training.objective != "auto":
        settings["objective"] = training.objective
    settings.update(flow_path=training.flow_path, num_train_timesteps=training.num_train_timesteps,
                    beta_schedule=training.beta_schedule)
    comps.prediction_type = settings["objective"]
    comps.alphas_cumprod = ddpm_alphas(settings) if settings["objective"] != "flow" else None


def encode_text(comps: Components, captions: list[str]) -> dict:
    """{"class_labels": [B] long}: the caption is the class name (conditioning class), else every label is 0.
    conditioning channels (sample prompts only: training batches bring their own context): prompt i takes the
    context, and keeps the ground truth, of sample file i (the first validation files, else training files, that
    the data loader put in comps.extra["sample_cond"]; i wraps around)."""
    from engine.failures import UserError

    if comps.extra["conditioning"] == "channels":
        labels = torch.zeros(len(captions), dtype=torch.long)
        found = comps.extra.get("sample_cond")
        if not found:  # without it the noise would stand in for the context
            raise UserError("Samples of a DiT with model.dit.conditioning channels need the context arrays of "
                            ".npz files, and none are loaded here.",
                            "Sample from a run folder (python -m engine sample RUN_DIR reads its dataset's .npz "
                            "files), or look at the samples the training run wrote (RUN_DIR/samples).")
        pick = torch.arange(len(captions)) % len(found["context"])
        return {"class_labels": labels, "context": found["context"][pick], "truth": found["truth"][pick]}
    if comps.extra["conditioning"] != "class":
        return {"class_labels": torch.zeros(len(captions), dtype=torch.long)}
    names = comps.extra["class_names"]
    unknown = sorted({c for c in captions if c not in names})
    if unknown:
        raise UserError(f"Class {unknown[0]!r} is not one of this DiT's classes ({', '.join(names)}).",
                        "Sample prompts (and a dataset trained on a saved DiT) must use its class names: the "
                        "sub-folder names of the dataset it was trained on.")
    return {"class_labels": torch.tensor([names.index(c) for c in captions], dtype=torch.long)}


def encode_image(comps: Components, pixels: torch.Tensor) -> torch.Tensor:
    """Pixel space: the image itself, [B, 3, H, W] in [-1, 1]; latent space: the VAE's scaled latents
    [B, C, H/8, W/8] (the SD families' encoding)."""
    if isinstance(comps.vae, Pixels):
        return pixels
    from engine.models.families.sd.record import encode_image as vae_encode

    return vae_encode(comps, pixels)


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 3, H, W]: 3 channels as they are, otherwise the first channel in grey."""
    return x if x.shape[1] == 3 else x[:, :1].expand(-1, 3, -1, -1)


def decode_image(comps: Components, x: torch.Tensor) -> torch.Tensor:
    """The inverse of encode_image: pixels [B, 3, H, W] in about [-1, 1]. conditioning channels: the generated
    target [B, 3, H, 2W] with the ground truth of its sample file to its right (grey when it has 1 channel)."""
    if comps.extra.get("conditioning") == "channels":
        target = x[:, :comps.denoiser.config.out_channels]
        truth = comps.extra.pop("sample_truth", None)
        if truth is None:
            return as_rgb(target)
        truth = torch.nn.functional.interpolate(truth.to(target), size=target.shape[-2:], mode="nearest")
        return torch.cat([as_rgb(target), as_rgb(truth)], dim=-1)
    vae = comps.vae
    if isinstance(vae, Pixels):
        return x
    shift = vae.config.get("shift_factor") or 0.0
    return vae.decode((x / vae.config.scaling_factor + shift).to(vae.device, vae.dtype)).sample


def timestep_of(objective, t: torch.Tensor) -> torch.Tensor:
    """The DiT's timestep for noise level t [B]: the DDPM step k for the discrete objectives, t * 1000 for flow."""
    if hasattr(objective, "index"):
        return objective.index(t).to(t.device)
    return t * 1000


def predict(comps: Components, x_t, t, cond: dict, size_cond=None) -> torch.Tensor:
    """What the objective's target is, at x_t [B, 3, H, W] and noise level t [B].
    conditioning channels: x_t [B, Ct, H, W] is the noisy target and cond["context"] [B, Cc, H', W'] (resized to
    H x W when it differs) is concatenated after it. The scratch sampler draws its noise with the DiT's
    in_channels: then only the first Ct channels are the sample, and the prediction is padded with zeros to match
    (the padding stays noise and decode_image drops it)."""
    transformer = comps.denoiser
    labels = cond["class_labels"].to(x_t.device)
    timestep = timestep_of(comps.extra["objective"], t)
    if "context" not in cond:
        return transformer(hidden_states=x_t, timestep=timestep, class_labels=labels, return_dict=False)[0]
    target_channels = transformer.config.out_channels
    sample, padding = x_t[:, :target_channels], x_t.shape[1] - target_channels
    context = cond["context"].to(x_t.device, x_t.dtype)
    if context.shape[-2:] != sample.shape[-2:]:
        context = torch.nn.functional.interpolate(context, size=sample.shape[-2:], mode="bilinear")
    if "truth" in cond:  # a sample: decode_image puts the ground truth beside it
        comps.extra["sample_truth"] = cond["truth"]
    pred = transformer(hidden_states=torch.cat([sample, context], dim=1), timestep=timestep, class_labels=labels,
                       return_dict=False)[0]
    return torch.nn.functional.pad(pred, (0, 0, 0, 0, 0, padding)) if padding > 0 else pred


def pipeline(comps: Components) -> DitFolder:
    channels = {"target_channels": comps.denoiser.config.out_channels,
                "context_channels": comps.denoiser.config.in_channels - comps.denoiser.config.out_channels} \
        if comps.extra["conditioning"] == "channels" else {}
    return DitFolder(comps.denoiser, comps.extra["dit_settings"] | {"class_names": comps.extra["class_names"]}
                     | channels)


DIT = Family(
    name="dit", caps=CAPABILITIES["dit"], lora_targets=(), te_lora_targets=(), text_encoder_names=(),
    kohya_base_model={"flow": "dit"}, modelspec_architecture={"flow": "easel-dit"},
    load=load, encode_text=encode_text, encode_image=encode_image, predict=predict, pipeline=pipeline,
    writes_prediction_type=False, configure=configure, decode_image=decode_image,
)

RECORDS = {"dit": DIT}
