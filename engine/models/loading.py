"""Load a diffusers pipeline from what the user pointed model.path at: a folder, a single checkpoint file, or a
Hub id. Every way it can fail says which path is wrong and what to do about it (engine.failures.UserError)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from engine.failures import UserError

SINGLE_FILE_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Pipeline parts a training run does without (the SD families load with safety_checker=None; tokenizers and
# schedulers are checked by from_pretrained itself): an "incomplete folder" never names these.
OPTIONAL_PARTS = ("tokenizer", "scheduler", "feature_extractor", "safety_checker", "image_encoder")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_pipeline(pipeline_cls, model_cfg, dtype, **kwargs):
    """pipeline_cls loaded from model_cfg.path (ModelConfig), weights in `dtype`."""
    path = model_cfg.path.strip()
    if not path:
        raise UserError("model.path is empty.", "Set model.path to a diffusers folder, a .safetensors/.ckpt "
                                                "checkpoint, or a Hugging Face id such as "
                                                "stable-diffusion-v1-5/stable-diffusion-v1-5.")
    local = Path(path).expanduser()
    if local.is_dir():
        return _from_folder(pipeline_cls, local, dtype, kwargs)
    if local.is_file():
        return _from_single_file(pipeline_cls, local, model_cfg.single_file_config, dtype, kwargs)
    if HUB_ID.match(path) and not path.startswith("."):
        return _from_hub(pipeline_cls, path, dtype, kwargs)
    raise UserError(f"model.path: no such file or folder: {local}",
                    "Check the path (copy it from the file explorer), or use a Hugging Face id like owner/name.")


def _from_folder(pipeline_cls, folder: Path, dtype, kwargs):
    if not (folder / "model_index.json").is_file():
        raise UserError(f"model.path: {folder} is not a diffusers model folder (it has no model_index.json).",
                        "Point model.path at the folder that holds model_index.json, unet/, vae/ ..., or at a "
                        "single .safetensors checkpoint file.")
    missing = [part for part in missing_config_parts(folder) if not part.startswith(OPTIONAL_PARTS)]
    missing += [f"{name}/ (its weights)" for name in _weighted_parts(folder) if not _has_weights(folder / name)]
    if missing:
        raise UserError(f"model.path: the model folder {folder} is incomplete: {', '.join(missing)} missing.",
                        "The download was interrupted or only part of the model was copied: download the model "
                        "folder again (all of unet/, vae/, text_encoder/ ...).")
    try:
        return pipeline_cls.from_pretrained(folder, dtype=dtype, local_files_only=True, **kwargs)
    except Exception as e:  # noqa: BLE001 - a damaged weights file gets its name; anything else goes on as it was
        damaged = damaged_weights(folder)
        if damaged:
            raise UserError(f"{damaged} is not a valid weights file (damaged or incompletely downloaded).",
                            f"Download {damaged.parent.name}/{damaged.name} again (or the whole model folder).") from e
        raise


def _weighted_parts(folder: Path) -> list[str]:
    """The pipeline parts that hold weights (unet, vae, text encoders, transformer), from model_index.json."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    return [name for name, spec in index.items() if isinstance(spec, list) and spec[0] is not None
            and not name.startswith(("_", *OPTIONAL_PARTS))]


def _has_weights(part: Path) -> bool:
    return any(part.glob("*.safetensors")) or any(part.glob("*.bin")) or any(part.glob("*.safetensors.index.json"))


def damaged_weights(folder: Path) -> Path | None:
    """The first .safetensors file under `folder` whose header or size does not read back whole, or None."""
    from safetensors import safe_open

    for file in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    f.get_slice(key)  # header entries pointing past the end of a cut-off file fail here
        except Exception:  # noqa: BLE001 - any failure to read it back means the file is damaged
            return file
    return None


def _from_hub(pipeline_cls, repo_id: str, dtype, kwargs):
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        return pipeline_cls.from_pretrained(repo_id, dtype=dtype, local_files_only=offline, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(
            f"model.path: '{repo_id}' is not a folder or file on this PC, and it could not be loaded from the "
            f"Hugging Face Hub{' (offline mode is on)' if offline else ''}: {str(e).splitlines()[0]}",
            f"Download it once (e.g. `hf download {repo_id} --local-dir models/{repo_id.split('/')[-1]}`) "
            f"and set model.path to that folder.") from e


def missing_config_parts(config_dir: Path) -> list[str]:
    """What a single-file config folder lacks: model_index.json and each listed component's config."""
    if not (config_dir / "model_index.json").is_file():
        return ["model_index.json"]
    index = json.loads((config_dir / "model_index.json").read_text(encoding="utf-8"))
    missing = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        sub = config_dir / name
        if not sub.is_dir() or not any(sub.glob("*.json")):
            missing.append(f"{name}/ (with its config .json)")
    return missing


def _from_single_file(pipeline_cls, file: Path, config_dir: str, dtype, kwargs):
    if file.suffix.lower() not in SINGLE_FILE_EXTS:
        raise UserError(f"model.path: {file} is not a model checkpoint ({', '.join(SINGLE_FILE_EXTS)}).",
                        "Point model.path at a .safetensors/.ckpt checkpoint or a diffusers folder.")
    if not config_dir:
        raise UserError(
            f"model.single_file_config is empty: loading the single-file checkpoint {file.name} needs a local "
            f"folder with the model's diffusers configs (Easel never downloads them while training).",
            f"Set model.single_file_config to a diffusers folder of the same model type ({pipeline_cls.__name__}): "
            f"model_index.json plus unet/, vae/, text_encoder/, tokenizer/ and scheduler/ with their config files "
            f"(the weights are not needed).")
    config = Path(config_dir).expanduser()
    missing = missing_config_parts(config) if config.is_dir() else ["the folder itself"]
    if missing:
        raise UserError(f"model.single_file_config: {config} is missing {', '.join(missing)}.",
                        "Use a diffusers folder of the same model type (download its configs once, or copy them "
                        "from a diffusers copy of the model).")
    return pipeline_cls.from_single_file(str(file), config=str(config), dtype=dtype, local_files_only=True,
                                         **kwargs)


def load_vae(model_cfg, dtype):
    """The separate VAE of model.vae_path (a diffusers folder or a single file), or None."""
    if not model_cfg.vae_path:
        return None
    from diffusers import AutoencoderKL

    path = Path(model_cfg.vae_path).expanduser()
    if path.is_dir():
        sub = "vae" if (path / "vae").is_dir() else None
        return AutoencoderKL.from_pretrained(path, subfolder=sub, dtype=dtype, local_files_only=True)
    if path.is_file():
        return AutoencoderKL.from_single_file(str(path), dtype=dtype, local_files_only=True)
    raise UserError(f"model.vae_path: no such file or folder: {path}", "Fix the path or leave it empty.")
