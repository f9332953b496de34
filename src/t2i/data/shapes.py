"""The built-in captioned dataset `shapes`, drawn exactly as ../shared/SHAPES.md specifies.

A sample is a pure function of (seed, index): the random generator of sample i is
`numpy.random.default_rng([seed, i])`, so any process on any machine, in any order of access,
draws the same scene, image and caption.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (40, 180, 60),
    "blue": (30, 80, 230),
    "yellow": (245, 220, 30),
    "purple": (145, 50, 180),
    "orange": (245, 130, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.25, "medium": 0.375, "large": 0.5}  # medium has no word in captions
POSITIONS = {
    "in the top left": (0.3, 0.3),
    "in the top right": (0.7, 0.3),
    "in the bottom left": (0.3, 0.7),
    "in the bottom right": (0.7, 0.7),
    "in the center": (0.5, 0.5),
}
RELATIONS = ("to the left of", "above")
# The optional parts of a single-object caption, in SHAPES.md's order. A tuple, never a set: the
# random draws are matched to parts in this order, and a set of strings iterates in an order
# that changes with PYTHONHASHSEED, which made captions differ between processes.
OPTIONAL_PARTS = ("size", "position", "background")
PAIR_SIDE = 0.3
JITTER = 0.02
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    side: float  # extent as a fraction of the canvas side
    cx: float  # centre, fractions of the canvas; y grows downwards
    cy: float


@dataclass(frozen=True)
class Scene:
    """What an image shows, and which of its attributes the caption states."""

    background: str
    objects: tuple[ShapeObject, ...]
    size: str | None = None  # single-object scenes: small / medium / large
    position: str | None = None  # single-object scenes: a key of POSITIONS
    relation: str | None = None  # two-object scenes: a member of RELATIONS
    stated: frozenset[str] = field(default_factory=lambda: frozenset({"size", "position", "background"}))

    @property
    def caption(self) -> str:
        return scene_caption(self)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(size_word: str | None, color: str, shape: str) -> str:
    words = [w for w in (size_word, color, shape) if w]
    return f"{article(words[0])} {' '.join(words)}"


def scene_caption(scene: Scene) -> str:
    """The caption of a scene, stating only the attributes in `scene.stated`."""
    if scene.relation is None:
        obj = scene.objects[0]
        size_word = scene.size if ("size" in scene.stated and scene.size != "medium") else None
        text = _noun_phrase(size_word, obj.color, obj.shape)
        if "position" in scene.stated:
            text += f" {scene.position}"
    else:
        a, b = scene.objects
        text = f"{_noun_phrase(None, a.color, a.shape)} {scene.relation} {_noun_phrase(None, b.color, b.shape)}"
    if "background" in scene.stated:
        text += f" on {article(scene.background)} {scene.background} background"
    return text


def _choice(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def sample_scene(rng: np.random.Generator, p_two: float = 0.4, p_short: float = 0.3) -> Scene:
    """Draw a random scene and which attributes its caption states."""
    if rng.random() < p_two:
        color_a, color_b, background = (COLORS[i] for i in rng.permutation(len(COLORS))[:3])
        shape_a, shape_b = _choice(rng, SHAPES), _choice(rng, SHAPES)
        relation = _choice(rng, RELATIONS)
        near, far = rng.uniform(0.2, 0.35), rng.uniform(0.65, 0.8)
        free_a, free_b = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        if relation == "to the left of":
            pos_a, pos_b = (near, free_a), (far, free_b)
        else:
            pos_a, pos_b = (free_a, near), (free_b, far)
        objects = (
            ShapeObject(shape_a, color_a, PAIR_SIDE, *pos_a),
            ShapeObject(shape_b, color_b, PAIR_SIDE, *pos_b),
        )
        stated = {"background"}
        if rng.random() < p_short:
            stated = set()
        return Scene(background, objects, relation=relation, stated=frozenset(stated))

    color, background = (COLORS[i] for i in rng.permutation(len(COLORS))[:2])
    shape = _choice(rng, SHAPES)
    size = _choice(rng, tuple(SIZES))
    position = _choice(rng, tuple(POSITIONS))
    px, py = POSITIONS[position]
    cx, cy = px + rng.uniform(-JITTER, JITTER), py + rng.uniform(-JITTER, JITTER)
    stated = {"size", "position", "background"}
    if rng.random() < p_short:
        # a shorter true caption: leave out a non-empty subset of the optional parts
        # A caption with position and background but no size word reads as medium (SHAPES.md),
        # so the size word alone may only be left out of a medium scene's caption.
        full = set(OPTIONAL_PARTS)
        while stated == full or (stated == {"position", "background"} and size != "medium"):
            stated = {part for part in OPTIONAL_PARTS if rng.random() < 0.5}
    obj = ShapeObject(shape, color, SIZES[size], cx, cy)
    return Scene(background, (obj,), size=size, position=position, stated=frozenset(stated))


def _polygon(obj: ShapeObject, canvas: int) -> list[tuple[float, float]]:
    half = obj.side / 2
    if obj.shape == "triangle":
        points = [(obj.cx, obj.cy - half), (obj.cx + half, obj.cy + half), (obj.cx - half, obj.cy + half)]
    else:
        points = [(obj.cx - half, obj.cy - half), (obj.cx + half, obj.cy + half)]
    return [(x * canvas, y * canvas) for x, y in points]


def draw_scene(scene: Scene, resolution: int = 64) -> Image.Image:
    """Render at 4x, then box-filter down: anti-aliased edges without ringing."""
    canvas = resolution * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        points = _polygon(obj, canvas)
        fill = PALETTE[obj.color]
        if obj.shape == "circle":
            # PIL's bounding box is inclusive of its last pixel
            (x0, y0), (x1, y1) = points
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif obj.shape == "square":
            (x0, y0), (x1, y1) = points
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon(points, fill=fill)
    return image.resize((resolution, resolution), Image.BOX)


class ShapesDataset:
    """Indexable, deterministic `shapes` samples: `ds[i] -> {"image", "caption", "scene"}`."""

    def __init__(self, length: int = 100_000, seed: int = 0, resolution: int = 64,
                 p_two: float = 0.4, p_short: float = 0.3):
        if resolution % 8 or resolution < 16:
            raise ValueError(f"shapes resolution must be a multiple of 8 and at least 16, got {resolution}")
        self.length, self.seed, self.resolution = length, seed, resolution
        self.p_two, self.p_short = p_two, p_short

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a shapes dataset of {self.length}")
        rng = np.random.default_rng([self.seed, index])
        return sample_scene(rng, self.p_two, self.p_short)

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        return {"image": draw_scene(scene, self.resolution), "caption": scene.caption, "scene": scene}
