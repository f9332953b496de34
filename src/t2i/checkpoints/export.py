"""`t2i convert`: any model t2i loads, written as an original-layout single file or as a
diffusers folder.

    convert_model("my-run/model", "mine.safetensors", to="single-file")   # web UIs, ComfyUI
    convert_model("v1-5.safetensors", "v1-5/", to="diffusers")            # diffusers' from_pretrained

Sources: a t2i model folder (the bundled model: "default"), a diffusers folder, a single file
(.safetensors, or a pickle read with weights_only). Weights keep their stored precision unless
`half` asks for float16. Outputs are written atomically and never replace an existing path
unless `overwrite` is given.

Single files carry the `text_model.` level in CLIP names (older readers need it) and, in their
metadata, the configs t2i needs to rebuild the model (t2i.checkpoints.embedded). Web UIs load
them when the architecture is a real SD 1.x or SDXL one; t2i's small models load in t2i and,
through the diffusers folder, in diffusers.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.atomic import atomic_folder
from t2i.checkpoints.atomic_write import check_output, write_state_dict
from t2i.checkpoints.convert import original_state_dict
from t2i.checkpoints.diffusers_folder import T2I_CONFIG, ModelLoadError, _tokenizer_config, load_ldm_folder, save_ldm_folder
from t2i.checkpoints.embedded import load_embedded_single_file, single_file_metadata
from t2i.checkpoints.registry import bundled_model_dir
from t2i.checkpoints.safe_load import read_safetensors_header, sniff_format
from t2i.checkpoints.single_file import load_diffusers_folder, load_single_file
from t2i.models.ldm import LatentDiffusion
from t2i.models.text import bundled_tokenizer_dir

TARGETS = ("single-file", "diffusers")
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class ConvertResult:
    path: Path
    to: str
    dtype: torch.dtype
    kind: str  # what the model is: "t2i latent diffusion", "SD 1.x", ...
    hash: str | None = None  # web-UI model hash of a single file


def _stored_dtype(file: Path) -> torch.dtype:
    """The floating dtype holding most bytes of a safetensors file (float32 for pickles)."""
    if sniff_format(file) != "safetensors":
        return torch.float32
    sizes: dict[str, int] = {}
    for entry in read_safetensors_header(file)[0].values():
        span = entry["data_offsets"][1] - entry["data_offsets"][0]
        sizes[entry["dtype"]] = sizes.get(entry["dtype"], 0) + span
    floats = {k: v for k, v in sizes.items() if k in _SAFETENSORS_DTYPES}
    return _SAFETENSORS_DTYPES[max(floats, key=floats.get)] if floats else torch.float32


def _unet_weights(folder: Path) -> Path | None:
    found = sorted((folder / "unet").glob("*.safetensors")) + sorted((folder / "unet").glob("*.bin"))
    return found[0] if found else None


def resolve_source(path: str | Path) -> Path:
    """The model path behind IN: "default" is the bundled model; a `t2i train` run folder means
    its final model/ folder."""
    path = Path(path)
    if str(path) == "default" and not path.exists():
        return bundled_model_dir()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a model file (.safetensors, .ckpt), a diffusers or "
                                f"t2i model folder, or `default` for the bundled model")
    if path.is_dir() and not (path / "model_index.json").is_file() and (path / "model" / T2I_CONFIG).is_file():
        return path / "model"  # a training run folder
    return path


def load_for_conversion(path: str | Path, *, config_dir: str | Path | None = None,
                        prediction_type: str | None = None):
    """(model in float32 on the CPU, the precision its weights were stored in)."""
    path = resolve_source(path)
    if path.is_dir():
        weights = _unet_weights(path)
        stored = _stored_dtype(weights) if weights else torch.float32
        if (path / T2I_CONFIG).is_file():
            return load_ldm_folder(path), stored
        if (path / "model_index.json").is_file():
            return load_diffusers_folder(path, prediction_type=prediction_type), stored
        raise ModelLoadError(f"{path} is not a model folder: expected model_index.json with unet/, vae/, "
                             f"text_encoder/ and tokenizer/ (diffusers or t2i layout)")
    stored = _stored_dtype(path)
    model = None if config_dir else load_embedded_single_file(path)
    if model is None:
        model = load_single_file(path, config_dir=config_dir, prediction_type=prediction_type)
    return model, stored


def describe_model(model) -> str:
    if isinstance(model, LatentDiffusion):
        return "t2i latent diffusion"
    names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
    return names[model.config.family] + (" inpainting" if model.config.inpainting else "")


def _family(model) -> str:
    return "sd1" if describe_model(model) == "t2i latent diffusion" else model.config.family


# ----------------------------------------------------------------------------- single file


def save_single_file_with_configs(model, path: str | Path, dtype: torch.dtype | None = None) -> str:
    """Write `model` in the original single-file layout with its configs in the metadata;
    returns the file's sha256. The caller has checked the output path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: single files are written as .safetensors (the format that cannot carry code); "
                         f"name the output {path.with_suffix('.safetensors').name}")
    family = _family(model)
    if family == "sd2":
        raise ValueError("SD 2.x models cannot be written back to the original single-file layout (its dropped "
                         "last OpenCLIP layer is not in the model); convert them with --to diffusers")
    state = original_state_dict(model, family, dtype)
    return write_state_dict(path, state, single_file_metadata(model))


