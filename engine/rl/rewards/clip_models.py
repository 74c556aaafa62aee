"""Rewards scored by CLIP from a local model folder (rl.clip_model_path); nothing is downloaded.

    clip_score:  100 * cos(CLIP text features of the prompt, CLIP image features)   the CLIP score metric's scale
    aesthetic:   the LAION improved aesthetic predictor (an MLP on L2-normalised CLIP ViT-L/14 image features,
                 weights from rl.aesthetic_model_path), as DDPO scores aesthetics; about 1-10, higher is nicer

Unlike the CLIP score metric (torchmetrics), clip_score is not clamped at 0: below 0 the sign still tells a worse
image from a better one, which is what the advantages are made of.
The model loads once per RewardSet (its `cache`), in float32 and eval mode; clip_score and aesthetic share it.
"""
from __future__ import annotations

from pathlib import Path

from engine.failures import UserError

# The LAION predictor's layers (its improved-aesthetic-predictor's MLP): D -> 1024 -> 128 -> 64 -> 16 -> 1, with
# dropout between the first ones and no activations; its state dict names them layers.0 ... layers.7.
_AESTHETIC_WIDTHS = (1024, 128, 64, 16, 1)
_AESTHETIC_DROPOUTS = (0.2, 0.2, 0.1)
_AESTHETIC_LINEAR_INDICES = (0, 2, 4, 6, 7)


def load_clip(folder: Path, device, cache: dict):
    """(CLIPModel, CLIPProcessor) from `folder`, loaded once per (folder, device) into `cache`."""
    key = ("clip", str(folder), str(device))
    if key not in cache:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... for a folder it cannot read
            raise UserError(f"rl.clip_model_path: {folder} could not be loaded as a CLIP model: "
                            f"{_first_line(exc)}",
                            "It must be a transformers CLIP folder: config.json, the weights (model.safetensors), "
                            "preprocessor_config.json and the tokenizer files, as openai/clip-vit-large-patch14 "
                            "has them.") from exc
        cache[key] = (model.to(device).eval(), processor)
    return cache[key]


def build_clip_score(rl, device, cache: dict):
    model, processor = load_clip(Path(rl.clip_model_path).expanduser(), device, cache)

    def clip_score(images, prompts) -> list[float]:
        import torch

        with torch.inference_mode():
            image = _normalised(image_features(model, processor, images, device))
            text = _normalised(text_features(model, processor, prompts, device))
            return (100 * (image * text).sum(dim=-1)).tolist()

    return clip_score


def build_aesthetic(rl, device, cache: dict):
    model, processor = load_clip(Path(rl.clip_model_path).expanduser(), device, cache)
    mlp = load_aesthetic_mlp(Path(rl.aesthetic_model_path).expanduser(), model.config.projection_dim, device)

    def aesthetic(images, prompts) -> list[float]:
        import torch

        with torch.inference_mode():
            features = _normalised(image_features(model, processor, images, device))
            return mlp(features).squeeze(1).tolist()

    return aesthetic


def image_features(model, processor, images, device):
    """(N, projection_dim) CLIP image embeddings, unnormalised."""
    pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
    return _tensor(model.get_image_features(pixel_values=pixels.to(device, model.dtype)))


def text_features(model, processor, prompts, device):
    """(N, projection_dim) CLIP text embeddings, unnormalised; long prompts are cut at CLIP's 77 tokens."""
    tokens = processor.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt",
                                 max_length=model.config.text_config.max_position_embeddings)
    return _tensor(model.get_text_features(input_ids=tokens["input_ids"].to(device),
                                           attention_mask=tokens["attention_mask"].to(device)))


def aesthetic_mlp(width: int):
    """The LAION predictor's MLP for `width`-dim CLIP features, untrained; load_aesthetic_mlp fills it."""
    import torch

    layers, inputs = [], width
    for i, outputs in enumerate(_AESTHETIC_WIDTHS):
        layers.append(torch.nn.Linear(inputs, outputs))
        if i < len(_AESTHETIC_DROPOUTS):
            layers.append(torch.nn.Dropout(_AESTHETIC_DROPOUTS[i]))
        inputs = outputs
    return torch.nn.Sequential(*layers)


def load_aesthetic_mlp(path: Path, clip_width: int, device):
    """The predictor from `path` (.pth / .pt / .bin with torch.load, or .safetensors), on `device` in eval mode."""
    state = _read_state_dict(path)
    expected = {f"layers.{i}.{part}" for i in _AESTHETIC_LINEAR_INDICES for part in ("weight", "bias")}
    if (not isinstance(state, dict) or set(state) != expected
            or getattr(state["layers.0.weight"], "ndim", 0) != 2):
        found = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
        raise UserError(f"rl.aesthetic_model_path: {path} is not the LAION aesthetic predictor's weights "
                        f"(expected layers.0.weight ... layers.7.bias; found {found}).",
                        "Use the improved-aesthetic-predictor's file, e.g. sac+logos+ava1-l14-linearMSE.pth.")
    width = state["layers.0.weight"].shape[1]
    if width != clip_width:
        raise UserError(f"rl.aesthetic_model_path: {path} scores {width}-dim CLIP features, but the model in "
                        f"rl.clip_model_path ({_clip_name(clip_width)}) gives {clip_width}-dim ones.",
                        "Pair the predictor with the CLIP it was trained on: the LAION predictor needs "
                        "clip-vit-large-patch14 (768).")
    mlp = aesthetic_mlp(width)
    try:
        mlp.load_state_dict({name.removeprefix("layers."): value.float() for name, value in state.items()})
    except RuntimeError as exc:  # a layer of the wrong shape
        raise UserError(f"rl.aesthetic_model_path: {path} does not fit the LAION predictor's layers: "
                        f"{_first_line(exc)}",
                        "Use the improved-aesthetic-predictor's file, e.g. sac+logos+ava1-l14-linearMSE.pth.") from exc
    return mlp.to(device).eval().requires_grad_(False)


def _clip_name(width: int) -> str:
    """The usual CLIP for a feature width, to make a mismatch readable."""
    known = {512: "ViT-B", 768: "ViT-L/14", 1024: "ViT-H/14", 1280: "ViT-bigG/14"}
    return known.get(width, "an unusual CLIP")


def _read_state_dict(path: Path):
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        # weights_only: a .pth from the internet must not be able to run code while it loads
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many kinds for a file they cannot read
        raise UserError(f"rl.aesthetic_model_path: {path} could not be read as weights: {_first_line(exc)}",
                        "Use the improved-aesthetic-predictor's .pth file (or the same weights as "
                        ".safetensors).") from exc


def _tensor(output):
    """get_*_features gives a tensor in transformers 4 and an output with .pooler_output (projected) in 5."""
    return output if hasattr(output, "norm") else output.pooler_output


def _normalised(features):
    return features / features.norm(dim=-1, keepdim=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
