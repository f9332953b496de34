"""Single files that carry their own architecture: what t2i writes into the safetensors metadata
of an original-layout export, and how such a file is rebuilt.

A Stable Diffusion single file holds weights only; readers guess the architecture from tensor
shapes and supply a config for the few known ones (SD 1.x, 2.x, SDXL). t2i's own latent
diffusion models (small text encoder, few UNet levels) fit none of those, so a t2i export
embeds the configs, as strings in the safetensors header that other readers ignore:

    t2i_ldm_config            a t2i LDMConfig as JSON: the file rebuilds as a LatentDiffusion
    t2i_sd_configs            the diffusers/transformers component configs as JSON (SD models)
    modelspec.prediction_type "epsilon" or "v" (Stability AI's model-spec key; web UIs read it)
    t2i_version

Web UIs load such a file only when its shapes are those of a real SD architecture; t2i loads any
of them.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from t2i.checkpoints.component_limits import check_sd_configs
from t2i.checkpoints.convert import export_targets
from t2i.checkpoints.detect import UNET_PREFIX, VAE_PREFIX
from t2i.checkpoints.diffusers_folder import ModelLoadError, _t2i_version
from t2i.checkpoints.loaded import LoadedModel, file_hash
from t2i.checkpoints.safe_load import load_state_dict_file, read_safetensors_header, sniff_format
from t2i.checkpoints.single_file import _empty, _fill, load_single_file, load_user_model
from t2i.config import ConfigError, check_value, field_hint
from t2i.errors import ModelConfigError
from t2i.models.ldm import LatentDiffusion, LDMConfig, build_unet, build_vae
from t2i.models.sd import SDModelConfig
from t2i.models.text import build_text_encoder, load_tokenizer

LDM_CONFIG_KEY = "t2i_ldm_config"
SD_CONFIGS_KEY = "t2i_sd_configs"
PREDICTION_KEY = "modelspec.prediction_type"
VERSION_KEY = "t2i_version"
EMBEDDED_KEYS = (LDM_CONFIG_KEY, SD_CONFIGS_KEY, PREDICTION_KEY, VERSION_KEY)


def _is_ldm(model) -> bool:
    return isinstance(model, LatentDiffusion)


def _prediction(model) -> str:
    kind = model.scheduler_config().get("prediction_type", "epsilon")
    return "v" if kind == "v_prediction" else kind


def _tokenizer_info(tokenizer) -> dict:
    return {"model_max_length": int(tokenizer.model_max_length), "pad_token": str(tokenizer.pad_token)}


def single_file_metadata(model) -> dict[str, str]:
    """The metadata that lets t2i rebuild `model` (LatentDiffusion or StableDiffusionModel) from
    its single-file export."""
    meta = {"format": "pt", VERSION_KEY: _t2i_version(), PREDICTION_KEY: _prediction(model)}
    if _is_ldm(model):
        meta[LDM_CONFIG_KEY] = json.dumps(model.config.to_dict(), sort_keys=True)
        return meta
    configs = {
        "sd": model.config.to_dict(),
        "unet": json.loads(model.unet.to_json_string()),
        "vae": json.loads(model.vae.to_json_string()),
        "text_encoder": json.loads(model.text_encoder.config.to_json_string(use_diff=False)),
        "tokenizer": _tokenizer_info(model.tokenizer),
        "scheduler": model.scheduler_config(),
    }
    if model.text_encoder_2 is not None:
        configs["text_encoder_2"] = json.loads(model.text_encoder_2.config.to_json_string(use_diff=False))
        configs["tokenizer_2"] = _tokenizer_info(model.tokenizer_2)
    meta[SD_CONFIGS_KEY] = json.dumps(configs, sort_keys=True)
    return meta


def embedded_metadata(path: Path) -> dict[str, str] | None:
    """The file's t2i metadata keys, or None when it is not a safetensors file t2i wrote."""
    if not Path(path).is_file() or sniff_format(Path(path)) != "safetensors":
        return None
    metadata = read_safetensors_header(path)[1]
    if LDM_CONFIG_KEY not in metadata and SD_CONFIGS_KEY not in metadata:
        return None
    return {k: v for k, v in metadata.items() if k in EMBEDDED_KEYS}


def _json(path: Path, metadata: dict, key: str) -> dict:
    try:
        value = json.loads(metadata[key])
    except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise ModelLoadError(f"{path}: the embedded {key} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: the embedded {key} is not a JSON object; the file is damaged")
    return value


