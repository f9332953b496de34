"""What happens to finished images (safety checker with local weights, invisible watermark), the
CompVis --fixed-code and its flag spellings: through the Session and the CLI, on the tiny model."""
import importlib.util
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from t2i.errors import ModelLoadError, ParamError
from t2i.metadata import parse_infotext, read_infotext
from t2i.pipelines.generation_params import Txt2ImgParams
from t2i.pipelines.load_settings import LoadSettings

needs_watermark = pytest.mark.skipif(importlib.util.find_spec("imwatermark") is None,
                                     reason="invisible-watermark is not installed")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def _session(model_dir, **settings):
    from t2i.pipelines.session import Session

    return Session(LoadSettings(model=str(model_dir), precision="full", **settings))


# ----------------------------------------------------------------------------- safety checker


def _save_checker(folder, threshold: float):
    """A random-weight StableDiffusionSafetyChecker, tiny, with every concept threshold set to
    `threshold`: cosine similarity (in [-1, 1]) minus it is > 0 for every image when it is -2, never
    when it is 2."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    torch.manual_seed(0)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(text_config=small, vision_config={**small, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder)
    return folder


def test_safety_checker_blacks_out_flagged_images_and_marks_them(tiny_model_dir, tmp_path):
    params = Txt2ImgParams(prompt="a red circle", steps=2, seed=4, batch_size=2)
    flag_all = _session(tiny_model_dir, safety_checker=str(_save_checker(tmp_path / "all", -2.0))).run(params)
    assert all(np.asarray(im).max() == 0 for im in flag_all.images)
    assert all(parse_infotext(info)["NSFW"] == "true" for info in flag_all.infotexts)
    flag_none = _session(tiny_model_dir, safety_checker=str(_save_checker(tmp_path / "none", 2.0))).run(params)
    plain = _session(tiny_model_dir).run(params)
    for a, b in zip(flag_none.images, plain.images):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).max() > 0
    assert flag_none.infotexts == plain.infotexts and "NSFW" not in flag_none.infotexts[0]


def test_safety_checker_folder_errors(tmp_path):
    from t2i.pipelines.safety import load_safety_checker

    with pytest.raises(ModelLoadError, match="no config.json"):
        load_safety_checker(tmp_path)
    folder = _save_checker(tmp_path / "c", 0.0)
    (folder / "model.safetensors").rename(folder / "other.safetensors")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_safety_checker(folder)


# ----------------------------------------------------------------------------- watermark


@needs_watermark
def test_watermark_round_trip_and_jpeg_survival():
    from t2i.pipelines.watermark import bit_accuracy, put_watermark, read_watermark

    rng = np.random.default_rng(0)  # a photo-like 256x256 image: smooth colour waves and a little grain
    y, x = np.mgrid[0:256, 0:256] / 256
    waves = [127 + 80 * np.sin(2 * np.pi * (rng.uniform(1, 4) * x + rng.uniform(1, 4) * y)) for _ in range(3)]
    base = np.clip(np.stack(waves, -1) + rng.normal(0, 4, (256, 256, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    marked = put_watermark(image, "t2i")
    assert marked.size == image.size
    assert np.abs(np.asarray(marked, float) - base).mean() < 3  # invisible: a few levels at most
    assert read_watermark(marked, 3) == b"t2i" and bit_accuracy(marked, "t2i") == 1.0
    buffer = io.BytesIO()
    marked.save(buffer, "JPEG", quality=90)
    assert bit_accuracy(Image.open(buffer), "t2i") >= 0.9
    assert bit_accuracy(image, "t2i") < 0.9  # no watermark: near chance


@needs_watermark
def test_watermark_needs_256_pixels_and_fails_before_any_work(tiny_model_dir):
    from t2i.pipelines.watermark import put_watermark

    with pytest.raises(ParamError, match="at least 256x256.*64x300"):
        put_watermark(Image.new("RGB", (64, 300)), "t2i")
    lines = []
    session = _session(tiny_model_dir)
    session._notes = lines.append
    with pytest.raises(ParamError, match="at least 256x256 pixels; this one is 32x32"):
        session.run(Txt2ImgParams(prompt="x", steps=1, watermark="t2i"))


@needs_watermark
def test_generate_with_watermark_and_detect_it_from_the_cli(tiny_model_dir, tmp_path):
    out = _cli("generate", "a red circle", "--model", tiny_model_dir, "--steps", 1, "--seed", 1, "--width", 256,
               "--height", 256, "--watermark", "t2i", "--outdir", tmp_path, "--threads", 1)
    assert out.returncode == 0, out.stderr
    path = next(p for p in out.stdout.split() if p.endswith(".png"))
    found = _cli("watermark", "detect", path, "--length", 3)
    assert found.returncode == 0 and found.stdout.strip() == "t2i", found.stderr
    expect = _cli("watermark", "detect", path, "--expect", "t2i")
    assert expect.returncode == 0 and "found: 't2i', bit accuracy 1.000" in expect.stdout


# ----------------------------------------------------------------------------- fixed code


def test_fixed_code_shares_one_starting_latent_and_each_image_stays_reproducible(tiny_model_dir):
    session = _session(tiny_model_dir)
    same = session.run(Txt2ImgParams(prompt="a red circle", steps=2, seed=9, batch_size=2, n_iter=2,
                                     fixed_code=True, sampler="Euler a"))
    assert same.seeds == [9, 9, 9, 9]
    first = np.asarray(same.images[0])
    assert all(np.array_equal(first, np.asarray(im)) for im in same.images[1:])
    assert parse_infotext(same.infotexts[3])["Fixed code"] == "True"
    # with a variation strength the images differ around the one composition, each reproducible
    varied = session.run(Txt2ImgParams(prompt="a red circle", steps=2, seed=9, subseed=100, subseed_strength=0.5,
                                       batch_size=2, n_iter=2, fixed_code=True))
    assert not np.array_equal(np.asarray(varied.images[0]), np.asarray(varied.images[3]))
    alone = session.run(Txt2ImgParams(prompt="a red circle", steps=2, seed=9, subseed=103, subseed_strength=0.5,
                                      fixed_code=True))
    # as tests/test_txt2img.py: a batch of 2 and a batch of 1 may round one level apart
    assert np.abs(np.asarray(alone.images[0], int) - np.asarray(varied.images[3], int)).max() <= 1
    assert alone.infotexts[0] == varied.infotexts[3]


def test_compvis_flag_spellings(tiny_model_dir, tmp_path):
    out = _cli("generate", "a red circle", "--model", tiny_model_dir, "--steps", 1, "--seed", 5, "--n_samples", 2,
               "--n_iter", 2, "--fixed_code", "--skip_save", "--grid", "--outdir", tmp_path, "--threads", 1)
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 1 and written[0].startswith("grid-")  # --skip_save: only the grid
    info = parse_infotext(read_infotext(tmp_path / written[0]))
    assert info["Seed"] == "5" and info["Fixed code"] == "True"
    assert Image.open(tmp_path / written[0]).size == (64, 64)  # 4 images of 32 px, 2x2
