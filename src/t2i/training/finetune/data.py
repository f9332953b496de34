"""Training data of a fine-tuning run: the folder's images preflighted, fitted to aspect-ratio
buckets and encoded once by the base model's VAE, with the latents cached on disk.

The cache holds each image's posterior mean and standard deviation (unscaled), so every step can
draw a fresh latent sample `mean + std · ε` from the step's own random stream, as training on
the images themselves would. Its key covers the model, each file (path, size, modification
time), its bucket and crop, so a changed picture or another base model re-encodes; it is
written atomically (t2i.data.cache) and a damaged cache is rebuilt, never fatal.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from t2i.data.buckets import FittedImage, fit_to_bucket, make_buckets, square_fit
from t2i.data.cache import load_cache, save_cache
from t2i.data.captioned import Entry, scan_folder
from t2i.data.preflight import Preflight, preflight

CACHE_VERSION = 1
_SIDES = re.compile(r"\b(left|right)(?=\b|most\b|ward)", re.IGNORECASE)


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally mirrored picture: "left" and "right" trade places (as whole
    words or in leftmost/rightward), keeping their case; every other word stays."""
    def swap(match: re.Match) -> str:
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _SIDES.sub(swap, caption)


@dataclass
class Bucket:
    """The images of one training size, as cached latents."""

    size: tuple[int, int]  # (width, height) in pixels
    mean: Tensor  # (N, C, h, w) posterior means, unscaled, float32 on the CPU
    std: Tensor  # (N, C, h, w)
    captions: Tensor  # (N,) indices into TrainData.captions
    weights: Tensor  # (N,) float: how often each image counts (kohya repeats)
    original_sizes: Tensor  # (N, 2) (height, width) before fitting: SDXL's size conditioning
    crops: Tensor  # (N, 2) (top, left): SDXL's crop conditioning
    mean_flip: Tensor | None = None  # with flip augmentation: the mirrored images' latents
    std_flip: Tensor | None = None

    def __len__(self) -> int:
        return int(self.mean.shape[0])


@dataclass
class TrainData:
    captions: list[str]  # distinct captions
    buckets: list[Bucket]
    preflight: Preflight

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.buckets)

    def bucket_weights(self) -> Tensor:
        """How likely each bucket is to give a step's batch: its share of the weighted images."""
        return torch.stack([b.weights.sum() for b in self.buckets])


def bucket_step(model) -> int:
    """Pixel multiple every training size must be: the VAE's factor times the UNet's downsampling."""
    levels = len(model.unet.config.block_out_channels)
    return int(model.vae_scale_factor) * 2 ** (levels - 1)


def fitter(model, resolution: int, use_buckets: bool, max_aspect: float):
    """prepare(entry, image) for the preflight: the image fitted to its bucket."""
    step = bucket_step(model)
    if resolution % step:
        raise ValueError(f"resolution {resolution} must be a multiple of {step} for this model")
    if not use_buckets:
        return lambda entry, image: square_fit(image, resolution)
    buckets = make_buckets(resolution, step, max_aspect)
    return lambda entry, image: fit_to_bucket(image, buckets)


def _cache_key(model_id: str, images: list[tuple[Entry, FittedImage]], flip: bool) -> str:
    files = []
    for entry, fitted in images:
        stat = entry.path.stat()
        files.append([str(entry.path.resolve()), stat.st_size, stat.st_mtime_ns, fitted.bucket, fitted.crop_top_left])
    text = json.dumps({"v": CACHE_VERSION, "model": model_id, "flip": flip, "files": files})
    return hashlib.sha256(text.encode()).hexdigest()


@torch.no_grad()
def _encode(vae, pixels: np.ndarray, batch: int) -> tuple[Tensor, Tensor]:
    """(N, H, W, 3) uint8 -> posterior (mean, std), each (N, C, h, w) float32 on the CPU."""
    param = next(vae.parameters())
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        x = torch.from_numpy(pixels[i:i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        dist = vae.encode(x.to(param.device, param.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def encode_images(model, images: list[FittedImage], flip: bool) -> dict[str, list[Tensor]]:
    """Latents of every fitted image, grouped per bucket for batching, returned in input order."""
    out: dict[str, list] = {"mean": [None] * len(images), "std": [None] * len(images)}
    if flip:
        out |= {"mean_flip": [None] * len(images), "std_flip": [None] * len(images)}
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, fitted in enumerate(images):
        by_bucket.setdefault(fitted.bucket, []).append(i)
    model.vae.eval()
    for (w, h), indices in by_bucket.items():
        batch = max(1, (64 * 64 * 32) // (w * h))
        pixels = np.stack([images[i].pixels for i in indices])
        variants = [("", pixels)] + ([("_flip", pixels[:, :, ::-1].copy())] if flip else [])
        for suffix, data in variants:
            mean, std = _encode(model.vae, data, batch)
            for j, i in enumerate(indices):
                out["mean" + suffix][i], out["std" + suffix][i] = mean[j], std[j]
    return out


def load_train_data(folder: str | Path, model, model_id: str, *, resolution: int, use_buckets: bool,
                    max_aspect: float, flip: bool, default_caption: str | None, max_pixels: int,
                    cache_dir: Path, log=print, is_main: bool = True) -> TrainData:
    """Scan, preflight (report logged and written to cache_dir/../preflight.txt), bucket and encode
    `folder`; ValueError when no image can train. Only the main process writes the cache."""
    found = preflight(scan_folder(folder, default_caption), max_pixels,
                      fitter(model, resolution, use_buckets, max_aspect))
    if is_main:
        log(found.report())
    if not found.images:
        raise ValueError(f"no image in {folder} can train: {len(found.skipped)} files skipped (see the list above)")
    entries = [e for e, _ in found.images]
    fitted: list[FittedImage] = [f for _, f in found.images]
    key = _cache_key(model_id, found.images, flip)
    path = Path(cache_dir) / f"latents-{key[:16]}.pt"
    cached = load_cache(path, check=lambda v: v.get("key") == key and len(v["mean"]) == len(fitted))
    if cached is None:
        cached = {"key": key, **encode_images(model, fitted, flip)}
        if is_main:
            save_cache(cached, path)
    return _group(entries, fitted, cached, found)


def _group(entries: list[Entry], fitted: list[FittedImage], cached: dict, found: Preflight) -> TrainData:
    captions = sorted({e.caption for e in entries})
    index = {c: i for i, c in enumerate(captions)}
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for i, f in enumerate(fitted):
        by_bucket.setdefault(f.bucket, []).append(i)
    buckets = []
    for size, ids in sorted(by_bucket.items()):
        stack = lambda name: torch.stack([cached[name][i] for i in ids]) if name in cached else None  # noqa: E731
        buckets.append(Bucket(
            size=size, mean=stack("mean"), std=stack("std"),
            captions=torch.tensor([index[entries[i].caption] for i in ids]),
            weights=torch.tensor([float(entries[i].repeats) for i in ids]),
            original_sizes=torch.tensor([fitted[i].original_size for i in ids]),
            crops=torch.tensor([fitted[i].crop_top_left for i in ids]),
            mean_flip=stack("mean_flip"), std_flip=stack("std_flip")))
    return TrainData(captions, buckets, found)
