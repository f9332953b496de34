"""Sampling from the classic families by what a file or run folder holds: GAN, VAE, pixel DDPM
(unconditional, class- or text-conditional), the autoregressive transformer over VQGAN codes and
class-conditional or unconditional latent diffusion (t2i.pipelines.ldm_classes).

    loaded = load_family_model("runs/gan")          # run folder, or a model .safetensors file
    images = sample_family(loaded, n=16, seed=0, class_name="red circle")
    images = sample_family(load_family_model("runs/ddpm-text"), 4, 0, prompt="a red circle", guidance_scale=3)
    images = sample_family(load_family_model("runs/shapes-ar"), 4, 0, prompt="a red circle", top_k=32)
    images = complete_family(load_family_model("runs/shapes-ar"), photo, n=4)   # keeps the top half
    frames = interpolate_family(loaded, image_a, image_b, n=8)   # VAE only

A run folder gives its finished model file, or, while training still runs, the EMA weights of
its latest checkpoint (`<family>.ckpt`). Each family takes the sampling options it understands
(`OPTIONS`); any other option is an error that names the family.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from t2i.checkpoints.family_file import MODEL_FILE, load_family_file, read_metadata
from t2i.errors import ModelLoadError
from t2i.models import ddpm, gan, vae
from t2i.pipelines.ar_images import VQGAN_ONLY, complete_ar, load_ar_pair, sample_ar
from t2i.pipelines.ldm_classes import ldm_folder_of, load_class_ldm, sample_ldm
from t2i.training.runs import model_from_checkpoint


@dataclass(frozen=True)
class Family:
    model_cls: type  # a FamilyFileModel (t2i.checkpoints.family_file.load_family_file reads it)
    config_cls: type  # its config dataclass, as a training checkpoint embeds it
    sample: Callable
    parts: dict[str, str] | None = None  # training checkpoint module -> model attribute (see model_from_checkpoint)
    ema_part: str = ""

    def from_checkpoint(self, path: Path, family: str):
        return model_from_checkpoint(path, family, self.model_cls, self.config_cls, self.parts, self.ema_part)


def _gan() -> Family:
    return Family(gan.GAN, gan.GANConfig, gan.sample, {"generator": "generator", "discriminator": "discriminator"},
                  ema_part="generator")


def _vae() -> Family:
    return Family(vae.ConvVAE, vae.ConvVAEConfig, vae.sample)


def _ddpm() -> Family:
    return Family(ddpm.PixelDDPM, ddpm.DDPMConfig, ddpm.sample)


# family -> its Family; run folders with a model.safetensors or <family>.ckpt
FAMILIES: dict[str, Callable[[], Family]] = {"gan": _gan, "vae": _vae, "ddpm": _ddpm}
AR = "ar"  # the transformer comes with its VQGAN (t2i.pipelines.ar_images)
LDM = "ldm"  # class-conditional and unconditional latent diffusion folders (t2i.pipelines.ldm_classes)
OPTIONS = {  # sampling options beyond n, seed, class_name, width and height
    "gan": (),
    "vae": (),
    "ddpm": ("prompt", "negative_prompt", "sampler", "steps", "eta", "guidance_scale"),
    AR: ("prompt", "top_k", "top_p", "temperature", "use_cache"),
    LDM: ("sampler", "steps", "eta", "guidance_scale", "prompt", "database", "retrieval"),
}


@dataclass
class FamilyModel:
    family: str
    model: object  # GAN | ConvVAE | PixelDDPM | CodeTransformer, in eval mode
    path: Path  # the file (or checkpoint) it came from
    first_stage: object | None = field(default=None)  # the VQGAN that decodes an AR model's codes

    @property
    def name(self) -> str:
        """The run folder's name for `model.safetensors` and checkpoints, else the file's stem."""
        inside_run = self.path.name in (MODEL_FILE, "ar.safetensors", "model") or self.path.suffix == ".ckpt"
        return self.path.parent.name if inside_run else self.path.stem


def _from_run_folder(folder: Path, first_stage) -> FamilyModel:
    ldm = ldm_folder_of(folder)
    if ldm is not None:
        return FamilyModel(LDM, load_class_ldm(ldm), ldm)
    if (folder / MODEL_FILE).is_file():
        return _from_file(folder / MODEL_FILE, first_stage)
    if (folder / "ar.safetensors").is_file() or (folder / "ar.ckpt").is_file():
        return _ar(folder, first_stage)
    for family, entry in FAMILIES.items():
        ckpt = folder / f"{family}.ckpt"
        if ckpt.is_file():
            try:
                return FamilyModel(family, entry().from_checkpoint(ckpt, family), ckpt)
            except (ValueError, KeyError):
                continue  # e.g. a latent diffusion run's vae.ckpt (stage 1)
    if (folder / "vqgan.safetensors").is_file() or (folder / "vqgan.ckpt").is_file():
        raise ModelLoadError(f"{folder} {VQGAN_ONLY}")
    if (folder / "model_index.json").is_file() or (folder / "unet.ckpt").is_file():
        raise ModelLoadError(f"{folder} is a latent diffusion model or run; use `t2i generate --model`")
    raise ModelLoadError(f"{folder} holds neither {MODEL_FILE} nor a gan/vae/ddpm/ar model or training checkpoint")


def _ar(path: Path, first_stage) -> FamilyModel:
    model, vqgan, source = load_ar_pair(path, first_stage)
    return FamilyModel(AR, model, source, vqgan)


def _from_file(path: Path, first_stage) -> FamilyModel:
    family = read_metadata(path)["t2i_family"]
    if family == AR:
        return _ar(path, first_stage)
    if family == "vqgan":
        raise ModelLoadError(f"{path} {VQGAN_ONLY}")
    if family == "sr":
        raise ModelLoadError(f"{path} holds a super-resolution model: it upscales an image, use "
                             f"`t2i upscale IMAGE --model {path}`")
    if family not in FAMILIES:
        raise ModelLoadError(f"{path} holds a {family!r} model; this t2i samples {', '.join([*FAMILIES, AR])}")
    return FamilyModel(family, load_family_file(FAMILIES[family]().model_cls, path), path)


def load_family_model(path: str | Path, device: str | None = None,
                      first_stage: str | Path | None = None) -> FamilyModel:
    """A GAN / VAE / DDPM / AR transformer from a model file or a run folder, on `device` (default
    cpu). `first_stage`: an AR model's VQGAN, when it is not beside the transformer."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; give a model .safetensors file or a run folder")
    loaded = _from_run_folder(path, first_stage) if path.is_dir() else _from_file(path, first_stage)
    if first_stage is not None and loaded.family != AR:
        raise ValueError(f"first_stage is for autoregressive transformers; {path} is a {loaded.family} model")
    for module in (loaded.model, loaded.first_stage):
        if module is not None:
            module.to(device or "cpu")
    return loaded


