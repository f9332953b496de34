"""Does an image show what a `shapes` prompt says? A checker that reads only pixels and text.

It knows the dataset from ../shared/SHAPES.md alone (palette, sizes, anchors, relations) and never
sees a Scene, so it can score images that a model generated from `shapes` prompts:

    result = check(image, "a small red circle in the top left on a black background")
    result.correct, result.attributes  # False, {"count": True, "background": True, "color": True,
                                       #         "shape": True, "size": False, "position": True}

Reading an image (robust to blur, tinted colours and specks of noise, as generations have):
1. background = the palette colour that most border pixels are nearest to;
2. foreground = pixels far from the (measured) background colour; its 4-connected components
   of at least 1.5% of the canvas are object candidates, smaller ones are specks;
3. a component is split by colour: each pixel gets the palette colour that best explains it
   as a blend with the background (blur dims small objects), every colour with a solid core
   (pixels that stay after a 3x3 erosion) seeds an object, and the seeds grow over the
   component (two objects of a pair may touch);
4. each object gets a soft coverage alpha per pixel (projection onto object - background);
   its centre comes from the row/column max profiles (exact for anti-aliased edges), its shape
   from cumulants of the coverage that blur leaves alone (the skewness of y marks the apex-up
   triangle, kappa22/kappa4 tells the isotropic disk from the square), its size from its area
   over the shape's area factor (circle pi/4, square 1, triangle 1/2 of side^2).
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from t2i.data.shapes import PALETTE, POSITIONS, RELATIONS, SHAPES, SIZES, ShapesDataset

COLOR_NAMES = tuple(PALETTE)
_PALETTE_RGB = np.array([PALETTE[c] for c in COLOR_NAMES], dtype=np.float32)  # (8, 3)

MIN_AREA_FRACTION = 0.015  # components below this share of the canvas are specks
CORE_DISTANCE = 60.0  # RGB distance within which a pixel is "that colour" (or that blend)
UNMIX_ALPHA = 0.6  # an object pixel is at least this much object (blur dims small objects)
FG_DISTANCE = (30.0, 60.0)  # foreground: farther than this from the background (min, max)
MIN_ALPHA = 0.2  # coverage below this is noise, not object
POSITION_TOLERANCE = 0.1  # an object is "in the top left" when its centre is this close
RELATION_MARGIN = 0.1  # "A to the left of B": A's centre x smaller than B's by at least this
# shape cues (see _shape_cues): thresholds halfway between the shapes' values
TRIANGLE_SKEWNESS = 0.2  # |skewness| of y: triangle 0.57 (blurred to ~0.35), others 0
CIRCLE_RATIO = 1 / 6  # kappa22 / kappa4: circle 1/3, square 0
RATIO_RANGE = (-0.25, 0.7)  # outside: not a grammar shape
MAX_ASPECT = 1.5  # width / height beyond this (or its inverse): not a grammar shape
SHAPE_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / side^2
ATTRIBUTES = ("count", "background", "color", "shape", "size", "position", "relation")


# ---------------------------------------------------------------------------- prompts

@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt states; None means the prompt leaves that attribute free."""

    objects: tuple[ObjectSpec, ...]
    size: str | None = None  # single object: small / medium / large
    position: str | None = None  # single object: a key of POSITIONS
    relation: str | None = None  # two objects: a member of RELATIONS
    background: str | None = None

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes a check of this prompt scores, in ATTRIBUTES order."""
        stated = {"count", "color", "shape"}
        stated |= {name for name in ("size", "position", "relation", "background")
                   if getattr(self, name) is not None}
        return tuple(a for a in ATTRIBUTES if a in stated)


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOR, _SHAPE = f"({_alternatives(COLOR_NAMES)})", f"({_alternatives(SHAPES)})"
_BACKGROUND = rf"(?: on an? {_COLOR} background)?"
_SINGLE = re.compile(
    rf"an? (?:({_alternatives(SIZES)}) )?{_COLOR} {_SHAPE}(?: ({_alternatives(POSITIONS)}))?{_BACKGROUND}")
_PAIR = re.compile(rf"an? {_COLOR} {_SHAPE} ({_alternatives(RELATIONS)}) an? {_COLOR} {_SHAPE}{_BACKGROUND}")
_GRAMMAR = ("'a [small|large ]COLOR SHAPE[ POSITION][ on a COLOR background]' or "
            "'a COLOR SHAPE RELATION a COLOR SHAPE[ on a COLOR background]'")


def parse_prompt(prompt: str) -> PromptSpec:
    """Read a `shapes` prompt (SHAPES.md grammar; case, spacing, a final '.' and a/an are lenient).

    A size word gives the size; with no size word, a prompt that states both the position and
    the background means medium (the full caption of a medium object), any other leaves it free.
    """
    text = " ".join(prompt.lower().split()).rstrip(".").strip()
    if (m := _SINGLE.fullmatch(text)) is not None:
        size, color, shape, position, background = m.groups()
        if size is None and position is not None and background is not None:
            size = "medium"
        spec = PromptSpec((ObjectSpec(color, shape),), size=size, position=position, background=background)
    elif (m := _PAIR.fullmatch(text)) is not None:
        color_a, shape_a, relation, color_b, shape_b, background = m.groups()
        if color_a == color_b:
            raise ValueError(f"prompt {prompt!r}: the two objects of a pair must have different colours")
        objects = (ObjectSpec(color_a, shape_a), ObjectSpec(color_b, shape_b))
        spec = PromptSpec(objects, relation=relation, background=background)
    else:
        raise ValueError(f"prompt {prompt!r} is not in the shapes grammar; write {_GRAMMAR} with "
                         f"COLOR in {COLOR_NAMES}, SHAPE in {SHAPES}, POSITION in {tuple(POSITIONS)}, "
                         f"RELATION in {RELATIONS}")
    if spec.background is not None and any(o.color == spec.background for o in spec.objects):
        raise ValueError(f"prompt {prompt!r}: an object never has the background's colour")
    return spec


# ---------------------------------------------------------------------------- images

@dataclass(frozen=True)
class DetectedObject:
    color: str
    shape: str | None  # None: matches no shape prototype
    size: str  # nearest of SIZES by extent
    position: str | None  # the anchor within POSITION_TOLERANCE of the centre, else None
    cx: float  # centre of the bounding box, fractions of the canvas; y grows downwards
    cy: float
    extent: float  # side, fraction of the canvas: from the area and shape (else mean of width, height)
    area: float  # soft coverage, fraction of the canvas area
    fill: float  # area / bounding box area: circle pi/4, square 1, triangle 1/2
    skewness: float  # of the mass along y: triangle -0.57, circle and square 0
    ratio: float  # fourth cumulants kappa22 / kappa4: circle (and triangle) 1/3, square 0


@dataclass(frozen=True)
class DetectedScene:
    background: str
    objects: tuple[DetectedObject, ...]  # largest first
    width: int
    height: int


def _shift_all(mask: np.ndarray, offsets, combine) -> np.ndarray:
    h, w = mask.shape
    padded = np.pad(mask, 1, constant_values=False)
    views = [padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offsets]
    return combine.reduce(views)


_SQUARE_3X3 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_CROSS = [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)]


def _erode(mask):
    return _shift_all(mask, _SQUARE_3X3, np.logical_and)


def _dilate(mask, offsets=_SQUARE_3X3):
    return _shift_all(mask, offsets, np.logical_or)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask (depth-first fill)."""
    h, w = mask.shape
    todo = mask.ravel().tolist()
    components = []
    for start in np.flatnonzero(mask).tolist():
        if not todo[start]:
            continue
        todo[start] = False
        stack, pixels = [start], []
        while stack:
            i = stack.pop()
            pixels.append(i)
            y, x = divmod(i, w)
            for j, ok in ((i - w, y > 0), (i + w, y < h - 1), (i - 1, x > 0), (i + 1, x < w - 1)):
                if ok and todo[j]:
                    todo[j] = False
                    stack.append(j)
        component = np.zeros(h * w, dtype=bool)
        component[pixels] = True
        components.append(component.reshape(h, w))
    return components


