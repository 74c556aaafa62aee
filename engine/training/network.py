"""The network a run trains on the family's model: LoRA adapters (or the whole denoiser for a full fine-tune), the
text encoders' adapters, and a LoRA file to start from (network.init_from).

    trainables = add_network(family, comps, preset.network, training.gradient_checkpointing)   # {component: [modules]}
"""
from __future__ import annotations

from pathlib import Path

from engine.failures import UserError


def add_network(family, comps, network, gradient_checkpointing: bool) -> dict:
    """Freeze the base, add LoRA adapters (or unfreeze the UNet for a full fine-tune); {component: [modules]}."""
    from engine.models.lora import add_lora

    for module in (comps.denoiser, comps.vae, *comps.text_encoders):
        module.requires_grad_(False)
    comps.vae.eval()
    if network.type not in family.caps.network_types:
        raise UserError(f"network.type: {network.type} cannot train family '{family.name}'"
                        f"{'' if family.caps.base_model else ': a DiT trained from scratch has no base model to adapt'}.",
                        f"Set network.type: {' or '.join(family.caps.network_types)}.")
    if network.type == "full":
        comps.denoiser.requires_grad_(True)
        trainables = {"unet": [comps.denoiser]}
    else:
        if family.lora_target_names is not None:
            targets = family.lora_target_names(comps.denoiser, network)
        else:
            targets = list(network.targets) or list(family.lora_targets)
        if not targets:
            raise UserError(f"network.targets: {', '.join(network.targets)} match no layer of the {family.name} model.",
                            "Leave network.targets empty for the family's default layers, or use module names "
                            "such as to_q, to_k, to_v, to_out.0.")
        add_lora(comps.denoiser, network.rank, network.alpha, network.dropout, targets)
        trainables = {"unet": [comps.denoiser]}
        if network.train_text_encoder:
            for te in trainable_text_encoders(family, comps):
                add_lora(te, network.rank, network.alpha, network.dropout, list(family.te_lora_targets))
            trainables["text_encoder"] = trainable_text_encoders(family, comps)
    for modules in trainables.values():
        for module in modules:
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # fp32 trained weights: the optimizer's updates are too small for bf16
            module.train()
    if gradient_checkpointing:
        comps.denoiser.enable_gradient_checkpointing()
        if network.train_text_encoder:
            for te in trainable_text_encoders(family, comps):  # transformers 5 renamed it; keep working on both names
                if hasattr(te, "activation_checkpointing_enable"):
                    te.activation_checkpointing_enable({"use_reentrant": False})
                else:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return trainables


def trainable_text_encoders(family, comps) -> list:
    """The text encoders a LoRA may train (FLUX: CLIP-L only; T5 is always frozen)."""
    return list(comps.text_encoders[:family.caps.trainable_text_encoders])


def load_initial_lora(family, comps, network) -> list[str]:
    """Continue from network.init_from; returns what the user should know (as warnings).

    A file with a text-encoder part loaded into a run that does not train the text encoder (the FLUX guide's phase 2:
    ENABLE_TE=0 RESUME_FROM=phase1.safetensors) keeps that part: it is loaded into a frozen adapter, so the samples
    use it and every file this run writes carries it."""
    from engine.models.lora import add_lora, load_lora_into, lora_file_components, lora_file_info

    path = Path(network.init_from).expanduser()
    if not path.is_file():
        raise UserError(f"network.init_from: no such LoRA file: {path}", "Fix the path or leave it empty.")
    info = lora_file_info(path)
    if info.rank != network.rank:
        raise UserError(f"network.init_from: {path.name} has rank {info.rank} but network.rank is {network.rank}.",
                        f"Set network.rank: {info.rank} to continue training that LoRA.")
    notes = []
    in_file = lora_file_components(path)
    tes = {name: te for name, te in zip(family.text_encoder_names, trainable_text_encoders(family, comps))
           if name in in_file}
    carried = bool(tes) and not network.train_text_encoder
    if carried:
        for te in tes.values():
            add_lora(te, info.rank, info.alpha, 0.0, list(family.te_lora_targets))
        notes.append(f"{path.name} has a text-encoder LoRA and this run does not train the text encoder: it is "
                     f"loaded frozen and carried into this run's files.")
    load_lora_into(comps.denoiser, tes, path, text_encoder_names=family.text_encoder_names,
                   naming=family.kohya_naming)
    if carried:
        for te in tes.values():
            te.requires_grad_(False)
    notes += other_variant_note(family, comps, path, info.metadata.get("modelspec.architecture", ""))
    return notes


def other_variant_note(family, comps, path, trained_on: str) -> list[str]:
    """A LoRA trained on another variant of the same family (FLUX.1-dev vs schnell: the family's
    modelspec_architecture by variant) loads, but looks different: said, not refused."""
    variants = {arch: name for name, arch in family.modelspec_architecture.items()}
    variant = comps.extra.get("variant")
    if variant not in family.modelspec_architecture or trained_on not in variants or variants[trained_on] == variant:
        return []
    label = family.caps.label
    return [f"network.init_from: {path.name} was trained on {label}-{variants[trained_on]}, and this model is "
            f"{label}-{variant}: the LoRA loads, but its look will differ (a distilled variant and its base render "
            f"differently)."]
