"""Training recipes by family name: the `family:` key of a training YAML picks one.

Each entry lazily imports its recipe module and returns (config dataclass, train function);
`train(cfg, outdir, resume=...)` returns the trained model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from t2i.config import ConfigError, from_dict, read_yaml_mapping


def _ldm():
    from t2i.training.ldm import LDMTrainConfig, train_ldm

    return LDMTrainConfig, train_ldm


def _gan():
    from t2i.training.gan import GANTrainConfig, train_gan

    return GANTrainConfig, train_gan


def _vae():
    from t2i.training.vae import VAETrainConfig, train_vae

    return VAETrainConfig, train_vae


def _ddpm():
    from t2i.training.ddpm import DDPMTrainConfig, train_ddpm

    return DDPMTrainConfig, train_ddpm


def _vqgan():
    from t2i.training.vqgan import VQGANTrainConfig, train_vqgan

    return VQGANTrainConfig, train_vqgan


def _autoencoder():
    from t2i.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    return AutoencoderTrainConfig, train_autoencoder


def _ar():
    from t2i.training.ar import ARTrainConfig, train_ar

    return ARTrainConfig, train_ar


def _sr():
    from t2i.training.sr import SRTrainConfig, train_sr

    return SRTrainConfig, train_sr


def _lcm():
    from t2i.training.lcm import LCMTrainConfig, train_lcm

    return LCMTrainConfig, train_lcm


def _tiny_vae():
    from t2i.training.tiny_vae import TinyVAETrainConfig, train_tiny_vae

    return TinyVAETrainConfig, train_tiny_vae


def _clip():
    from t2i.training.clip import CLIPTrainConfig, train_clip

    return CLIPTrainConfig, train_clip


RECIPES: dict[str, Callable[[], tuple[type, Callable]]] = {
    "ldm": _ldm,
    "gan": _gan,
    "vae": _vae,
    "ddpm": _ddpm,
    "vqgan": _vqgan,
    "ar": _ar,
    "autoencoder": _autoencoder,  # a KL autoencoder alone (VQ ones: vqgan)
    "tiny_vae": _tiny_vae,  # a TAESD-style tiny decoder distilled from a model's VAE
    "lcm": _lcm,  # an LCM-LoRA distilled from a model: 2-8 step sampling (t2i generate --fast)
    "sr": _sr,  # super-resolution latent diffusion (t2i upscale)
    "clip": _clip,  # a contrastive image-text model (t2i interrogate, clip-score, the safety hook)
}
DEFAULT_FAMILY = "ldm"


def load_training_config(path: str | Path):
    """Read a training YAML -> (family, typed config, train function)."""
    path = Path(path)
    data = read_yaml_mapping(path)
    family = data.pop("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or family not in RECIPES:
        raise ConfigError(f"{path}: unknown family {family!r}; choose one of {', '.join(sorted(RECIPES))}")
    config_cls, train_fn = RECIPES[family]()
    return family, from_dict(config_cls, data, where=str(path)), train_fn
