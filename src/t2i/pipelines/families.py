"""Sampling from the one-file families (GAN, VAE, pixel DDPM) by what a file or run folder holds.

    loaded = load_family_model("runs/gan")          # run folder, or a model .safetensors file
    images = sample_family(loaded, n=16, seed=0, class_name="red circle")
    frames = interpolate_family(loaded, image_a, image_b, n=8)   # VAE only

A run folder gives its finished `model.safetensors`, or, while training still runs, the EMA
weights of its latest checkpoint (`<family>.ckpt`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.family_file import MODEL_FILE, read_metadata


def _gan():
    from t2i.models import gan
    from t2i.training.gan import model_from_checkpoint

    return gan.GAN, gan.sample, model_from_checkpoint


def _vae():
    from t2i.models import vae
    from t2i.training.vae import model_from_checkpoint

    return vae.ConvVAE, vae.sample, model_from_checkpoint


def _ddpm():
    from t2i.models import ddpm
    from t2i.training.ddpm import model_from_checkpoint

    return ddpm.PixelDDPM, ddpm.sample, model_from_checkpoint


# family -> lazily (model class with .load, sample function, run-checkpoint loader)
FAMILIES: dict[str, Callable[[], tuple[type, Callable, Callable]]] = {"gan": _gan, "vae": _vae, "ddpm": _ddpm}
DDPM_ONLY = ("sampler", "steps", "eta", "guidance_scale")  # options only the diffusion sampler reads


@dataclass
class FamilyModel:
    family: str
    model: object  # GAN | ConvVAE | PixelDDPM, in eval mode
    path: Path  # the file (or checkpoint) it came from

    @property
    def name(self) -> str:
        """The run folder's name for `model.safetensors` and checkpoints, else the file's stem."""
        inside_run = self.path.name == MODEL_FILE or self.path.suffix == ".ckpt"
        return self.path.parent.name if inside_run else self.path.stem


def _from_run_folder(folder: Path) -> FamilyModel:
    if (folder / MODEL_FILE).is_file():
        return _from_file(folder / MODEL_FILE)
    for family, entry in FAMILIES.items():
        ckpt = folder / f"{family}.ckpt"
        if ckpt.is_file():
            try:
                return FamilyModel(family, entry()[2](ckpt), ckpt)
            except (ValueError, KeyError):
                continue  # e.g. a latent diffusion run's vae.ckpt (stage 1)
    if (folder / "model_index.json").is_file() or (folder / "unet.ckpt").is_file():
        raise ModelLoadError(f"{folder} is a latent diffusion model or run; use `t2i generate --model`")
    raise ModelLoadError(f"{folder} holds neither {MODEL_FILE} nor a gan/vae/ddpm training checkpoint")


def _from_file(path: Path) -> FamilyModel:
    family = read_metadata(path)["t2i_family"]
    if family not in FAMILIES:
        raise ModelLoadError(f"{path} holds a {family!r} model; this t2i samples {', '.join(FAMILIES)}")
    return FamilyModel(family, FAMILIES[family]()[0].load(path), path)


def load_family_model(path: str | Path, device: str | None = None) -> FamilyModel:
    """A GAN / VAE / DDPM from a model file or a run folder, on `device` (default cpu)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; give a model .safetensors file or a run folder")
    loaded = _from_run_folder(path) if path.is_dir() else _from_file(path)
    loaded.model.to(device or "cpu")
    return loaded


def sample_family(loaded: FamilyModel, n: int = 16, seed: int = 0, class_name: str | None = None,
                  width: int | None = None, height: int | None = None, **diffusion) -> list:
    """n images (image i from seed + i). `diffusion` (sampler, steps, eta, guidance_scale) is for
    DDPM models only; None values are left to the sampler's defaults."""
    diffusion = {k: v for k, v in diffusion.items() if v is not None}
    unknown = sorted(set(diffusion) - set(DDPM_ONLY))
    if unknown:
        raise TypeError(f"unknown sampling options {unknown}")
    if diffusion and loaded.family != "ddpm":
        raise ValueError(f"{', '.join(sorted(diffusion))} only apply to ddpm models; {loaded.path} is a "
                         f"{loaded.family} model")
    sample = FAMILIES[loaded.family]()[1]
    size = {"width": width, "height": height}
    if loaded.family == "vae":
        if class_name is not None:
            raise ValueError(f"{loaded.path} is an unconditional VAE; it has no classes")
        return sample(loaded.model, n, seed, **size)
    return sample(loaded.model, n, seed, class_name, **size, **diffusion)


def interpolate_family(loaded: FamilyModel, image_a, image_b, n: int = 8) -> list:
    if loaded.family != "vae":
        raise ValueError(f"interpolation between images needs a VAE; {loaded.path} is a {loaded.family} model")
    from t2i.models.vae import interpolate

    return interpolate(loaded.model, image_a, image_b, n)
