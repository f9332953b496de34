"""CLIP score (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image
Captioning"; the text-to-image papers' image-prompt agreement): 100 * max(cos(image, prompt), 0)
in a CLIP's embedding space, per image and averaged.

    scores = folder_clip_scores(scorer, "outputs/")   # images whose infotext holds their prompt
    summary(scores)["mean"]

The prompt is read from each image's infotext (PNG `parameters`, JPEG/WEBP EXIF); extra-network
tags (`<lora:name:0.8>`) are taken out first, since they name files, not what the image shows.
Numbers compare only under the same CLIP: t2i's bundled one knows only the `shapes` words.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from t2i.data.images import IMAGE_SUFFIXES
from t2i.errors import ParamError
from t2i.metadata import parse_infotext, read_infotext
from t2i.prompts import extract_extra_networks


@dataclass
class ScoredImage:
    path: Path
    prompt: str
    score: float  # 100 * max(cosine, 0)


def clip_scores(scorer, images: list[Image.Image], prompts: list[str]) -> list[float]:
    """CLIP score of image i against prompt i."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        return []
    cleaned = [" ".join(extract_extra_networks(p)[0].split()) for p in prompts]
    return [100.0 * max(float(c), 0.0) for c in scorer.similarity(images, cleaned)]


def prompted_images(folder: str | Path) -> tuple[list[tuple[Path, Image.Image, str]], list[Path]]:
    """([(path, image, prompt)], [paths without a prompt in their infotext]) for every image under
    `folder`, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ParamError(f"{folder} is not a folder; give a folder of images with infotext (t2i's or the web UI's outputs)")
    found, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            with Image.open(path) as im:
                im.load()
                text = read_infotext(im)
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise ParamError(f"cannot read image {path}: {err}") from err
        prompt = parse_infotext(text).get("Prompt", "").strip() if text else ""
        if prompt:
            found.append((path, image, prompt))
        else:
            skipped.append(path)
    return found, skipped


def folder_clip_scores(scorer, folder: str | Path, batch_size: int = 64) -> tuple[list[ScoredImage], list[Path]]:
    """CLIP scores of every prompted image under `folder`, and the images skipped (no prompt)."""
    found, skipped = prompted_images(folder)
    scored: list[ScoredImage] = []
    for start in range(0, len(found), batch_size):
        chunk = found[start:start + batch_size]
        values = clip_scores(scorer, [im for _, im, _ in chunk], [p for _, _, p in chunk])
        scored += [ScoredImage(path, prompt, v) for (path, _, prompt), v in zip(chunk, values)]
    return scored, skipped


def summary(scores: list[ScoredImage]) -> dict[str, float]:
    values = [s.score for s in scores]
    if not values:
        return {"n": 0, "mean": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"n": len(values), "mean": sum(values) / len(values), "min": min(values), "max": max(values)}