def _load_ldm(path: Path, metadata: dict, dtype: torch.dtype):
    """A LatentDiffusion from an original-layout file and its embedded LDMConfig, strictly, with
    the same memory-free fill the Stable Diffusion loader uses (single_file._empty, _fill)."""
    try:
        config = LDMConfig.from_dict(_json(path, metadata, LDM_CONFIG_KEY), where=f"{path}: {LDM_CONFIG_KEY}")
    except ConfigError as err:  # untrusted: strict types, bounded sizes, checked before anything is built
        raise ModelConfigError(f"{err} (the file's embedded config is damaged or from another t2i version)") from err
    state = load_state_dict_file(path)
    unet = _empty(lambda: build_unet(config))
    vae = _empty(lambda: build_vae(config))
    text = _empty(lambda: build_text_encoder(config.text))
    targets = export_targets("sd1", dict(unet.config), dict(vae.config))
    label = "t2i latent diffusion (config in the file)"
    _fill(unet, "UNet", state, targets["unet"], path, label, UNET_PREFIX, dtype)
    _fill(vae, "VAE", state, targets["vae"], path, label, VAE_PREFIX, dtype)
    _fill(text, "text encoder", state, targets["text_encoder"], path, label, "cond_stage_model.", dtype,
          lambda key: key.endswith("position_ids"))
    return LatentDiffusion(config, tokenizer=load_tokenizer(max_length=config.text.max_length), text_encoder=text,
                           unet=unet, vae=vae)


def write_config_folder(configs: dict, folder: Path) -> Path:
    """The embedded SD configs as the diffusers-layout config folder the loader reads."""
    def dump(sub: str, name: str, data: dict) -> None:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / sub / name).write_text(json.dumps(data), encoding="utf-8")

    for part in ("unet", "vae", "text_encoder", "scheduler"):
        if not isinstance(configs.get(part), dict):
            raise ModelLoadError(f"the embedded {SD_CONFIGS_KEY} lacks the {part} config; the file is damaged")
    dump("unet", "config.json", configs["unet"])
    dump("vae", "config.json", configs["vae"])
    dump("text_encoder", "config.json", configs["text_encoder"])
    dump("scheduler", "scheduler_config.json", configs["scheduler"])
    dump("tokenizer", "tokenizer_config.json", configs.get("tokenizer") or {})
    if "text_encoder_2" in configs:
        dump("text_encoder_2", "config.json", configs["text_encoder_2"])
        dump("tokenizer_2", "tokenizer_config.json", configs.get("tokenizer_2") or {})
    return folder


def _sd_options(configs: dict, path: Path) -> dict:
    sd = configs.get("sd") or {}
    if not isinstance(sd, dict):
        raise ModelConfigError(f"{path}: the embedded {SD_CONFIGS_KEY}.sd is not a JSON object; the file is damaged")
    return {"clip_skip": check_value(sd.get("clip_skip", 1), field_hint(SDModelConfig, "clip_skip"),
                                     f"{path}: {SD_CONFIGS_KEY}: sd.clip_skip", ModelConfigError)}


def load_embedded_single_file(path: str | Path, dtype: torch.dtype = torch.float32):
    """The model in a single file t2i exported with its configs (LatentDiffusion or
    StableDiffusionModel); None when the file carries no t2i configs."""
    path = Path(path)
    metadata = embedded_metadata(path)
    if metadata is None:
        return None
    if LDM_CONFIG_KEY in metadata:
        return _load_ldm(path, metadata, dtype)
    configs = _json(path, metadata, SD_CONFIGS_KEY)
    check_sd_configs(configs, f"{path}: {SD_CONFIGS_KEY}")
    with tempfile.TemporaryDirectory(prefix="t2i-configs-") as tmp:
        return load_single_file(path, config_dir=write_config_folder(configs, Path(tmp)), dtype=dtype,
                                **_sd_options(configs, path))


def load_embedded_model(path: str | Path, runtime):
    """A LoadedModel (web-UI name: the file stem; hash: sha256's first 10 hex) for a single file
    t2i exported with its configs; None for any other file."""
    path = Path(path)
    metadata = embedded_metadata(path)
    if metadata is None:
        return None
    if LDM_CONFIG_KEY in metadata:
        model = _load_ldm(path, metadata, runtime.load_dtype)
        runtime = runtime.for_model(model)  # as registry.load_model does for t2i folders
        return LoadedModel(runtime.place(model), path.stem, file_hash(path), path, runtime)
    configs = _json(path, metadata, SD_CONFIGS_KEY)
    check_sd_configs(configs, f"{path}: {SD_CONFIGS_KEY}")
    with tempfile.TemporaryDirectory(prefix="t2i-configs-") as tmp:
        return load_user_model(path, runtime, config_dir=write_config_folder(configs, Path(tmp)),
                               **_sd_options(configs, path))