def _background(rgb) -> tuple[int, np.ndarray, float]:
    """(palette index, measured colour, foreground threshold) from the border pixels."""
    colors = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])  # (N, 3)
    distances = np.linalg.norm(colors[:, None, :] - _PALETTE_RGB, axis=-1)  # (N, 8)
    labels, close = distances.argmin(-1), distances.min(-1) < CORE_DISTANCE
    votes = Counter((labels[close] if close.any() else labels).tolist())
    index = votes.most_common(1)[0][0]
    measured = np.median(colors[labels == index], axis=0)
    spread = np.linalg.norm(colors[labels == index] - measured, axis=1)
    threshold = float(np.clip(3.0 * np.percentile(spread, 90), *FG_DISTANCE))
    return index, measured, threshold


def _unmix(rgb, background_rgb, background) -> tuple[np.ndarray, np.ndarray]:
    """(palette index, residual) per pixel: the object colour that best explains the pixel as
    a blend `background + alpha * (colour - background)` with alpha in [UNMIX_ALPHA, 1].

    Unlike the nearest palette colour, this keeps a small blurred object's colour, whose
    every pixel is partly background (a dimmed yellow on black is not orange).
    """
    directions = _PALETTE_RGB - _PALETTE_RGB[background]  # (8, 3)
    offset = rgb - background_rgb  # (..., 3)
    norms = np.maximum((directions ** 2).sum(-1), 1.0)  # (8,)
    dots = offset @ directions.T  # (..., 8)
    alpha = np.clip(dots / norms, UNMIX_ALPHA, 1.0)
    squared = (offset ** 2).sum(-1, keepdims=True) - 2 * alpha * dots + alpha ** 2 * norms
    squared[..., background] = np.inf
    return squared.argmin(-1), np.sqrt(np.maximum(squared.min(-1), 0.0))


