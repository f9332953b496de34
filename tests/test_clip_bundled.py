"""The CLIP t2i ships (src/t2i/assets/clip, configs/shapes-clip.yaml): zero-shot accuracy floors,
`t2i interrogate` with no --clip, the API's /sdapi/v1/interrogate, and a test concept list aimed at
red images through `--safety-checker`. Floors sit below the measured figures in
BENCHMARKS.md (benchmarks/clip_zero_shot.py, benchmarks/clip_safety_concepts.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from api_helpers import Server, png_b64

from t2i.checkpoints.clip_folder import bundled_clip_dir
from t2i.data.shapes import ShapesDataset
from t2i.evaluate.clip_captions import rank_shapes
from t2i.evaluate.clip_scorer import load_scorer

RED_CONCEPTS = Path(__file__).parent / "data" / "clip_red_concepts"


@pytest.fixture(scope="module")
def scorer():
    torch.set_num_threads(1)
    return load_scorer()


def test_bundled_clip_is_small():
    size = sum(p.stat().st_size for p in bundled_clip_dir().iterdir())
    assert size < 6_000_000


def test_zero_shot_attribute_accuracy(scorer):
    ds = ShapesDataset(150, 9090, 64, p_two=0.0, p_short=0.0)
    items = [ds[i] for i in range(150)]
    ranked = rank_shapes(scorer, [it["image"] for it in items], single_only=True)
    # floors under the measured figures (BENCHMARKS.md, "CLIP"); position is below the 95% target there
    floors = {"color": 0.95, "shape": 0.9, "size": 0.9, "position": 0.45, "background": 0.95}
    for name, floor in floors.items():
        truth = [getattr(it["scene"].objects[0], name) if name in ("color", "shape")
                 else getattr(it["scene"], name) for it in items]
        accuracy = sum(r.scores[name][0] == t for r, t in zip(ranked, truth)) / len(items)
        assert accuracy >= floor, (name, accuracy)


def test_interrogate_cli_with_the_bundled_clip(tmp_path):
    ds = ShapesDataset(3, 77, 64, p_two=0.0, p_short=0.0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        ds[i]["image"].save(paths[-1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "interrogate", *map(str, paths)],
                       check=False, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    captions = [line.split("\t")[1] for line in r.stdout.strip().split("\n")]
    right = sum(c == ds[i]["caption"] for i, c in enumerate(captions))
    assert right >= 2, (captions, [ds[i]["caption"] for i in range(3)])


def test_red_concepts_block_red_images():
    """tests/data/clip_red_concepts: written by benchmarks/clip_safety_concepts.py --write."""
    from t2i.pipelines.clip_safety import ConceptSafetyChecker
    from t2i.pipelines.safety import load_safety_checker

    checker = load_safety_checker(RED_CONCEPTS)  # what `--safety-checker DIR` loads
    assert isinstance(checker, ConceptSafetyChecker) and checker.names == ["red circle", "red square", "red triangle", "red background"]
    ds = ShapesDataset(200, 5150, 64, p_two=0.0, p_short=0.0)
    items = [ds[i] for i in range(200)]
    out, flags = checker.check([it["image"] for it in items])
    red = [any(o.color == "red" for o in it["scene"].objects) or it["scene"].background == "red" for it in items]
    blocked = sum(f for f, r in zip(flags, red) if r) / sum(red)
    passed = sum(not f for f, r in zip(flags, red) if not r) / (len(red) - sum(red))
    # floors under BENCHMARKS.md's figures: the small CLIP's colour is not one clean direction, so a
    # threshold that passes nearly every other image blocks only part of the red ones
    assert blocked >= 0.35 and passed >= 0.93, (blocked, passed)
    assert any(flags)
    assert all(o.getextrema() == ((0, 0),) * 3 for o, f in zip(out, flags) if f)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_interrogate"))
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


def test_api_interrogate(server):
    ds = ShapesDataset(2, 31, 64, p_two=0.0, p_short=0.0)
    answers = [httpx.post(server.url + "/sdapi/v1/interrogate", timeout=120,
                          json={"image": png_b64(ds[i]["image"], prefix=i == 0), "model": "clip"}) for i in range(2)]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    captions = [a.json()["caption"] for a in answers]
    assert sum(c == ds[i]["caption"] for i, c in enumerate(captions)) >= 1, captions
    wrong = httpx.post(server.url + "/sdapi/v1/interrogate", json={"image": png_b64(ds[0]["image"]),
                                                                  "model": "deepdanbooru"})
    assert wrong.status_code == 422 and "clip" in wrong.text
    bad = httpx.post(server.url + "/sdapi/v1/interrogate", json={"image": "not base64!", "model": "clip"})
    assert bad.status_code == 422
