"""Save and load t2i latent diffusion models as diffusers Stable Diffusion folders.

The folder is what `StableDiffusionPipeline.from_pretrained(folder)` reads offline; t2i also
writes `t2i_config.json` (the typed config and the t2i version) and loads every tensor strictly.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from t2i.models.text import bundled_tokenizer_dir

T2I_CONFIG = "t2i_config.json"
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}


def _t2i_version() -> str:
    from t2i.errors import version

    return version()


def _model_index() -> dict:
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
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
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_ldm_folder(model, directory: Path, dtype: torch.dtype | None = None) -> None:
    """Write the folder atomically: build it next to the target, then rename into place."""
    from diffusers import DDIMScheduler

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        for name in ("unet", "vae", "text_encoder"):
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
            else:
                module.save_config(str(sub))
        tok = staging / "tokenizer"
        tok.mkdir()
        for fname in ("vocab.json", "merges.txt"):
            shutil.copyfile(bundled_tokenizer_dir() / fname, tok / fname)
        _write_json(tok / "tokenizer_config.json", _tokenizer_config(model.config.text.max_length))
        _write_json(tok / "special_tokens_map.json", {k: v for k, v in _tokenizer_config(0).items() if k.endswith("_token")})
        DDIMScheduler(**model.scheduler_config()).save_config(str(staging / "scheduler"))
        _write_json(staging / "model_index.json", _model_index())
        _write_json(staging / T2I_CONFIG, {"t2i_version": _t2i_version(), "config": model.config.to_dict()})
        if directory.exists():
            backup = directory.with_name(directory.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(staging, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


from t2i.errors import ModelLoadError  # noqa: E402,F401  (re-exported for the loaders)


def load_ldm_folder(cls, directory: Path, dtype: torch.dtype = torch.float32):
    from t2i.models.ldm import LDMConfig, build_unet, build_vae
    from t2i.models.text import build_text_encoder, load_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise ModelLoadError(f"model folder {directory} does not exist; expected a t2i/diffusers folder "
                             f"with model_index.json, unet/, vae/, text_encoder/ and tokenizer/")
    meta_path = directory / T2I_CONFIG
    if not meta_path.is_file():
        raise ModelLoadError(f"{directory} has no {T2I_CONFIG}; expected a folder saved by t2i "
                             f"(`t2i train` or LatentDiffusion.save_pretrained)")
    try:
        config = LDMConfig.from_dict(json.loads(meta_path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{meta_path} is not a valid t2i config: {err}") from err
    tokenizer = load_tokenizer(directory / "tokenizer", max_length=config.text.max_length)
    parts = {"unet": build_unet(config), "vae": build_vae(config), "text_encoder": build_text_encoder(config.text)}
    for name, module in parts.items():
        path = directory / name / WEIGHTS[name]
        if not path.is_file():
            raise ModelLoadError(f"missing weights file {path}")
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises several types for corrupt files
            raise ModelLoadError(f"cannot read {path}: {err}") from err
        if name == "text_encoder":  # written with `text_model.` (older t2i: without); the module has none
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ModelLoadError(f"{path} does not match the config in {meta_path}: {err}") from err
        # nn.Module.to: diffusers' override warns on every dtype cast, even for models without fp32-only modules
        torch.nn.Module.to(module, dtype).eval().requires_grad_(False)
    return cls(config, tokenizer=tokenizer, **parts)
