"""Small helpers shared by the one-file model families (GAN, VAE, pixel-space DDPM, KL autoencoder,
VQGAN, AR transformer): image conversion, per-image noise, class lookup, and `FamilyFileModel`,
what t2i.checkpoints.family_file needs to save and load them as one safetensors file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.data.images import center_crop_resize


def to_pil_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB images (values outside the range are clipped)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(x.shape)}")
    arrays = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arrays]


def from_pil_images(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """PIL images -> (B, 3, R, R) in [-1, 1], each centre-cropped to a square and resized."""
    arrays = [np.asarray(center_crop_resize(im, resolution)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def per_image_normal(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(B, *shape) standard normal, row i drawn on the CPU from its own generator seeded with
    seeds[i]: image i of a batch equals a single run with that seed (DESIGN rule 7)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def resolve_class(class_names: tuple[str, ...], name: str | int | None, n: int) -> torch.Tensor | None:
    """Class indices (n,) for sampling: None on an unconditional model; for a conditional model,
    `name` (a class name or index) for every image, or, when None, image i gets class i mod K so a
    grid shows every class."""
    if not class_names:
        if name is not None:
            raise ValueError(f"this model is unconditional; it has no classes (got class {name!r})")
        return None
    if name is None:
        return torch.arange(n) % len(class_names)
    if isinstance(name, int):
        if not 0 <= name < len(class_names):
            raise ValueError(f"class index {name} out of range; the model has {len(class_names)} classes")
        return torch.full((n,), name)
    if name not in class_names:
        raise ValueError(f"unknown class {name!r}; this model's classes are: {', '.join(class_names)}")
    return torch.full((n,), class_names.index(name))


def check_seed_count(n: int, seed: int) -> list[int]:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return [seed + i for i in range(n)]


class FamilyFileModel:
    """What t2i.checkpoints.family_file needs to save and load a model as one safetensors file with
    the family and typed config embedded; models do no I/O themselves. Mix into an nn.Module whose
    `config` is a dataclass and whose constructor takes that config as its only required argument:

        class SuperResolution(FamilyFileModel, VAELatents, nn.Module):   # t2i.models.sr
            kind = "sr"                  # the file's t2i_family: load refuses a file of another family
            config_class = SRConfig      # rebuilt strictly from the file (unknown keys fail)

            def __init__(self, config: SRConfig): ...

        from t2i.checkpoints.family_file import load_family_file, save_family_file
        path = save_family_file(model, "run/model.safetensors")
        model = load_family_file(SuperResolution, path)   # eval mode, frozen, float32 unless dtype given

    Optional overrides: `freeze_on_load` (False keeps requires_grad on the loaded parameters) and,
    for a state whose layout on disk differs from `state_dict()` (tied weights, which safetensors
    refuses to store twice: see t2i.models.ar), `state_for_file` and `state_from_file`.
    """

    kind: str
    config_class: type
    freeze_on_load = True  # a loaded file serves inference or a later stage (a frozen first stage)

    def state_for_file(self) -> dict[str, torch.Tensor]:
        """The tensors to write (default: the whole state_dict)."""
        return self.state_dict()

    @classmethod
    def state_from_file(cls, tensors: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
        """The state_dict to load from a file's tensors (default: the tensors as they are)."""
        return tensors