def _seeds(component, label, residual, min_area) -> list[tuple[int, np.ndarray]]:
    """(palette index, core mask) for every colour with a solid core inside the component."""
    core = component & (residual < CORE_DISTANCE)
    seeds = []
    for index in np.unique(label[core]).tolist():
        solid = _erode(core & (label == index))
        if solid.sum() >= max(2, 0.1 * min_area):
            seeds.append((index, solid))
    return seeds


def _grow(component, seeds) -> list[np.ndarray]:
    """Share the component's pixels among the seeds: each pixel joins the seed that reaches it first."""
    owner = np.full(component.shape, -1)
    for k, (_, solid) in enumerate(seeds):
        owner[solid & (owner < 0)] = k
    free = component & (owner < 0)
    while free.any():
        grown = False
        for k in range(len(seeds)):
            step = _dilate(owner == k, _CROSS) & free
            owner[step], free = k, free & ~step
            grown |= bool(step.any())
        if not grown:
            break
    return [owner == k for k in range(len(seeds))]


def _fallback_color(rgb, component, background_rgb, background) -> int:
    """No solid core of any palette colour: the colour that best explains the median pixel."""
    inner = _erode(component)
    median = np.median(rgb[inner if inner.any() else component], axis=0)
    label, _ = _unmix(median[None], background_rgb, background)
    return int(label[0])


