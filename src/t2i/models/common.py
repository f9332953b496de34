"""Small helpers shared by the one-file model families (GAN, VAE, pixel-space DDPM)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_pil_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> B RGB images (values outside the range are clipped)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got shape {tuple(x.shape)}")
    arrays = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy()) for a in arrays]


def from_pil_images(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """PIL images -> (B, 3, R, R) in [-1, 1], each centre-cropped to a square and resized."""
    from t2i.data.images import center_crop_resize

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
