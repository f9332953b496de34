import re
import subprocess
import sys

import numpy as np
import pytest

from t2i.data.shapes import COLORS, PALETTE, POSITIONS, SIZES, ShapesDataset, draw_scene, scene_caption

SINGLE = re.compile(
    r"^an? (?:(small|large) )?(\w+) (circle|square|triangle)"
    r"(?: (in the (?:top left|top right|bottom left|bottom right|center)))?"
    r"(?: on an? (\w+) background)?$")
PAIR = re.compile(r"^an? (\w+) (circle|square|triangle) (to the left of|above) an? (\w+) (circle|square|triangle)"
                  r"(?: on an? (\w+) background)?$")


def test_same_seed_and_index_give_same_sample_in_any_order():
    a, b = ShapesDataset(seed=3), ShapesDataset(seed=3)
    for i in (5, 0, 99, 5):
        sa, sb = a[i], b[i]
        assert sa["caption"] == sb["caption"]
        assert np.array_equal(np.asarray(sa["image"]), np.asarray(sb["image"]))
    assert ShapesDataset(seed=4)[5]["caption"] != a[5]["caption"] or \
        not np.array_equal(np.asarray(ShapesDataset(seed=4)[5]["image"]), np.asarray(a[5]["image"]))


def test_same_sample_in_another_process():
    code = "from t2i.data.shapes import ShapesDataset; import hashlib, numpy as np; s = ShapesDataset(seed=1)[17]; " \
           "print(s['caption']); print(hashlib.sha256(np.asarray(s['image']).tobytes()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    import hashlib
    s = ShapesDataset(seed=1)[17]
    assert out[0] == s["caption"]
    assert out[1] == hashlib.sha256(np.asarray(s["image"]).tobytes()).hexdigest()


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_resolutions_and_background(resolution):
    ds = ShapesDataset(seed=0, resolution=resolution)
    for i in range(20):
        sample = ds[i]
        img = np.asarray(sample["image"])
        assert img.shape == (resolution, resolution, 3)
        corner = tuple(int(v) for v in img[0, 0])
        assert corner == PALETTE[sample["scene"].background]


def test_captions_follow_the_grammar_and_tell_the_truth():
    ds = ShapesDataset(length=3000, seed=2)
    shortened = pairs = 0
    for i in range(len(ds)):
        scene = ds.scene(i)
        caption = scene.caption
        bg_colors = {scene.background}
        if scene.relation is None:
            m = SINGLE.match(caption)
            assert m, caption
            size, color, shape, position, background = m.groups()
            obj = scene.objects[0]
            assert (color, shape) == (obj.color, obj.shape)
            assert color in COLORS and color != scene.background
            if size:
                assert SIZES[size] == obj.side
            elif position and background:
                assert obj.side == SIZES["medium"], caption  # full caption without a size word means medium
            if position:
                px, py = POSITIONS[position]
                assert abs(obj.cx - px) <= 0.02 and abs(obj.cy - py) <= 0.02
            shortened += not (position and background)
            assert 0 <= obj.cx - obj.side / 2 and obj.cx + obj.side / 2 <= 1
        else:
            pairs += 1
            m = PAIR.match(caption)
            assert m, caption
            ca, sa, rel, cb, sb, background = m.groups()
            a, b = scene.objects
            assert (ca, sa, cb, sb, rel) == (a.color, a.shape, b.color, b.shape, scene.relation)
            assert len({a.color, b.color} | bg_colors) == 3
            if rel == "to the left of":
                assert 0.2 <= a.cx <= 0.35 and 0.65 <= b.cx <= 0.8 and 0.3 <= a.cy <= 0.7
            else:
                assert 0.2 <= a.cy <= 0.35 and 0.65 <= b.cy <= 0.8 and 0.3 <= a.cx <= 0.7
        if background:
            assert background == scene.background
    assert 0.3 < pairs / len(ds) < 0.5
    assert shortened > 100


def test_article_before_vowel():
    ds = ShapesDataset(length=2000, seed=5)
    captions = [ds.scene(i).caption for i in range(len(ds))]
    assert any("an orange" in c for c in captions)
    assert not any(re.search(r"\ba orange\b", c) for c in captions)


def test_full_caption_example_renders_expected_pixels():
    from t2i.data.shapes import Scene, ShapeObject

    scene = Scene("black", (ShapeObject("square", "red", 0.25, 0.3, 0.3),), size="small", position="in the top left")
    assert scene_caption(scene) == "a small red square in the top left on a black background"
    img = np.asarray(draw_scene(scene, 64))
    assert tuple(img[19, 19]) == PALETTE["red"]  # centre of the square
    assert tuple(img[19, 40]) == PALETTE["black"]
    red = np.all(img == PALETTE["red"], axis=-1).sum()
    assert abs(red - 16 * 16) <= 16  # a 0.25 * 64 = 16 px square, edges anti-aliased
