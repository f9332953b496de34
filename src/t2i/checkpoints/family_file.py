"""One-file models: a safetensors file whose metadata embeds the family, typed config and version.

Used by the classic families (GAN, VAE, pixel-space DDPM, KL autoencoder, VQGAN, AR transformer),
which have no ecosystem folder layout to follow; their save/load is t2i.models.common.FamilyFileModel.
Metadata keys (all strings, as safetensors requires):

    t2i_family   "gan" | "vae" | "ddpm" | "autoencoder-kl" | "vqgan" | "ar"
    t2i_config   the model config as JSON (rebuilt with t2i.config.from_dict: unknown keys fail)
    t2i_version  the t2i version that wrote the file

Writes are atomic (temporary file + rename); loads are strict (see `load_into`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from t2i.checkpoints.diffusers_folder import ModelLoadError, _t2i_version

FAMILY_KEY, CONFIG_KEY, VERSION_KEY = "t2i_family", "t2i_config", "t2i_version"
MODEL_FILE = "model.safetensors"  # what a training run of these families leaves in its folder


from t2i.errors import ModelConfigError  # noqa: E402,F401  (re-exported)


def save_model_file(path: str | Path, family: str, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: model files are safetensors; give a path ending in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {FAMILY_KEY: family, CONFIG_KEY: json.dumps(config), VERSION_KEY: _t2i_version(), "format": "pt"}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise ModelLoadError(f"{path} is not a readable safetensors file: {err}") from err
    if FAMILY_KEY not in metadata or CONFIG_KEY not in metadata:
        raise ModelLoadError(f"{path} has no t2i family/config metadata; it was not saved by a t2i "
                             f"GAN/VAE/DDPM model (LDM models are folders: use `t2i generate --model`)")
    return metadata


def read_model_file(path: str | Path, family: str | None = None) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(family, config dict, tensors); `family` given: refuse a file of another family."""
    metadata = read_metadata(path)
    found = metadata[FAMILY_KEY]
    if family is not None and found != family:
        raise ModelLoadError(f"{path} holds a {found!r} model, not a {family!r} one")
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path}: the embedded config is not valid JSON: {err}") from err
    return found, config, load_file(str(path))


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load: every parameter and buffer present with the right shape, nothing extra."""
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{path} does not match its embedded config: {err}") from err
