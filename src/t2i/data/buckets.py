"""Aspect-ratio buckets (NovelAI's "aspect ratio bucketing", as kohya's trainer does it): instead
of cropping every picture to a square, each one trains at the bucket size nearest its own shape.

Buckets have about the area of a `resolution`² square, sides multiples of `step` (what the model
can downsample: the VAE factor times the UNet's; 64 px for Stable Diffusion) and an aspect ratio
of at most `max_aspect`. An image goes to the bucket whose aspect ratio is nearest its own (in
log space, so 2:1 and 1:2 are equally far from square), is scaled to cover it and centre-cropped
by what little is left over; the crop's offset is kept for SDXL's crop conditioning.

    buckets = make_buckets(64, step=16)               # [(64, 64), (48, 80), (80, 48), ...]
    fitted = fit_to_bucket(image, buckets)            # FittedImage(array (H, W, 3) uint8, ...)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class FittedImage:
    pixels: np.ndarray  # (H, W, 3) uint8, H x W = the bucket
    original_size: tuple[int, int]  # (height, width) of the picture before fitting
    crop_top_left: tuple[int, int]  # (top, left) of the crop, in pixels of the scaled picture

    @property
    def bucket(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def make_buckets(resolution: int, step: int, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets of about resolution² pixels; the square first."""
    if resolution < step or resolution % step:
        raise ValueError(f"the resolution {resolution} must be a positive multiple of {step}")
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be at least 1, got {max_aspect}")
    area = resolution * resolution
    found = {(resolution, resolution)}
    width = step
    while width <= area // step:
        height = (area // width) // step * step  # the largest height that keeps the area
        if height >= step and max(width / height, height / width) <= max_aspect:
            found.add((width, height))
        width += step
    return sorted(found, key=lambda wh: (abs(math.log(wh[0] / wh[1])), wh[0] < wh[1], wh))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(width / height)
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - aspect), -wh[0] * wh[1]))


def fit_to_bucket(image: Image.Image, buckets: list[tuple[int, int]]) -> FittedImage:
    """Scale `image` (RGB) to cover its nearest bucket, then centre-crop to it exactly."""
    w, h = image.size
    bw, bh = nearest_bucket(w, h, buckets)
    scale = max(bw / w, bh / h)
    sw, sh = max(bw, round(w * scale)), max(bh, round(h * scale))
    scaled = image.resize((sw, sh), Image.LANCZOS) if (sw, sh) != (w, h) else image
    left, top = (sw - bw) // 2, (sh - bh) // 2
    pixels = np.asarray(scaled.crop((left, top, left + bw, top + bh)).convert("RGB"), dtype=np.uint8)
    return FittedImage(pixels, (h, w), (top, left))


def square_fit(image: Image.Image, resolution: int) -> FittedImage:
    """Buckets off: centre-crop to a square and resize (what most from-scratch recipes do)."""
    return fit_to_bucket(image, [(resolution, resolution)])
