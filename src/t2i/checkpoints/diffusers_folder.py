"""Save and load t2i latent diffusion models as diffusers Stable Diffusion folders.

The folder is what `StableDiffusionPipeline.from_pretrained(folder)` reads offline; t2i also
writes `t2i_config.json` (the typed config and the t2i version) and loads every tensor strictly.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from t2i.atomic import atomic_folder
from t2i.checkpoints.safe_load import check_tensor_kinds, load_state_dict_file, read_safetensors_header
from t2i.config import ConfigError
from t2i.errors import ModelConfigError, version
from t2i.models.ldm import LatentDiffusion, LDMConfig, build_conditioner, build_unet, build_vae
from t2i.models.sizes import implausible_for_file
from t2i.models.text import build_text_encoder, bundled_tokenizer_dir, load_tokenizer

T2I_CONFIG = "t2i_config.json"
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors", "conditioner": "model.safetensors"}


def weight_parts(config: LDMConfig) -> tuple[str, ...]:
    """The sub-folders with weights: text models are a plain SD folder; class and unconditional
    models have `conditioner/` (their tokens) instead of a text encoder, layout models both."""
    return ("unet", "vae") + (("text_encoder",) if config.has_text_encoder else ()) + \
        (("conditioner",) if config.conditioning != "text" else ())


def _t2i_version() -> str:
    return version()


def _model_index(text: bool = True) -> dict:
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        # class and unconditional models have none: their tokens are t2i's (conditioner/)
        "text_encoder": ["transformers", "CLIPTextModel"] if text else [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"] if text else [None, None],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _tokenizer_config(max_length: int) -> dict:
    return {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "do_lower_case": True,
        "errors": "replace",
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")  # inside a staging folder


def save_ldm_folder(model, directory: Path, dtype: torch.dtype | None = None) -> None:
    """Write the folder atomically (t2i.atomic.atomic_folder): build it next to the target, then
    rename into place, replacing an old folder only at that last step."""
    from diffusers import DDIMScheduler

    with atomic_folder(directory, replace=True) as staging:
        for name in weight_parts(model.config):
            module = getattr(model, name)
            sub = staging / name
            sub.mkdir()
            state = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous()
                     for k, v in module.state_dict().items()}
            if name == "text_encoder":  # transformers 5 drops `text_model.`; older readers need it
                state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}
            save_file(state, str(sub / WEIGHTS[name]), metadata={"format": "pt"})
            if name == "text_encoder":
                module.config.save_pretrained(str(sub))
            elif name != "conditioner":  # its shape is in t2i_config.json
                module.save_config(str(sub))
        if model.config.has_text_encoder:
            tok = staging / "tokenizer"
            tok.mkdir()
            for fname in ("vocab.json", "merges.txt"):
                shutil.copyfile(bundled_tokenizer_dir() / fname, tok / fname)
            _write_json(tok / "tokenizer_config.json", _tokenizer_config(model.config.text.max_length))
            _write_json(tok / "special_tokens_map.json", {k: v for k, v in _tokenizer_config(0).items() if k.endswith("_token")})
        DDIMScheduler(**model.scheduler_config()).save_config(str(staging / "scheduler"))
        _write_json(staging / "model_index.json", _model_index(model.config.has_text_encoder))
        _write_json(staging / T2I_CONFIG, {"t2i_version": _t2i_version(), "config": model.config.to_dict()})


from t2i.errors import ModelLoadError  # noqa: E402,F401  (re-exported for the loaders)


def load_ldm_folder(directory: str | Path, dtype: torch.dtype = torch.float32) -> LatentDiffusion:
    """A LatentDiffusion from a folder `save_ldm_folder` wrote; every tensor loaded strictly."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"model folder {directory} does not exist; expected a t2i/diffusers folder "
                             f"with model_index.json, unet/, vae/, text_encoder/ and tokenizer/")
    meta_path = directory / T2I_CONFIG
    if not meta_path.is_file():
        raise ModelLoadError(f"{directory} has no {T2I_CONFIG}; expected a folder saved by t2i "
                             f"(`t2i train` or t2i.checkpoints.diffusers_folder.save_ldm_folder)")
    try:
        raw = json.loads(meta_path.read_text())["config"]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ModelLoadError(f"{meta_path} is not a valid t2i config: {err}") from err
    config = _checked_config(raw, directory, meta_path)
    states = {}  # every file read (and so checked) before any module is built
    for name in weight_parts(config):
        path = directory / name / WEIGHTS[name]
        if not path.is_file():
            raise ModelLoadError(f"missing weights file {path}")
        states[name] = load_state_dict_file(path)
    tokenizer = (load_tokenizer(directory / "tokenizer", max_length=config.text.max_length)
                 if config.has_text_encoder else None)
    parts = {"unet": build_unet(config), "vae": build_vae(config)}
    if config.has_text_encoder:
        parts["text_encoder"] = build_text_encoder(config.text)
    if config.conditioning != "text":
        parts["conditioner"] = build_conditioner(config)
    for name, module in parts.items():
        path, state = directory / name / WEIGHTS[name], states.pop(name)
        if name == "text_encoder":  # written with `text_model.` (older t2i: without); the module has none
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        check_tensor_kinds(module.state_dict(), state, path, f"the config in {meta_path}")
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ModelLoadError(f"{path} does not match the config in {meta_path}: {err}") from err
        # nn.Module.to: diffusers' override warns on every dtype cast, even for models without fp32-only modules
        torch.nn.Module.to(module, dtype).eval().requires_grad_(False)
    return LatentDiffusion(config, tokenizer=tokenizer, **parts)


def _checked_config(raw, directory: Path, meta_path: Path) -> LDMConfig:
    """The folder's config, strictly (bounded sizes), and no larger than its weight files: the
    modules are built before their weights load, so a config promising far more parameters
    than the files hold would allocate memory for nothing."""
    try:
        config = LDMConfig.from_dict(raw, where=str(meta_path))
    except ConfigError as err:
        raise ModelConfigError(str(err)) from err
    files = [directory / name / WEIGHTS[name] for name in weight_parts(config)]
    if all(path.is_file() for path in files):  # a missing one is reported by the loader
        stored = sum(math.prod(entry["shape"]) for path in files for entry in read_safetensors_header(path)[0].values())
        if implausible_for_file(config.approx_params(), stored):
            raise ModelConfigError(f"{meta_path} describes a model of about {config.approx_params():,} parameters "
                                   f"but the weight files store {stored:,} values; the folder is damaged")
    return config