# ----------------------------------------------------------------------------- diffusers folder


def _model_index(model) -> dict:
    import diffusers

    xl = model.text_encoder_2 is not None
    cls = ("StableDiffusionXL" if xl else "StableDiffusion") + ("Inpaint" if model.config.inpainting else "")
    index = {"_class_name": cls + "Pipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": [None, None], "image_encoder": [None, None],
             "scheduler": ["diffusers", "EulerDiscreteScheduler" if xl else "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    if xl:
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"], "force_zeros_for_empty_prompt": True})
        if model.config.inpainting:
            index["requires_aesthetics_score"] = False
    else:
        index.update({"safety_checker": [None, None], "requires_safety_checker": False})
    return index


def _text_state(module) -> dict[str, torch.Tensor]:
    """A CLIP text encoder's tensors named as every transformers version reads them: transformers
    5 saves CLIPTextModel without `text_model.`, which older versions silently ignore."""
    from transformers import CLIPTextModel

    state = module.state_dict()
    if isinstance(module, CLIPTextModel):
        state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()}
    return state


def _write_tokenizer(tokenizer, folder: Path) -> None:
    folder.mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(bundled_tokenizer_dir() / name, folder / name)
    config = {**_tokenizer_config(int(tokenizer.model_max_length)), "pad_token": str(tokenizer.pad_token)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    special = {k: v for k, v in config.items() if k.endswith("_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def _save_sd_folder(model, folder: Path, dtype: torch.dtype | None) -> None:
    import diffusers

    # built in a staging folder renamed into place (t2i.atomic): an old folder is replaced only
    # at the last step, and a failure leaves nothing behind
    with atomic_folder(folder, replace=True) as staging:
        index = _model_index(model)
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(model, name, None)
            if module is None:
                continue
            sub = staging / name
            sub.mkdir()
            text = name.startswith("text_encoder")
            state = _text_state(module) if text else module.state_dict()
            state = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}
            weights = "model.safetensors" if text else "diffusion_pytorch_model.safetensors"
            write_state_dict(sub / weights, state, {"format": "pt"})
            if text:
                module.config.save_pretrained(str(sub))
            else:
                module.save_config(str(sub))
        _write_tokenizer(model.tokenizer, staging / "tokenizer")
        if model.tokenizer_2 is not None:
            _write_tokenizer(model.tokenizer_2, staging / "tokenizer_2")
        scheduler = {"_class_name": index["scheduler"][1], "_diffusers_version": diffusers.__version__,
                     **model.scheduler_config()}
        (staging / "scheduler").mkdir()
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_diffusers_folder(model, folder: str | Path, dtype: torch.dtype | None = None) -> None:
    """A diffusers folder (`from_pretrained` reads it offline); t2i models also get
    t2i_config.json, so t2i loads them back as t2i models."""
    folder = Path(folder)
    if describe_model(model) == "t2i latent diffusion":
        save_ldm_folder(model, folder, dtype)
    else:
        _save_sd_folder(model, folder, dtype)


# ----------------------------------------------------------------------------- entry point


def convert_model(source: str | Path, output: str | Path, to: str, *, half: bool = False, overwrite: bool = False,
                  config_dir: str | Path | None = None, prediction_type: str | None = None) -> ConvertResult:
    """Load `source` and write it to `output` as `to` ("single-file" or "diffusers")."""
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    output = Path(output)
    source_path = resolve_source(source)
    if to == "single-file" and output.suffix != ".safetensors":
        raise ValueError(f"{output}: single files are written as .safetensors; name the output "
                         f"{output.with_suffix('.safetensors').name}")
    if to == "diffusers" and output.is_file():
        raise ValueError(f"{output} is a file; a diffusers model is a folder: give a folder path")
    check_output(output, overwrite, inputs=[source_path])  # before the (slow) load
    model, stored = load_for_conversion(source_path, config_dir=config_dir, prediction_type=prediction_type)
    dtype = torch.float16 if half else stored
    kind = describe_model(model)
    if to == "single-file":
        digest = save_single_file_with_configs(model, output, dtype)
        return ConvertResult(output, to, dtype, kind, digest[:10])
    save_diffusers_folder(model, output, dtype)
    return ConvertResult(output, to, dtype, kind)
