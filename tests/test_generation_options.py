"""Clip skip, tiling, the Euler noise settings (s_churn, ...) and reproducing an image from its
infotext, on tiny random models."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i.diffusion.conditioning import PromptEncoder
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import _step_kwargs, denoise
from t2i.metadata import parse_infotext, read_infotext, write_png
from t2i.models.tiling import circular_padding, padded_convs
from t2i.pipelines.infotext import params_from_infotext, read_settings
from t2i.pipelines.params import ParamError
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    """A tiny LDM whose text encoder has 2 layers (clip skip 2 needs a layer before the last)."""
    from conftest import tiny_ldm_config

    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.checkpoints.registry import load_model
    from t2i.models.ldm import LatentDiffusion
    from t2i.runtime import Runtime

    config = tiny_ldm_config()
    config.text.num_layers = 2
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("models") / "tiny2"
    save_ldm_folder(LatentDiffusion(config), path)
    return load_model(path, Runtime.auto("full", "cpu"))


def run(loaded, **kw):
    kw = {"prompt": "a red circle", "steps": 3, "seed": 7, **kw}
    return txt2img(loaded, Txt2ImgParams(**kw))


def pixels(image):
    return np.asarray(image).astype(np.int16)


# ----------------------------------------------------------------------------- clip skip


def test_clip_skip_takes_the_penultimate_layer_through_the_final_norm(two_layer):
    from t2i.models.text import final_layer_norm, tokenize

    model = two_layer.model
    ids = tokenize(model.tokenizer, ["a red circle"])
    with torch.no_grad():
        out = model.text_encoder(ids, output_hidden_states=True)
        expected = final_layer_norm(model.text_encoder)(out.hidden_states[-2])
        skipped = PromptEncoder.from_model(model, clip_skip=2).encode("a red circle")
        last = PromptEncoder.from_model(model).encode("a red circle")
    torch.testing.assert_close(skipped, expected)
    torch.testing.assert_close(last, out.last_hidden_state)
    assert not torch.allclose(skipped, last)


def test_clip_skip_changes_the_image_and_is_recorded_only_when_not_1(two_layer):
    one, two = run(two_layer), run(two_layer, clip_skip=2)
    assert not np.array_equal(pixels(one.images[0]), pixels(two.images[0]))
    assert "Clip skip" not in parse_infotext(one.infotexts[0])
    assert parse_infotext(two.infotexts[0])["Clip skip"] == "2"


def test_clip_skip_beyond_the_text_encoder_is_a_clear_error(two_layer):
    with pytest.raises(ParamError, match="at most 2"):
        run(two_layer, clip_skip=3)


def test_sd_adapter_and_prompt_encoder_agree_on_clip_skip(two_layer):
    from t2i.models.sd import SDModelConfig, StableDiffusionModel

    m = two_layer.model
    sd = StableDiffusionModel(SDModelConfig(resolution=32, clip_skip=2), tokenizer=m.tokenizer,
                              text_encoder=m.text_encoder, unet=m.unet, vae=m.vae,
                              scheduler_config=m.scheduler_config())
    with torch.no_grad():
        adapter = sd.encode_prompts(["a blue square"])
        from_config = PromptEncoder.from_model(sd).encode("a blue square")  # the model's clip skip by default
        overridden = PromptEncoder.from_model(sd, clip_skip=1).encode("a blue square")
    torch.testing.assert_close(from_config, adapter)
    assert not torch.allclose(overridden, adapter)


# ----------------------------------------------------------------------------- tiling


def test_circular_padding_is_restored_exactly_even_after_an_error(tiny_loaded):
    model = tiny_loaded.model
    convs = [c for c in model.modules() if isinstance(c, torch.nn.Conv2d)]
    before = [c.padding_mode for c in convs]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with circular_padding(model.unet, model.vae) as switched:
            assert switched == len(padded_convs(model.unet, model.vae)) > 0
            assert all(c.padding_mode == "circular" for c in padded_convs(model.unet, model.vae))
            raise RuntimeError("boom")
    assert [c.padding_mode for c in convs] == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tiling_is_recorded_and_leaves_the_model_as_it_was(tiny_loaded):
    plain = run(tiny_loaded, sampler="Euler")
    tiled = run(tiny_loaded, sampler="Euler", tiling=True)
    after = run(tiny_loaded, sampler="Euler")
    assert np.array_equal(pixels(plain.images[0]), pixels(after.images[0]))  # restored exactly
    assert not np.array_equal(pixels(plain.images[0]), pixels(tiled.images[0]))
    assert parse_infotext(tiled.infotexts[0])["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(plain.infotexts[0])


def sample_and_decode(model, noise, tiling):
    """(latents, images in [-1, 1]) of a deterministic sampler from `noise`, tiled or not."""
    encoder = PromptEncoder.from_model(model)
    cond, uncond = encoder.conditioning("a red circle"), encoder.conditioning("", negative=True)
    with circular_padding(model.unet, model.vae, enabled=tiling), torch.no_grad():
        latents = denoise(model.unet, make_scheduler("Euler", None, model.scheduler_config()), noise, cond, uncond,
                          steps=3, cfg_scale=5.0, generators=None)
        return latents, model.decode_latents(latents)


def test_a_tiled_image_is_the_middle_of_an_endless_tiling(tiny_loaded):
    """Seamless: the tiled image is (nearly) what the untiled model makes in the middle of a
    3 x 3 repetition of the same noise, where no edge is near; the untiled image is not."""
    model = tiny_loaded.model
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    _, tiled = sample_and_decode(model, noise, True)
    _, plain = sample_and_decode(model, noise, False)
    _, big = sample_and_decode(model, noise.repeat(1, 1, 3, 3), False)
    h, w = tiled.shape[-2:]
    middle = big[..., h:2 * h, w:2 * w]
    assert (tiled - middle).abs().mean() < 0.25 * (plain - middle).abs().mean()


def test_tiled_sampling_commutes_with_a_circular_shift(tiny_loaded):
    """With circular padding the UNet and VAE live on a torus: rolling the noise by a multiple of
    the UNet's downsampling rolls the image by the same amount (times the VAE factor)."""
    model = tiny_loaded.model
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    shift, f = 4, model.vae_scale_factor  # latent pixels; a multiple of the tiny UNet's factor 2
    rolled = torch.roll(noise, shifts=shift, dims=-1)
    _, image = sample_and_decode(model, noise, True)
    _, image_of_rolled = sample_and_decode(model, rolled, True)
    torch.testing.assert_close(image_of_rolled, torch.roll(image, shift * f, dims=-1), atol=1e-4, rtol=1e-4)
    _, plain = sample_and_decode(model, noise, False)
    _, plain_of_rolled = sample_and_decode(model, rolled, False)
    assert not torch.allclose(plain_of_rolled, torch.roll(plain, shift * f, dims=-1), atol=1e-2)


