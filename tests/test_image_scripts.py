"""SD upscale and img2img alternative test on the tiny random model: sizes, seeds, infotext, the
exactness of the inversion's bookkeeping (a UNet that predicts no noise must give the image back
exactly), errors, and the CLI. Quality on the bundled model: benchmarks/image_scripts_quality.py."""
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.errors import ParamError
from t2i.metadata import parse_infotext
from t2i.pipelines.generation_params import Img2ImgParams, Txt2ImgParams
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.script_options import Img2ImgAltOptions, SDUpscaleOptions


def _image(size=32):
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([127 + 80 * np.sin(2 * np.pi * (2 * x + y)), 127 + 60 * np.cos(6 * np.pi * x), 100 + 50 * y], -1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def session(tiny_model_dir):
    from t2i.pipelines.session import Session

    return Session(LoadSettings(model=str(tiny_model_dir), precision="full"))


def test_sd_upscale_redraws_tiles_into_a_larger_image(session):
    params = Img2ImgParams(prompt="a red circle", steps=2, seed=3, denoising_strength=0.3, n_iter=2)
    result = session.run(params, images=_image(), script=SDUpscaleOptions(scale_factor=2.0, overlap=8))
    assert [im.size for im in result.images] == [(64, 64), (64, 64)] and result.seeds == [3, 4]
    info = parse_infotext(result.infotexts[0])
    assert info["Size"] == "64x64" and info["SD upscale overlap"] == "8" and info["Seed"] == "3"
    again = session.run(replace(params, n_iter=1), images=_image(), script=SDUpscaleOptions(overlap=8))
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    # strength 0 returns every tile as it was: the blend of the tiles is the upscaled image itself
    kept = session.run(replace(params, denoising_strength=0.0, n_iter=1), images=_image(),
                       script=SDUpscaleOptions(overlap=8))
    lanczos = _image().resize((64, 64), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(kept.images[0], int) - np.asarray(lanczos, int)).max() <= 1


def test_sd_upscale_errors(session):
    params = Img2ImgParams(prompt="x", steps=1)
    with pytest.raises(ParamError, match="no upscaler 'nope'"):
        session.run(params, images=_image(), script=SDUpscaleOptions(upscaler="nope"))
    with pytest.raises(ParamError, match="overlap .* must be smaller than the tiles"):
        session.run(params, images=_image(), script=SDUpscaleOptions(overlap=32))
    with pytest.raises(ParamError, match="runs img2img"):
        session.run(Txt2ImgParams(prompt="x"), script=SDUpscaleOptions())


def test_img2img_alt_inversion_is_exact_when_the_model_predicts_no_noise(tiny_model_dir):
    """With a UNet whose noise prediction is 0, reverse Euler leaves the latents as they are and
    Euler sampling from there returns them: the output is the VAE round trip of the input. This
    pins the sigma bookkeeping (scaling, init_noise_sigma) of inversion and sampling."""
    from t2i.checkpoints.registry import load_model
    from t2i.pipelines.imageops import decode, encode, images_to_tensor
    from t2i.pipelines.img2img_alt import img2img_alt
    from t2i.runtime import Runtime

    loaded = load_model(tiny_model_dir, Runtime.auto("full", "cpu"))
    with torch.no_grad():
        loaded.model.unet.conv_out.weight.zero_()
        loaded.model.unet.conv_out.bias.zero_()
    image = _image()
    params = Img2ImgParams(prompt="a blue square", steps=4, seed=1, cfg_scale=1.0)
    result = img2img_alt(loaded, params, image, Img2ImgAltOptions(original_prompt="a red circle"))
    round_trip = decode(loaded.model, encode(loaded.model, images_to_tensor([image])))[0]
    assert np.abs(np.asarray(result.images[0], int) - np.asarray(round_trip, int)).max() <= 1
    assert parse_infotext(result.infotexts[0])["Sampler"] == "Euler"


def test_img2img_alt_through_the_session(session):
    options = Img2ImgAltOptions(original_prompt="a red circle", decode_steps=3)
    params = Img2ImgParams(prompt="a blue circle", steps=3, seed=5, batch_size=2)
    result = session.run(params, images=_image(), script=options)
    assert len(result.images) == 2 and result.seeds == [5, 6]
    # no randomness: the seed does not matter, both images come from the one inverted noise
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(result.images[1]))
    mixed = session.run(params, images=_image(), script=replace(options, randomness=0.5))
    assert not np.array_equal(np.asarray(mixed.images[0]), np.asarray(mixed.images[1]))
    info = parse_infotext(result.infotexts[0])
    assert info["Original prompt"] == "a red circle" and info["Decode steps"] == "3"


def test_cli_sd_upscale(tiny_model_dir, tmp_path):
    src = tmp_path / "in.png"
    _image().save(src)
    out = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "sd-upscale", str(src), "a red circle",
                          "--model", str(tiny_model_dir), "--steps", "1", "--seed", "2", "--scale-factor", "2",
                          "--tile-overlap", "8", "--denoising-strength", "0.3", "--outdir", str(tmp_path / "o"),
                          "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    paths = [p for p in out.stdout.split() if p.endswith(".png")]
    assert len(paths) == 1 and Image.open(paths[0]).size == (64, 64)
