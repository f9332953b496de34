"""Every image the scripts return or write is finished like a plain run's: the safety checker
(flagged: black, `NSFW: true`), face restoration, the watermark (grids included), for the X/Y/Z
plot, the prompt matrix, loopback and `--input-dir` batches; through the Session and the CLI."""
import importlib.util
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_postprocess import _save_checker

from t2i.errors import ParamError
from t2i.metadata import parse_infotext, read_infotext
from t2i.pipelines.generation_params import Img2ImgParams, Txt2ImgParams
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.loopback import LoopbackOptions
from t2i.pipelines.prompt_matrix import PromptMatrixOptions
from t2i.pipelines.xyz_plot import XYZOptions

needs_watermark = pytest.mark.skipif(importlib.util.find_spec("imwatermark") is None,
                                     reason="invisible-watermark is not installed")
needs_spandrel = pytest.mark.skipif(importlib.util.find_spec("spandrel") is None, reason="spandrel is not installed")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def _session(model_dir, **settings):
    from t2i.pipelines.session import Session

    return Session(LoadSettings(model=str(model_dir), precision="full", **settings))


def _black(image) -> bool:
    return np.asarray(image.convert("RGB")).max() == 0


def _black_pixels(image) -> int:
    return int((np.asarray(image.convert("RGB")).max(axis=2) == 0).sum())


def _input(seed=0, size=(32, 32)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def flag_all(tmp_path_factory):
    return str(_save_checker(tmp_path_factory.mktemp("checker") / "all", -2.0))


# ----------------------------------------------------------------------------- safety checker


def test_xyz_cells_and_grid_are_checked(tiny_model_dir, flag_all):
    session = _session(tiny_model_dir, safety_checker=flag_all)
    result = session.run(Txt2ImgParams(prompt="a red circle", steps=1, seed=2), script=XYZOptions(
        x="Steps: 1,2", y="CFG Scale: 1,7", draw_legend=False, include_sub_images=True))
    grid, *cells = result.outputs
    assert grid.kind == "grid" and len(cells) == 4
    assert all(_black(out.image) for out in result.outputs)  # no legend: the grid is its (black) cells
    assert all(parse_infotext(out.infotext)["NSFW"] == "true" for out in result.outputs)
    plain = _session(tiny_model_dir).run(Txt2ImgParams(prompt="a red circle", steps=1, seed=2), script=XYZOptions(
        x="Steps: 1,2", draw_legend=False, include_sub_images=True))
    assert not any(_black(out.image) for out in plain.outputs)  # the tiny model's images are not black
    assert all("NSFW" not in out.infotext for out in plain.outputs)


def test_prompt_matrix_images_and_grid_are_checked(tiny_model_dir, flag_all):
    session = _session(tiny_model_dir, safety_checker=flag_all)
    result = session.run(Txt2ImgParams(prompt="a circle|red|small", steps=1, seed=3), script=PromptMatrixOptions())
    grid, *images = result.outputs
    assert grid.kind == "grid" and len(images) == 4
    assert all(_black(out.image) for out in images)
    assert _black_pixels(grid.image) >= 4 * 32 * 32  # the labelled grid shows the 4 black images
    assert all(parse_infotext(out.infotext)["NSFW"] == "true" for out in result.outputs)


def test_loopback_frames_are_checked_each_loop(tiny_model_dir, flag_all):
    session = _session(tiny_model_dir, safety_checker=flag_all)
    result = session.run(Img2ImgParams(prompt="a cat", steps=2, seed=4, denoising_strength=0.5), images=_input(),
                         script=LoopbackOptions(loops=2))
    assert len(result.outputs) == 3 and result.outputs[-1].kind == "grid"
    assert all(_black(out.image) for out in result.outputs)
    assert all(parse_infotext(out.infotext)["NSFW"] == "true" for out in result.outputs)


def test_cli_input_dir_outputs_are_checked(tiny_model_dir, flag_all, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _input(1).save(inputs / "one.png")
    _input(2, (40, 24)).save(inputs / "two.png")
    run = _cli("img2img", "--input-dir", inputs, "a cat", "--outdir", out, "--model", tiny_model_dir, "--precision",
               "full", "--device", "cpu", "--steps", 1, "--seed", 2, "--safety-checker", flag_all, "--threads", 1)
    assert run.returncode == 0, run.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["one.png", "two.png"]
    for path in written:
        assert _black(Image.open(path)) and parse_infotext(read_infotext(path))["NSFW"] == "true"


# ----------------------------------------------------------------------------- watermark


@needs_watermark
def test_cli_xyz_cells_and_grid_carry_the_watermark(tiny_model_dir, tmp_path):
    from t2i.pipelines.watermark import bit_accuracy

    run = _cli("xyz", "a circle", "--x", "Steps: 1,2", "--width", 256, "--height", 256, "--watermark", "t2i",
               "--include-sub-images", "--outdir", tmp_path, "--model", tiny_model_dir, "--precision", "full",
               "--device", "cpu", "--seed", 1, "--threads", 1)
    assert run.returncode == 0, run.stderr
    written = [p for p in run.stdout.split() if p.endswith(".png")]
    assert len(written) == 3 and "xyz_grid-" in written[0]
    for path in written:
        assert bit_accuracy(Image.open(path), "t2i") == 1.0, path
    found = _cli("watermark", "detect", written[1], "--length", 3)
    assert found.returncode == 0 and found.stdout.strip() == "t2i", found.stderr


@needs_watermark
def test_prompt_matrix_grid_carries_the_watermark_and_small_cells_fail_first(tiny_model_dir):
    from t2i.pipelines.watermark import bit_accuracy

    session = _session(tiny_model_dir)
    result = session.run(Txt2ImgParams(prompt="a circle|red", steps=1, seed=5, width=256, height=256,
                                       watermark="t2i"), script=PromptMatrixOptions())
    assert [out.kind for out in result.outputs] == ["grid", "image", "image"]
    assert all(bit_accuracy(out.image, "t2i") == 1.0 for out in result.outputs)
    notes = []
    session._notes = notes.append
    with pytest.raises(ParamError, match="at least 256x256 pixels; this one is 32x256"):  # before any cell runs
        session.run(Txt2ImgParams(prompt="a", steps=1, width=256, height=256, watermark="t2i"),
                    script=XYZOptions(x="Width: 256,32"))
    assert not any(line.startswith("cell ") for line in notes)


# ----------------------------------------------------------------------------- face restoration


@needs_spandrel
def test_script_cells_are_face_restored_unless_flagged(tiny_model_dir, restorer_dir, flag_all):
    tools = {"upscaler_dirs": (str(restorer_dir),), "face_restorer": "restoreformer"}
    params = Txt2ImgParams(prompt="a circle|red", steps=1, seed=6, restore_faces=True)
    restored = _session(tiny_model_dir, **tools).run(params, script=PromptMatrixOptions())
    plain = _session(tiny_model_dir).run(replace(params, restore_faces=False), script=PromptMatrixOptions())
    for a, b in zip(restored.outputs, plain.outputs):
        assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert parse_infotext(a.infotext)["Face restoration"] == "restoreformer"
    flagged = _session(tiny_model_dir, safety_checker=flag_all, **tools).run(params, script=PromptMatrixOptions())
    assert all(_black(out.image) for out in flagged.outputs[1:])  # restoration never brightens a black image
    assert all("Face restoration" not in out.infotext for out in flagged.outputs)