# ----------------------------------------------------------------------------- s_churn, s_noise


def test_noise_settings_go_only_to_schedulers_that_take_them(tiny_loaded):
    options = {"s_churn": 1.0, "s_noise": 0.5}
    euler = make_scheduler("Euler", None, tiny_loaded.model.scheduler_config())
    ddim = make_scheduler("DDIM", None, tiny_loaded.model.scheduler_config())
    assert _step_kwargs(euler, None, 0.0, options)["s_churn"] == 1.0
    assert "s_churn" not in _step_kwargs(ddim, None, 0.0, options)


def test_sigma_churn_changes_euler_keeps_the_batch_rule_and_is_recorded(tiny_loaded):
    kw = {"sampler": "Euler", "steps": 4, "s_churn": 2.0, "s_noise": 0.9}
    plain = run(tiny_loaded, sampler="Euler", steps=4)
    batch = run(tiny_loaded, batch_size=2, **kw)
    assert not np.array_equal(pixels(plain.images[0]), pixels(batch.images[0]))
    single = run(tiny_loaded, seed=8, **kw)  # image 1 of the batch = a single run with seed + 1
    assert np.abs(pixels(batch.images[1]) - pixels(single.images[0])).max() <= 1
    info = parse_infotext(batch.infotexts[0])
    assert info["Sigma churn"] == "2" and info["Sigma noise"] == "0.9" and "Sigma tmin" not in info


def test_noise_settings_a_sampler_ignores_are_not_recorded(tiny_loaded):
    plain = run(tiny_loaded, sampler="Euler a")
    churned = run(tiny_loaded, sampler="Euler a", s_churn=2.0)
    assert np.array_equal(pixels(plain.images[0]), pixels(churned.images[0]))
    assert "Sigma churn" not in parse_infotext(churned.infotexts[0])


# ----------------------------------------------------------------------------- infotext -> params


