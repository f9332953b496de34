"""Training images held in memory: the built-in `shapes` set (rendered once and cached) or a
folder of images with caption sidecars (`photo.png` + `photo.txt`, as fine-tuning tools use)."""
from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.data.cache import load_cache, save_cache
from t2i.data.shapes import ShapesDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class ImageSource:
    images: torch.Tensor  # (N, H, W, 3) uint8
    captions: list[str]


def _render_chunk(args) -> tuple[np.ndarray, list[str]]:
    dataset, start, stop = args
    samples = [dataset[i] for i in range(start, stop)]
    return np.stack([np.asarray(s["image"]) for s in samples]), [s["caption"] for s in samples]


def render_shapes(dataset: ShapesDataset, workers: int = 2) -> ImageSource:
    chunk = 2_000
    jobs = [(dataset, i, min(i + chunk, len(dataset))) for i in range(0, len(dataset), chunk)]
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(job) for job in jobs]
    images = np.concatenate([p[0] for p in parts])
    captions = [c for p in parts for c in p[1]]
    return ImageSource(torch.from_numpy(images), captions)


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.convert("RGB").crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)


def load_folder(folder: str | Path, resolution: int) -> ImageSource:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    images, captions = [], []
    for path in paths:
        with Image.open(path) as img:
            images.append(np.asarray(center_crop_resize(img, resolution)))
        sidecar = path.with_suffix(".txt")
        captions.append(sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else "")
    return ImageSource(torch.from_numpy(np.stack(images)), captions)


def load_image_source(data_cfg, resolution: int, cache_dir: Path | None = None) -> ImageSource:
    """Images and captions for training, per a DataConfig (name: shapes | folder)."""
    if data_cfg.name == "folder":
        if not data_cfg.folder:
            raise ValueError("data.name is 'folder' but data.folder is not set")
        return load_folder(data_cfg.folder, resolution)
    if data_cfg.name != "shapes":
        raise ValueError(f"unknown dataset {data_cfg.name!r}; use 'shapes' or 'folder'")
    dataset = ShapesDataset(data_cfg.size, data_cfg.seed, resolution, data_cfg.p_two, data_cfg.p_short)
    cache = None
    if cache_dir is not None:
        # v2: captions no longer depend on PYTHONHASHSEED; older caches may hold other captions
        cache = Path(cache_dir) / (f"shapes-v2-s{data_cfg.seed}-n{data_cfg.size}-r{resolution}"
                                   f"-p{data_cfg.p_two}-{data_cfg.p_short}.pt")
        data = load_cache(cache, lambda d: len(d["images"]) == len(d["captions"]) == data_cfg.size)
        if data is not None:
            return ImageSource(data["images"], list(data["captions"]))
    source = render_shapes(dataset)
    if cache is not None:
        save_cache({"images": source.images, "captions": source.captions}, cache)
    return source
