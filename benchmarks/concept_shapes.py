"""The new shapes that benchmarks/finetune_concept.py teaches the bundled model: scenes, their
drawing in the `shapes` style (SHAPES.md: 4x supersampled, box-filtered) and the check that a
generated image shows one.

- star: a regular five-pointed star (outer diameter = the object's side, inner radius 0.382 of the
  outer). The bundled VAE (64 px, 4x downsampling) returns small and most medium stars as rounded
  blobs, so for most prompts no method that keeps the VAE can draw one (`visible` in the benchmark).
- ring: a circle of the object's side with a round hole of 0.55 of its radius, centred. Its round
  trip through the bundled VAE keeps the hole at every size (checked by eye on small, medium and
  large rings), so a method can reach 100% on every prompt.

A scene's first object is the concept; captions use the word ("a small red ring in the top left on
a black background").
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw

CONCEPTS = ("star", "ring")
STAR_INNER = 0.382  # inner / outer radius of a regular pentagram
RING_INNER = 0.55  # hole radius / outer radius
STAR_FILL, STAR_SKEWNESS = 0.66, -0.28
# kappa22 / kappa4 at least the checker's own lower bound for a compact shape (RATIO_RANGE). The
# first version asked for 1/6 (a regular pentagram's is 1/3), but generated stars with one short
# arm came out at 0.13 and -0.23 and were missed (seen by eye); on the base model's objects for 100
# ordinary prompts the looser bound calls one more of 142 objects a star (4 instead of 3).
STAR_RATIO, STRICT_RATIO = -0.25, 1 / 6
# A ring: the middle of its hole is nearer the background than the object's colour, and at least
# 7 of 8 points around the middle of its band are nearer the object's colour (a solid circle fails
# the first test, a star or a crescent the second).
RING_BAND_POINTS, RING_BAND_MIN = 8, 7


# ----------------------------------------------------------------------------- scenes and drawing


def concept_scenes(concept: str, n: int, seed: int, sizes: tuple[str, ...] | None = None, balanced: bool = False):
    """`shapes` scenes (SHAPES.md's distribution) whose first object is the concept. `sizes` (e.g.
    ("large",)) keeps single-object scenes only (two-object scenes draw side 0.3, smaller than
    medium) with the concept at one of those sizes; None is SHAPES.md's mix, as the concept prompts.
    `balanced`: large, medium and small single-object scenes and two-object scenes in turn, so 20
    pictures show each kind 5 times (SHAPES.md's mix drew 1 large ring of 20 for seed 2024)."""
    from t2i.data.shapes import SIZES, sample_scene

    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        if balanced:
            kinds = (*SIZES, "two")
            kind = kinds[::-1][i % len(kinds)]  # two-object, large, medium, small, two-object, ...
            scene = sample_scene(rng, p_two=1.0) if kind == "two" else _resized(sample_scene(rng, p_two=0.0), (kind,), rng)
        elif sizes is None:
            scene = sample_scene(rng)
        else:
            scene = _resized(sample_scene(rng, p_two=0.0), sizes, rng)
        scenes.append(replace(scene, objects=(replace(scene.objects[0], shape=concept),) + scene.objects[1:]))
    return scenes


def _resized(scene, sizes: tuple[str, ...], rng: np.random.Generator):
    """A single-object scene at one of `sizes`, its caption still true: a caption with position
    and background but no size word reads as medium (SHAPES.md), so a large or small object's
    caption then states its size."""
    from t2i.data.shapes import SIZES

    size = scene.size if scene.size in sizes else sizes[int(rng.integers(len(sizes)))]
    stated = scene.stated
    if stated == {"position", "background"} and size != "medium":
        stated = stated | {"size"}
    obj = replace(scene.objects[0], side=SIZES[size])
    return replace(scene, objects=(obj,), size=size, stated=frozenset(stated))


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), cy + r * math.sin(a))
            for k in range(10) for a, r in [(-math.pi / 2 + k * math.pi / 5, radius if k % 2 == 0 else radius * STAR_INNER)]]


