"""`shapes` captions are a pure function of (seed, index) (SHAPES.md, "Determinism"): the same in
every process, whatever PYTHONHASHSEED is. They once drew which optional parts to keep by
iterating a set of strings, whose order changes with the hash seed."""
import os
import subprocess
import sys

import numpy as np

from t2i.data.shapes import OPTIONAL_PARTS, ShapesDataset, sample_scene

CODE = ("from t2i.data.shapes import ShapesDataset\n"
        "ds = ShapesDataset(length=400, seed=7, p_short=0.9)\n"
        "print('\\n'.join(ds.scene(i).caption for i in range(400)))\n")


def _captions_with_hash_seed(hash_seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_captions_are_identical_under_two_hash_seeds():
    first, second = _captions_with_hash_seed("1"), _captions_with_hash_seed("2")
    assert len(first) == 400 and first == second
    ds = ShapesDataset(length=400, seed=7, p_short=0.9)
    assert first == [ds.scene(i).caption for i in range(400)]  # and equal to this process's
    assert len({c for c in first if "background" not in c}) > 10  # short captions were drawn


class ScriptedRng:
    """Stands in for numpy's Generator with chosen draws, to pin which draw decides which part."""

    def __init__(self, randoms):
        self.randoms = list(randoms)

    def random(self):
        return self.randoms.pop(0)

    def permutation(self, n):
        return np.arange(n)  # colours in palette order: red object, green background

    def integers(self, n):
        return 0  # circle, small, in the top left

    def uniform(self, lo, hi):
        return (lo + hi) / 2


def test_optional_parts_are_drawn_in_the_specs_order():
    assert OPTIONAL_PARTS == ("size", "position", "background")  # SHAPES.md lists them so
    # draws: one object; shorten; then keep size (0.1 < 0.5), drop position and background
    scene = sample_scene(ScriptedRng([0.9, 0.0, 0.1, 0.9, 0.9]), p_two=0.4, p_short=0.3)
    assert scene.caption == "a small red circle"
    scene = sample_scene(ScriptedRng([0.9, 0.0, 0.9, 0.9, 0.1]), p_two=0.4, p_short=0.3)
    assert scene.caption == "a red circle on a green background"
    scene = sample_scene(ScriptedRng([0.9, 0.0, 0.9, 0.1, 0.9]), p_two=0.4, p_short=0.3)
    assert scene.caption == "a red circle in the top left"