def test_web_ui_infotext_maps_onto_the_params():
    text = ("a cat, (masterpiece:1.2)\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, "
            "Seed: 1234, Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Variation seed: 99, "
            "Variation seed strength: 0.25, Seed resize from: 448x640, Denoising strength: 0.45, Clip skip: 2, "
            "ENSD: 31337, Tiling: True, Eta DDIM: 0.3, Sigma churn: 0.5, Hires upscale: 1.5, Hires steps: 10, "
            "Hires upscaler: Latent (bicubic), Version: v1.9.4")
    settings = read_settings(text)
    p = settings.params
    assert (p.prompt, p.negative_prompt, p.steps, p.sampler, p.cfg_scale, p.seed) == (
        "a cat, (masterpiece:1.2)", "blurry", 25, "DPM++ 2M Karras", 6.5, 1234)
    assert (p.width, p.height, p.subseed, p.subseed_strength) == (512, 768, 99, 0.25)
    assert (p.seed_resize_from_w, p.seed_resize_from_h, p.clip_skip, p.tiling, p.eta, p.s_churn) == (
        448, 640, 2, True, 0.3, 0.5)
    assert (p.enable_hr, p.hr_scale, p.hr_second_pass_steps, p.hr_upscaler, p.denoising_strength) == (
        True, 1.5, 10, "Latent (bicubic)", 0.45)
    assert settings.model_hash == "6ce0161689" and settings.ignored == {"ENSD": "31337"}
    assert params_from_infotext(text, steps=5, seed=None).steps == 5  # overrides win, None ones are skipped


def test_infotext_without_parameters_is_a_clear_error():
    with pytest.raises(ParamError, match="no parameter line"):
        params_from_infotext("just a prompt")
    with pytest.raises(ParamError, match="'Steps'"):
        params_from_infotext("p\nSteps: many, Sampler: Euler, Seed: 1")


@pytest.mark.parametrize("kw", [
    {"sampler": "Euler", "scheduler": "Karras", "s_churn": 1.5, "s_tmin": 0.1, "s_tmax": 50.0, "s_noise": 0.95,
     "clip_skip": 2, "tiling": True, "cfg_scale": 5.5, "negative_prompt": "blue", "width": 48, "height": 32},
    {"sampler": "DDIM", "eta": 0.6, "subseed": 77, "subseed_strength": 0.3, "seed_resize_from_w": 24,
     "seed_resize_from_h": 40, "prompt": "a [red:blue:0.5] circle, (big:1.3)"},
    {"sampler": "Euler a", "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.6,
     "hr_upscaler": "Latent (bicubic)", "clip_skip": 2},
])
def test_an_image_is_reproduced_from_its_infotext(two_layer, kw):
    original = run(two_layer, **kw)
    again = txt2img(two_layer, params_from_infotext(original.infotexts[0]))
    assert np.array_equal(pixels(original.images[0]), pixels(again.images[0]))
    assert again.infotexts[0] == original.infotexts[0]


def test_cli_generate_from_infotext_reproduces_the_image_and_warns_about_another_model(two_layer, tmp_path):
    original = run(two_layer, sampler="Euler", s_churn=1.0, clip_skip=2, tiling=True, cfg_scale=4.0, seed=42)
    info = original.infotexts[0].replace(two_layer.hash, "0123456789")  # as if made with another model
    source = write_png(original.images[0], tmp_path / "source.png", info)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "generate", "--infotext", str(source),
                           "--model", str(two_layer.path), "--outdir", str(out), "--device", "cpu",
                           "--precision", "full", "--threads", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "0123456789" in warnings[0]
    made = [Path(line) for line in proc.stdout.splitlines() if line.endswith(".png")]
    assert len(made) == 1
    assert np.array_equal(pixels(original.images[0]), pixels(read_image(made[0])))
    assert parse_infotext(read_infotext(made[0]))["Clip skip"] == "2"


def test_cli_flags_override_the_infotext(tmp_path):
    from t2i.interfaces.cli import build_parser
    from t2i.pipelines.params import from_cli

    text = "a cat\nSteps: 25, Sampler: Euler, CFG scale: 6, Seed: 5, Size: 64x64, Tiling: True"
    args = build_parser().parse_args(["generate", "--steps", "3", "--no-tiling"])
    params = from_cli(Txt2ImgParams, args, params_from_infotext(text))
    assert (params.prompt, params.steps, params.tiling, params.seed, params.cfg_scale) == ("a cat", 3, False, 5, 6.0)


def read_image(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")