def draw(scene, resolution: int = 64) -> Image.Image:
    """SHAPES.md's drawing, with the star and the ring added (here only)."""
    from t2i.data.shapes import PALETTE, SUPERSAMPLE

    canvas = resolution * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), PALETTE[scene.background])
    pen = ImageDraw.Draw(image)
    for obj in scene.objects:
        half, fill = obj.side / 2 * canvas, PALETTE[obj.color]
        cx, cy = obj.cx * canvas, obj.cy * canvas
        if obj.shape == "star":
            pen.polygon(_star(cx, cy, half), fill=fill)
        elif obj.shape == "ring":
            hole = half * RING_INNER
            pen.ellipse((cx - half, cy - half, cx + half - 1, cy + half - 1), fill=fill)
            pen.ellipse((cx - hole, cy - hole, cx + hole - 1, cy + hole - 1), fill=PALETTE[scene.background])
        elif obj.shape == "triangle":
            pen.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
        else:
            box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
            (pen.ellipse if obj.shape == "circle" else pen.rectangle)(box, fill=fill)
    return image.resize((resolution, resolution), Image.BOX)


def write_dataset(folder, concept: str, n: int, seed: int, sizes: tuple[str, ...] | None = None,
                  balanced: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(concept_scenes(concept, n, seed, sizes, balanced)):
        draw(scene).save(folder / f"{concept}-{i:03d}.png")
        (folder / f"{concept}-{i:03d}.txt").write_text(scene.caption + "\n")


# ----------------------------------------------------------------------------- checking


def is_star(obj, min_ratio: float = STAR_RATIO) -> bool:
    """Fills at most 0.66 of its bounding box (a pentagram fills 0.33, 0.46-0.59 after the VAE;
    circles fill >= 0.72 even when generated, squares >= 0.9), compact, not bottom-heavy like a
    triangle."""
    return obj.fill <= STAR_FILL and obj.skewness > STAR_SKEWNESS and obj.ratio >= min_ratio


def is_ring(image: Image.Image, obj, background: str) -> bool:
    """The object's bounding box (side from its area and fill) has a background-coloured middle
    inside a band of the object's colour (see RING_BAND_*)."""
    from t2i.data.shapes import PALETTE

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = pixels.shape[:2]
    half = math.sqrt(obj.area / max(obj.fill, 1e-6)) / 2  # fraction of the canvas
    inside, outside = np.array(PALETTE[obj.color], np.float32), np.array(PALETTE[background], np.float32)

    def nearer_object(x: float, y: float, radius_px: float = 0.0) -> bool:
        col, row = int(np.clip(x * width, 0, width - 1)), int(np.clip(y * height, 0, height - 1))
        r = int(radius_px)
        patch = pixels[max(row - r, 0):row + r + 1, max(col - r, 0):col + r + 1].reshape(-1, 3).mean(0)
        return float(np.sum((patch - inside) ** 2)) < float(np.sum((patch - outside) ** 2))

    if nearer_object(obj.cx, obj.cy, radius_px=0.4 * RING_INNER * half * width):  # well inside the hole
        return False
    band = (1 + RING_INNER) / 2 * half
    angles = [2 * math.pi * k / RING_BAND_POINTS for k in range(RING_BAND_POINTS)]
    on_band = sum(nearer_object(obj.cx + band * math.cos(a), obj.cy + band * math.sin(a)) for a in angles)
    return on_band >= RING_BAND_MIN


def concept_correct(image: Image.Image, scene, min_ratio: float = STAR_RATIO) -> tuple[bool, bool]:
    """(the concept appears in the asked colour, the rest of the prompt holds too: every other
    attribute the checker scores for the prompt read with "circle" for the concept word, except
    its size, and the other object's colour and shape)."""
    from t2i.evaluate.shapes_checker import analyse_image, compare, parse_prompt

    found = analyse_image(image)
    concept = scene.objects[0]
    candidates = [o for o in found.objects if o.color == concept.color]
    if not candidates:
        return False, False
    if concept.shape == "ring":
        appears = is_ring(image, candidates[0], found.background)
    else:
        appears = is_star(candidates[0], min_ratio)
    if not appears:
        return False, False
    spec = parse_prompt(scene.caption.replace(concept.shape, "circle"))
    attributes = compare(found, spec).attributes
    others = all(any(o.color == other.color and o.shape == other.shape for o in found.objects)
                 for other in scene.objects[1:])
    rest = all(ok for name, ok in attributes.items() if name not in ("shape", "size"))
    return True, rest and others