def _shape_cues(alpha: np.ndarray) -> tuple[float, float]:
    """(vertical skewness, kappa22 / kappa4) of the coverage, as a mass distribution.

    Both are (nearly) blind to blur, which only adds to the second cumulants: the skewness of
    y is 0 for circles and squares and -0.57 for an apex-up triangle (mass low, y downwards);
    the mixed fourth cumulant over the mean pure one is 1/3 for a disk (isotropic) and 0 for an
    axis-aligned square (x and y independent).
    """
    h, w = alpha.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    mass = alpha.sum()

    def mean(values):
        return float((alpha * values).sum() / mass)
    x, y = xs - mean(xs), ys - mean(ys)
    var_x, var_y = mean(x * x), mean(y * y)
    kappa40, kappa04 = mean(x ** 4) - 3 * var_x ** 2, mean(y ** 4) - 3 * var_y ** 2
    kappa22 = mean(x * x * y * y) - var_x * var_y - 2 * mean(x * y) ** 2
    kappa4 = (kappa40 + kappa04) / 2
    skewness = mean(y ** 3) / max(var_y, 1e-9) ** 1.5
    return skewness, (kappa22 / kappa4 if kappa4 < 0 else 1.0)


def _classify_shape(skewness: float, ratio: float, aspect: float) -> str | None:
    if not 1 / MAX_ASPECT <= aspect <= MAX_ASPECT or not RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]:
        return None  # elongated or irregular: none of the grammar's shapes
    if skewness < -TRIANGLE_SKEWNESS:
        return "triangle"
    if skewness > TRIANGLE_SKEWNESS:
        return None  # mass high: an apex-down triangle, say
    return "circle" if ratio > CIRCLE_RATIO else "square"


def _nearest_position(cx: float, cy: float) -> str | None:
    name = min(POSITIONS, key=lambda p: np.hypot(cx - POSITIONS[p][0], cy - POSITIONS[p][1]))
    px, py = POSITIONS[name]
    return name if max(abs(cx - px), abs(cy - py)) <= POSITION_TOLERANCE else None


def _measure(rgb, region, color_index, background_rgb, background) -> DetectedObject | None:
    """Centre, shape and size of one object from its soft coverage (None: no coverage left)."""
    h, w = region.shape
    direction = _PALETTE_RGB[color_index] - _PALETTE_RGB[background]
    offset = rgb - background_rgb  # (H, W, 3)
    alpha = np.clip((offset @ direction) / max(float(direction @ direction), 1.0), 0.0, 1.0)
    off_line = np.linalg.norm(offset - alpha[..., None] * direction, axis=-1) > CORE_DISTANCE
    alpha = np.where(region & ~off_line, alpha, 0.0)  # not a blend of object and background: a speck
    alpha[alpha < MIN_ALPHA] = 0.0  # noise
    cols, rows = alpha.max(axis=0), alpha.max(axis=1)  # (W,), (H,): exact for anti-aliased edges
    width, height, area = float(cols.sum()), float(rows.sum()), float(alpha.sum())
    if area <= 0.0:
        return None
    cx = float((np.arange(w) + 0.5) @ cols) / width / w
    cy = float((np.arange(h) + 0.5) @ rows) / height / h
    skewness, ratio = _shape_cues(alpha)
    shape = _classify_shape(skewness, ratio, width / height)
    if shape is None:
        extent = (width / w + height / h) / 2
    else:  # the area is what blur and noise change least
        extent = float(np.sqrt(area / SHAPE_AREA[shape] / (w * h)))
    return DetectedObject(
        color=COLOR_NAMES[color_index], shape=shape,
        size=min(SIZES, key=lambda s: abs(SIZES[s] - extent)), position=_nearest_position(cx, cy),
        cx=cx, cy=cy, extent=extent, area=area / (w * h), fill=area / (width * height),
        skewness=skewness, ratio=ratio)


