"""Training images with optional class labels, for the class-conditional GAN and DDPM.

Classes:
- `shapes`: colour x shape of single-object scenes ("red circle"); the class list is all
  8 x 3 = 24 pairs in palette order, whether or not the drawn sample holds each. Two-object
  scenes have no single class and are left out of class-conditional data (set `p_two: 0` to
  draw only single-object scenes).
- `folder`: the name of each image's top-level sub-directory (`folder/cat/x.png` -> "cat").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch

from t2i.config import Fraction, Seed, between
from t2i.data.images import IMAGE_SUFFIXES, load_image_source
from t2i.data.shapes import COLORS, SHAPES


@dataclass
class ImageDataConfig:
    name: Literal["shapes", "folder"] = "shapes"
    folder: str | None = None  # the image folder when name == "folder"
    size: Annotated[int, between(1, 10**9)] = 20_000  # shapes: how many samples (indices 0..size-1) to render and cache
    seed: Seed = 0
    p_two: Fraction = 0.0  # shapes: share of two-object scenes (none by default: classes need one object)
    p_short: Fraction = 0.3
    classes: bool = False  # class labels (colour x shape, or sub-directory) for conditional models


@dataclass
class LabelledImages:
    images: torch.Tensor  # (N, H, W, 3) uint8
    labels: torch.Tensor | None  # (N,) int64 indices into class_names; None when unlabelled
    class_names: tuple[str, ...]
    captions: list[str]  # one per image (text-conditional models)


SHAPES_CLASSES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
_TWO_OBJECTS = re.compile(r" (to the left of|above) ")
_COLOR_SHAPE = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


def shapes_class(caption: str) -> str | None:
    """The colour x shape class of a single-object `shapes` caption; None for two objects."""
    if _TWO_OBJECTS.search(caption):
        return None
    match = _COLOR_SHAPE.search(caption)
    if match is None:
        raise ValueError(f"not a shapes caption (no colour and shape): {caption!r}")
    return f"{match.group(1)} {match.group(2)}"


def folder_classes(folder: str | Path) -> list[str]:
    """The class of every image under `folder`, in the order `load_folder` reads them."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    loose = [p.name for p in paths if len(p.relative_to(folder).parts) < 2]
    if loose:
        raise ValueError(f"class-conditional training on a folder needs one sub-directory per class, but "
                         f"{len(loose)} image(s) lie directly in {folder} (e.g. {loose[0]}); move them into "
                         f"class folders or set data.classes: false")
    return [p.relative_to(folder).parts[0] for p in paths]


def load_labelled_images(cfg: ImageDataConfig, resolution: int, cache_dir: Path | None = None) -> LabelledImages:
    source = load_image_source(cfg, resolution, cache_dir=cache_dir)
    if not cfg.classes:
        return LabelledImages(source.images, None, (), list(source.captions))
    if cfg.name == "folder":
        names = folder_classes(cfg.folder)
        if len(names) != len(source.images):  # the folder changed between the two listings
            raise ValueError(f"{cfg.folder} changed while loading; try again")
        class_names = tuple(sorted(set(names)))
        if len(class_names) < 2:
            raise ValueError(f"{cfg.folder} has only the class {class_names}; class-conditional training "
                             f"needs at least two sub-directories")
        labels = torch.tensor([class_names.index(n) for n in names])
        return LabelledImages(source.images, labels, class_names, list(source.captions))
    classes = [shapes_class(c) for c in source.captions]
    keep = [i for i, c in enumerate(classes) if c is not None]
    if not keep:
        raise ValueError("no single-object scenes in the data; lower data.p_two for class-conditional training")
    labels = torch.tensor([SHAPES_CLASSES.index(classes[i]) for i in keep])
    images = source.images if len(keep) == len(classes) else source.images[torch.tensor(keep)]
    return LabelledImages(images, labels, SHAPES_CLASSES, [source.captions[i] for i in keep])


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
