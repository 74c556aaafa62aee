"""What the DiT trained from scratch can do (torch-free), and the checks of its own keys (model.dit.*).

No base model: a full fine-tune only, any objective and probability path, its own ODE / DDIM samplers, no
pipeline, no captions (class folders, .npz channels or bare images). Its multiple is the patch size, in pixels or
(model.dit.space latent) in latents, 8x smaller.
"""
from __future__ import annotations

from engine.models.families.base import DIFFUSION, FLOW, Capabilities


def latent_multiple(model) -> int:
    return model.dit.patch_size * (8 if model.dit.space == "latent" else 1)


def checks(p) -> list[tuple[str, str]]:
    """The DiT's own keys (model.dit.*) and what they need of the rest of the preset."""
    out = []
    t, dit = p.training, p.model.dit
    if t.mode == "vae" and dit.space == "pixel":
        out.append(("training.mode", "'vae' trains a model's VAE, and a DiT in pixel space has none (train the VAE "
                                     "of an SD or FLUX model, or set model.dit.space: latent)"))
    if dit.space == "latent" and not p.model.vae_path and not p.model.path:
        out.append(("model.vae_path", "model.dit.space latent trains on a VAE's latents: set model.vae_path (e.g. "
                                      "an SD model's vae/ folder)"))
    if dit.width % dit.heads:
        out.append(("model.dit.width", f"{dit.width} must be a multiple of model.dit.heads ({dit.heads})"))
    if dit.conditioning == "channels":
        if not dit.target_array:
            out.append(("model.dit.target_array", "conditioning channels needs the name of the .npz array to "
                                                  "generate (e.g. target_goal)"))
        if dit.space != "pixel":
            out.append(("model.dit.space", "conditioning channels trains on the .npz arrays themselves: use pixel"))
        if dit.target_array and dit.target_array in dit.context_arrays:
            out.append(("model.dit.context_arrays", f"{dit.target_array!r} is the target_array; the model would "
                                                    f"see what it has to generate"))
        if p.validation.folder:
            out.append(("validation.folder", "conditioning channels holds out part of its .npz files: use "
                                             "validation.fraction"))
        bad = [a for a in dit.array_aliases if "=" not in str(a) or not all(str(a).split("=", 1))]
        if bad:
            out.append(("model.dit.array_aliases", f"{bad[0]!r} is not old=new (e.g. robot=robot_image)"))
    return out


CAPABILITIES = {"dit": Capabilities(
    name="dit", label="DiT", a_label="a DiT", multiple_of=latent_multiple,
    objectives=("epsilon", "v_prediction", "sample", "flow"), auto_objective="flow",
    samplers={FLOW: ("default", "euler", "midpoint", "rk4", "dopri5"), DIFFUSION: ("default", "ddim", "ddpm")},
    guidance="none", network_types=("full",), flow_paths=("condot", "cosine", "vp", "linear_vp"), base_model=False,
    checks=checks,
)}