def analyse_image(image: Image.Image) -> DetectedScene:
    """Find the background and the objects of a `shapes`-style image (any side, 32-128 px tested)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    h, w = rgb.shape[:2]
    background, background_rgb, threshold = _background(rgb)
    foreground = np.linalg.norm(rgb - background_rgb, axis=-1) > threshold
    min_area = MIN_AREA_FRACTION * h * w

    label, residual = _unmix(rgb, background_rgb, background)

    found = []  # (palette index, pixel mask)
    for component in _components(foreground):
        if component.sum() < min_area:
            continue
        seeds = _seeds(component, label, residual, min_area)
        if not seeds:
            found.append((_fallback_color(rgb, component, background_rgb, background), component))
            continue
        found += [(index, part) for (index, _), part in zip(seeds, _grow(component, seeds))
                  if part.sum() >= min_area]

    objects = []
    for k, (index, mask) in enumerate(found):
        others = np.zeros_like(mask)
        for _, other in found[:k] + found[k + 1:]:
            others |= other
        region = _dilate(mask) & ~others  # one pixel more for the faint edge coverage
        objects.append(_measure(rgb, region, index, background_rgb, background))
    objects = [o for o in objects if o is not None]
    objects.sort(key=lambda o: o.area, reverse=True)
    return DetectedScene(COLOR_NAMES[background], tuple(objects), w, h)


# ---------------------------------------------------------------------------- checking

@dataclass(frozen=True)
class CheckResult:
    correct: bool
    attributes: dict[str, bool] = field(default_factory=dict)  # count + what the prompt states


def _match(wanted: tuple[ObjectSpec, ...], detected: tuple[DetectedObject, ...]):
    """The detected object (or None) for each wanted one: most colours (then shapes) agreeing."""
    candidates = list(detected[:6]) + [None] * len(wanted)

    def agreement(choice):
        pairs = [(o, d) for o, d in zip(wanted, choice) if d is not None]
        return (sum(d.color == o.color for o, d in pairs), sum(d.shape == o.shape for o, d in pairs),
                sum(d.area for _, d in pairs))
    return max(itertools.permutations(candidates, len(wanted)), key=agreement)


def _relation_holds(relation: str, a: DetectedObject, b: DetectedObject) -> bool:
    if relation == "to the left of":
        return b.cx - a.cx >= RELATION_MARGIN
    return b.cy - a.cy >= RELATION_MARGIN  # "above"


def compare(scene: DetectedScene, spec: PromptSpec) -> CheckResult:
    """Score an analysed image against a parsed prompt, attribute by attribute."""
    matched = _match(spec.objects, scene.objects)
    present = [d for d in matched if d is not None]
    complete = len(present) == len(spec.objects)
    attributes = {
        "count": len(scene.objects) == len(spec.objects),
        "background": scene.background == spec.background,
        "color": complete and all(d.color == o.color for o, d in zip(spec.objects, matched)),
        "shape": complete and all(d.shape == o.shape for o, d in zip(spec.objects, matched)),
        "size": complete and matched[0].size == spec.size,
        "position": complete and matched[0].position == spec.position,
        "relation": complete and spec.relation is not None and _relation_holds(spec.relation, *matched),
    }
    attributes = {name: bool(attributes[name]) for name in spec.attributes}
    return CheckResult(all(attributes.values()), attributes)


def check(image: Image.Image, prompt: str) -> CheckResult:
    """Does `image` show what the `shapes` prompt says? Raises ValueError for text outside the grammar."""
    return compare(analyse_image(image), parse_prompt(prompt))


# ---------------------------------------------------------------------------- benchmark glue

def evaluation_prompts(n: int, seed: int) -> list[str]:
    """n prompts from the full grammar: the captions of a `shapes` dataset (short ones included)."""
    dataset = ShapesDataset(length=n, seed=seed, p_two=0.4, p_short=0.3)
    return [dataset.scene(i).caption for i in range(n)]


def score(results: list[CheckResult]) -> dict:
    """{"n", "correct": fraction fully correct, "attributes": {name: accuracy where stated}}."""
    if not results:
        raise ValueError("score() needs at least one CheckResult")
    per_attribute = {}
    for name in ATTRIBUTES:
        values = [r.attributes[name] for r in results if name in r.attributes]
        if values:
            per_attribute[name] = sum(values) / len(values)
    return {"n": len(results), "correct": sum(r.correct for r in results) / len(results),
            "attributes": per_attribute}
