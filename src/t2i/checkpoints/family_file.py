"""One-file models: a safetensors file whose metadata embeds the family, typed config and version.

Used by the classic families (GAN, VAE, pixel-space DDPM, KL autoencoder, VQGAN, AR transformer),
which have no ecosystem folder layout to follow: `save_family_file` / `load_family_file` write and
read a t2i.models.common.FamilyFileModel.
Metadata keys (all strings, as safetensors requires):

    t2i_family   "gan" | "vae" | "ddpm" | "autoencoder-kl" | "vqgan" | "ar"
    t2i_config   the model config as JSON (rebuilt with t2i.config.from_dict: unknown keys fail)
    t2i_version  the t2i version that wrote the file

Writes are atomic (temporary file + rename); loads are strict (see `load_into`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from t2i.atomic import atomic_path
from t2i.checkpoints.safe_load import check_tensor_kinds, load_state_dict_file, read_safetensors_header
from t2i.config import from_dict
from t2i.errors import ModelLoadError, version
from t2i.models.sizes import implausible_for_file

FAMILY_KEY, CONFIG_KEY, VERSION_KEY = "t2i_family", "t2i_config", "t2i_version"
MODEL_FILE = "model.safetensors"  # what a training run of these families leaves in its folder


from t2i.errors import ModelConfigError  # noqa: E402,F401  (re-exported)


def save_model_file(path: str | Path, family: str, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: model files are safetensors; give a path ending in .safetensors")
    metadata = {FAMILY_KEY: family, CONFIG_KEY: json.dumps(config), VERSION_KEY: version(), "format": "pt"}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    metadata = read_safetensors_header(path)[1]  # the safe loader's limits and validation
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
    except (ValueError, RecursionError) as err:
        raise ModelLoadError(f"{path}: the embedded config is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: the embedded config is not a JSON object; the file is damaged")
    return found, config, load_state_dict_file(path)


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Strict load: every parameter and buffer present with the right shape, nothing extra."""
    check_tensor_kinds(module.state_dict(), tensors, path, "its embedded config")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{path} does not match its embedded config: {err}") from err


# --------------------------------------------------------------------------- whole models
# The classic families' modules (t2i.models.common.FamilyFileModel) do no I/O: these two write
# and read them, so models stay free of file code and the format lives in one place.


def save_family_file(model, path: str | Path) -> Path:
    """Write a FamilyFileModel as one safetensors file, its family and typed config embedded."""
    return save_model_file(path, model.kind, asdict(model.config), model.state_for_file())


def load_family_file(cls, path: str | Path, dtype: torch.dtype = torch.float32):
    """A `cls` (a FamilyFileModel subclass) from its file; strict: the file must hold this family,
    with tensors that match its embedded config. Eval mode, frozen unless `cls.freeze_on_load` is
    False. A config the dataclass rejects raises ModelConfigError (a ModelLoadError and a ValueError)."""
    _, config, tensors = read_model_file(path, cls.kind)
    try:  # the config is untrusted: validated and its size checked against the file before a build
        config = from_dict(cls.config_class, config, where=f"{path}: config")
        _check_size(config, tensors, path)
        model = cls(config)
    except ValueError as err:
        raise ModelConfigError(str(err)) from err
    load_into(model, cls.state_from_file(tensors, path), path)
    model = model.to(dtype).eval()
    return model.requires_grad_(False) if cls.freeze_on_load else model


def _check_size(config, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    estimate, stored = config.approx_params(), sum(t.numel() for t in tensors.values())
    if implausible_for_file(estimate, stored):
        raise ModelConfigError(f"{path}: the embedded config describes a model of about {estimate:,} parameters "
                               f"but the file stores {stored:,} values; the file is damaged or not a t2i model")
