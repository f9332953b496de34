"""The shapes checker against real `shapes` images: true captions pass, altered ones fail on the
altered attribute, and mild generation-like damage (noise, blur, tints, specks) changes nothing."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from t2i.data.shapes import COLORS, POSITIONS, RELATIONS, SHAPES, ShapesDataset, scene_caption
from t2i.evaluate.shapes_checker import (
    RELATION_MARGIN, CheckResult, ObjectSpec, PromptSpec, analyse_image, check, compare,
    evaluation_prompts, parse_prompt, score,
)

N_64, N_32, N_128 = 1000, 200, 100


def _analysed(n: int, resolution: int, seed: int):
    dataset = ShapesDataset(n, seed=seed, resolution=resolution)
    return [(s["scene"], s["caption"], analyse_image(s["image"])) for s in (dataset[i] for i in range(n))]


@pytest.fixture(scope="module")
def samples_64():
    return _analysed(N_64, 64, seed=0)


def _failures(samples) -> list[str]:
    failures = []
    for _, caption, detected in samples:
        result = compare(detected, parse_prompt(caption))
        if not result.correct:
            failures.append(f"{caption!r}: {result.attributes} {detected}")
    return failures


# ---------------------------------------------------------------------------- true captions

def test_true_captions_pass_at_64(samples_64):
    failures = _failures(samples_64)
    assert len(failures) <= 0.005 * N_64, "\n".join(failures[:10])
    assert not failures, "\n".join(failures)  # measured: 1000 / 1000


@pytest.mark.parametrize("resolution, n, seed", [(32, N_32, 1), (128, N_128, 2)])
def test_true_captions_pass_at_other_resolutions(resolution, n, seed):
    failures = _failures(_analysed(n, resolution, seed))
    assert not failures, "\n".join(failures[:10])


def test_detection_reads_the_scene(samples_64):
    for scene, _, detected in samples_64[:200]:
        assert detected.background == scene.background
        assert sorted((o.color, o.shape) for o in detected.objects) == sorted(
            (o.color, o.shape) for o in scene.objects)
        for obj in scene.objects:
            found = next(d for d in detected.objects if d.color == obj.color)
            assert abs(found.cx - obj.cx) < 0.02 and abs(found.cy - obj.cy) < 0.02
            assert abs(found.extent - obj.side) < 0.03


# ---------------------------------------------------------------------------- altered captions

def _other(options, *avoid):
    return next(o for o in options if o not in avoid)


def _perturbations(scene):
    """(kind, flagged attribute, caption) with exactly one stated attribute made false."""
    objects = scene.objects
    first = objects[0]
    new_color = _other(COLORS, scene.background, *(o.color for o in objects))
    yield "color", "color", scene_caption(dataclasses.replace(
        scene, objects=(dataclasses.replace(first, color=new_color),) + objects[1:]))
    new_shape = _other(SHAPES, first.shape)
    yield "shape", "shape", scene_caption(dataclasses.replace(
        scene, objects=(dataclasses.replace(first, shape=new_shape),) + objects[1:]))
    if "background" in scene.stated:
        new_background = _other(COLORS, scene.background, *(o.color for o in objects))
        yield "background", "background", scene_caption(dataclasses.replace(scene, background=new_background))
    if scene.relation is not None:
        yield "relation", "relation", scene_caption(dataclasses.replace(scene, objects=objects[::-1]))
        return
    if "position" in scene.stated:
        moved = _other(POSITIONS, scene.position)
        yield "position", "position", scene_caption(dataclasses.replace(scene, position=moved))
    for size in ("small", "medium", "large"):
        if size != scene.size:
            caption = scene_caption(dataclasses.replace(scene, size=size, stated=scene.stated | {"size"}))
            if parse_prompt(caption).size == size:  # medium only reads so with position + background
                yield "size", "size", caption


def test_one_altered_attribute_is_flagged(samples_64):
    counts, failures = {}, []
    for scene, _, detected in samples_64:
        for kind, flagged, caption in _perturbations(scene):
            result = compare(detected, parse_prompt(caption))
            expected = {name: name != flagged for name in result.attributes}
            ok = not result.correct and result.attributes == expected
            total, good = counts.get(kind, (0, 0))
            counts[kind] = (total + 1, good + ok)
            if not ok:
                failures.append(f"{kind}: {caption!r} on {scene}: {result.attributes}")
    assert set(counts) == {"color", "shape", "background", "relation", "position", "size"}
    assert all(total >= 50 for total, _ in counts.values()), counts
    assert not failures, "\n".join(failures[:10])  # measured: every kind 100%


def _expected_flags(scene, other) -> dict[str, bool]:
    """What the checker must say about `other`'s caption on `scene`'s image (what it can be sure of)."""
    spec = parse_prompt(other.caption)
    flags = {"count": len(scene.objects) == len(other.objects)}
    if spec.background is not None:
        flags["background"] = spec.background == scene.background
    if not flags["count"]:
        return flags
    if len(scene.objects) == 1:
        obj, claim = scene.objects[0], other.objects[0]
        flags["color"], flags["shape"] = obj.color == claim.color, obj.shape == claim.shape
        if spec.size is not None:
            flags["size"] = spec.size == scene.size
        if spec.position is not None:
            flags["position"] = spec.position == scene.position
        return flags
    by_color = {o.color: o for o in scene.objects}
    flags["color"] = set(by_color) == {o.color for o in other.objects}
    if flags["color"]:
        flags["shape"] = all(by_color[o.color].shape == o.shape for o in other.objects)
        a, b = (by_color[o.color] for o in other.objects)
        gap = b.cx - a.cx if other.relation == "to the left of" else b.cy - a.cy
        if abs(gap - RELATION_MARGIN) > 0.03:  # clear of the margin
            flags["relation"] = gap >= RELATION_MARGIN
    return flags


def test_captions_of_other_scenes(samples_64):
    checked = mismatched = 0
    failures = []
    for i, (scene, _, detected) in enumerate(samples_64):
        for shift in (1, 7, 31):
            other = samples_64[(i + shift) % N_64][0]
            expected = _expected_flags(scene, other)
            result = compare(detected, parse_prompt(other.caption))
            got = {name: result.attributes[name] for name in expected}
            checked += 1
            if not all(expected.values()):
                mismatched += 1
                if result.correct:
                    failures.append(f"passed {other.caption!r} on {scene}")
            if got != expected:
                failures.append(f"{other.caption!r} on {scene}: {got} != {expected}")
    assert mismatched > 0.9 * checked
    assert not failures, "\n".join(failures[:10])


# ---------------------------------------------------------------------------- robustness

def _damaged(image: Image.Image, rng: np.random.Generator, sigma: float, blur: float, tint: float):
    image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, sigma, pixels.shape) + rng.uniform(-tint, tint, 3)
    side = max(1, pixels.shape[0] // 32)
    for _ in range(3):  # specks: tiny blobs of a random colour, 1/32 of the canvas side
        y, x = rng.integers(0, pixels.shape[0] - side, 2)
        pixels[y:y + side, x:x + side] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))


@pytest.mark.parametrize("resolution, n", [(64, 200), (32, 100)])
def test_noisy_blurred_tinted_images_still_pass(resolution, n):
    dataset, rng = ShapesDataset(n, seed=3, resolution=resolution), np.random.default_rng(0)
    failures = []
    for i in range(n):
        sample = dataset[i]
        image = _damaged(sample["image"], rng, sigma=8.0, blur=0.7, tint=10.0)
        result = check(image, sample["caption"])
        if not result.correct:
            failures.append(f"{sample['caption']!r}: {result.attributes}")
    assert not failures, "\n".join(failures[:10])  # measured: 100% (also at sigma 20, blur 1.5, tint 25)


def test_empty_canvas_and_extra_object():
    blank = Image.new("RGB", (64, 64), (15, 15, 15))
    scene = analyse_image(blank)
    assert scene.background == "black" and scene.objects == ()
    result = check(blank, "a red circle on a black background")
    assert result.attributes == {"count": False, "background": True, "color": False, "shape": False}

    pair = ShapesDataset(50, seed=0)
    sample = next(pair[i] for i in range(50) if pair[i]["scene"].relation is not None)
    a, b = sample["scene"].objects
    result = check(sample["image"], f"a {a.color} {a.shape}")
    assert result.attributes == {"count": False, "color": True, "shape": True}


@pytest.mark.parametrize("draw", [
    lambda d: d.ellipse((64, 96, 191, 159), fill=(230, 25, 25)),  # 2:1 ellipse
    lambda d: d.rectangle((64, 100, 191, 155), fill=(230, 25, 25)),  # 2:1 rectangle
    lambda d: d.polygon([(80, 80), (176, 80), (128, 176)], fill=(230, 25, 25)),  # apex down
    lambda d: d.polygon([(128, 80), (176, 128), (128, 176), (80, 128)], fill=(230, 25, 25)),  # diamond
])
def test_shapes_outside_the_grammar_are_not_recognised(draw):
    image = Image.new("RGB", (256, 256), (15, 15, 15))
    draw(ImageDraw.Draw(image))
    (obj,) = analyse_image(image.resize((64, 64), Image.BOX)).objects
    assert obj.color == "red" and obj.shape is None


def test_arbitrary_images_do_not_crash():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    blocks = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.NEAREST)
    for image in (noise, blocks, Image.new("L", (32, 32), 128), Image.new("RGBA", (96, 48))):
        scene = analyse_image(image)
        assert scene.background in COLORS
        assert isinstance(check(image, "a red circle"), CheckResult)


# ---------------------------------------------------------------------------- prompts

@pytest.mark.parametrize("prompt, spec", [
    ("a red circle", PromptSpec((ObjectSpec("red", "circle"),))),
    ("a small green square", PromptSpec((ObjectSpec("green", "square"),), size="small")),
    ("a large blue triangle in the top left",
     PromptSpec((ObjectSpec("blue", "triangle"),), size="large", position="in the top left")),
    ("an orange circle on a white background", PromptSpec((ObjectSpec("orange", "circle"),), background="white")),
    ("a yellow square in the center", PromptSpec((ObjectSpec("yellow", "square"),), position="in the center")),
    ("a purple triangle in the bottom right on a black background",  # full caption, no size word: medium
     PromptSpec((ObjectSpec("purple", "triangle"),), size="medium", position="in the bottom right",
                background="black")),
    ("a small white circle in the bottom left on an orange background",
     PromptSpec((ObjectSpec("white", "circle"),), size="small", position="in the bottom left", background="orange")),
    ("a large black square on a red background",
     PromptSpec((ObjectSpec("black", "square"),), size="large", background="red")),
    ("a medium red square", PromptSpec((ObjectSpec("red", "square"),), size="medium")),
    ("a red circle to the left of a blue square",
     PromptSpec((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), relation="to the left of")),
    ("a yellow square above a purple circle on a blue background",
     PromptSpec((ObjectSpec("yellow", "square"), ObjectSpec("purple", "circle")), relation="above",
                background="blue")),
    ("  A Red  Circle In The Top Right.  ",
     PromptSpec((ObjectSpec("red", "circle"),), position="in the top right")),
])
def test_parse_prompt(prompt, spec):
    assert parse_prompt(prompt) == spec


@pytest.mark.parametrize("prompt", [
    "", "a red", "red circle", "a pink circle", "a red hexagon", "two red circles",
    "a red circle in the middle", "a red circle to the right of a blue square",
    "a huge red circle", "a red circle on a background", "a red circle on a red background",
    "a red circle above a red square", "a small red circle above a blue square",
    "a red circle in the top left above a blue square", "a red circle above a blue square in the center",
    "a red circle on a white background in the top left", "a red circle, a blue square",
])
def test_parse_prompt_rejects_text_outside_the_grammar(prompt):
    with pytest.raises(ValueError):
        parse_prompt(prompt)
    with pytest.raises(ValueError):
        check(Image.new("RGB", (32, 32)), prompt)


def test_attributes_are_what_the_prompt_states():
    image = ShapesDataset(1, seed=0)[0]["image"]
    assert set(check(image, "a red circle").attributes) == {"count", "color", "shape"}
    assert set(check(image, "a red circle in the top left on a black background").attributes) == {
        "count", "color", "shape", "size", "position", "background"}
    assert set(check(image, "a red circle above a blue square").attributes) == {
        "count", "color", "shape", "relation"}


# ---------------------------------------------------------------------------- benchmark glue

def test_evaluation_prompts_cover_the_grammar():
    prompts = evaluation_prompts(300, seed=5)
    assert len(prompts) == 300 and prompts == evaluation_prompts(300, seed=5)
    assert prompts != evaluation_prompts(300, seed=6)
    specs = [parse_prompt(p) for p in prompts]
    assert {s.relation for s in specs} == {None, *RELATIONS}
    assert {s.size for s in specs} == {None, "small", "medium", "large"}
    assert {s.position for s in specs} == {None, *POSITIONS}
    assert None in {s.background for s in specs}


def test_score():
    results = [
        CheckResult(True, {"count": True, "color": True, "shape": True}),
        CheckResult(False, {"count": True, "color": False, "shape": True, "size": True}),
        CheckResult(False, {"count": False, "color": False, "shape": False, "size": False}),
        CheckResult(True, {"count": True, "color": True, "shape": True, "relation": True}),
    ]
    summary = score(results)
    assert summary["n"] == 4 and summary["correct"] == 0.5
    assert summary["attributes"] == {"count": 0.75, "color": 0.5, "shape": 0.75, "size": 0.5, "relation": 1.0}
    with pytest.raises(ValueError):
        score([])