def _check_options(loaded: FamilyModel, options: dict) -> dict:
    options = {k: v for k, v in options.items() if v is not None}
    known = {name for names in OPTIONS.values() for name in names}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown sampling options {unknown}")
    foreign = sorted(set(options) - set(OPTIONS[loaded.family]))
    if foreign:
        takers = sorted(f for f, names in OPTIONS.items() if set(foreign) & set(names))
        article = "an" if loaded.family[:1] in "aeiou" else "a"
        raise ValueError(f"{', '.join(foreign)} only apply to {'/'.join(takers)} models; {loaded.path} is {article} "
                         f"{loaded.family} model")
    return options


def sample_family(loaded: FamilyModel, n: int = 16, seed: int = 0, class_name: str | None = None,
                  width: int | None = None, height: int | None = None, **options) -> list:
    """n images (image i from seed + i). `options` (see OPTIONS): prompt, negative_prompt,
    sampler, steps, eta, guidance_scale for DDPM models; prompt, top_k, top_p, temperature,
    use_cache for AR models. None values are left to the family's defaults."""
    options = _check_options(loaded, options)
    size = {"width": width, "height": height}
    if loaded.family == AR:
        return sample_ar(loaded.model, loaded.first_stage, n, seed, class_name, **size, **options)
    if loaded.family == LDM:
        return sample_ldm(loaded.model, n, seed, class_name, **size, **options)
    sample = FAMILIES[loaded.family]().sample
    if loaded.family == "vae":
        if class_name is not None:
            raise ValueError(f"{loaded.path} is an unconditional VAE; it has no classes")
        return sample(loaded.model, n, seed, **size)
    return sample(loaded.model, n, seed, class_name, **size, **options)


def complete_family(loaded: FamilyModel, image, n: int = 4, seed: int = 0, class_name: str | None = None,
                    **options) -> list:
    """AR models: n completions of `image` that keep its top half's codes and sample the rest."""
    if loaded.family != AR:
        raise ValueError(f"image completion needs an autoregressive transformer; {loaded.path} is a "
                         f"{loaded.family} model (diffusion models complete images with `t2i inpaint`)")
    return complete_ar(loaded.model, loaded.first_stage, image, n, seed, class_name,
                       **_check_options(loaded, options))[0]


def interpolate_family(loaded: FamilyModel, image_a, image_b, n: int = 8) -> list:
    if loaded.family != "vae":
        raise ValueError(f"interpolation between images needs a VAE; {loaded.path} is a {loaded.family} model")
    return vae.interpolate(loaded.model, image_a, image_b, n)
