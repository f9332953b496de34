"""Start an LDM run from a trained model's UNet and text encoder (`init_from` in the LDM recipe).

A layout model learns boxes much sooner when its UNet already draws `shapes` scenes: it then only
has to learn where the boxes say things go (as GLIGEN and ControlNet start from Stable Diffusion,
and SD's inpainting model from SD with extra, zero-initialised input channels). The weights must
fit this run's config exactly, except that a layout-map UNet's first convolution has more input
channels: the source's weights fill the latent channels and the map channels start at zero, so
step 0 is exactly the source model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from t2i.checkpoints.diffusers_folder import T2I_CONFIG, WEIGHTS
from t2i.checkpoints.registry import bundled_model_dir
from t2i.checkpoints.safe_load import check_tensor_kinds, load_state_dict_file, misfit_is_load_error
from t2i.errors import ModelLoadError

INITIALISED = ("unet", "text_encoder")


def source_folder(folder: str) -> Path:
    return bundled_model_dir() if folder == "default" else Path(folder)


def source_scaling_factor(folder: str) -> float:
    """The latent scaling factor the source UNet was trained with: a run that starts from it must
    scale its latents the same way, not by its own data's spread."""
    path = source_folder(folder) / T2I_CONFIG
    try:
        return float(json.loads(path.read_text())["config"]["scaling_factor"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"init_from: cannot read the scaling factor from {path}: {err}; give a t2i model "
                             f"folder (or `default`)") from err


def _widened_conv_in(own: dict, state: dict) -> dict:
    """The source's `conv_in.weight` (out, c, 3, 3) padded with zero input channels to this UNet's."""
    mine, theirs = own.get("conv_in.weight"), state.get("conv_in.weight")
    if mine is None or theirs is None or theirs.shape == mine.shape:
        return state
    if theirs.shape[0] != mine.shape[0] or theirs.shape[2:] != mine.shape[2:] or theirs.shape[1] > mine.shape[1]:
        return state  # not a widening: the strict load below names the mismatch
    widened = torch.zeros_like(mine)
    widened[:, :theirs.shape[1]] = theirs
    return {**state, "conv_in.weight": widened}


def init_from_model(model, folder: str) -> None:
    """model.unet and model.text_encoder (when it has one) <- those of the t2i model folder
    `folder` ("default": the bundled model), strictly but for the widened first convolution."""
    root = source_folder(folder)
    for name in INITIALISED:
        module = getattr(model, name, None)
        if module is None:
            continue
        path = root / name / WEIGHTS[name]
        if not path.is_file():
            raise ModelLoadError(f"init_from: {path} does not exist; give a t2i model folder (or `default`) "
                                 f"with a {name}")
        state = load_state_dict_file(path)
        if name == "text_encoder":  # written with `text_model.`; the module has none
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        own = module.state_dict()
        if name == "unet":
            state = _widened_conv_in(own, state)
        with misfit_is_load_error(path, f"this run's model config (init_from needs the same {name} config)"):
            check_tensor_kinds(own, state, path, f"this run's model.{name} config")
            module.load_state_dict(state, strict=True)
