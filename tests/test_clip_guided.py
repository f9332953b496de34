"""CLIP-guided generation (t2i.pipelines.clip_guided): tiny random LDM decoder and tiny random CLIP."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_ldm_config
from PIL import Image

from t2i.checkpoints.clip_folder import save_clip_folder
from t2i.errors import ParamError
from t2i.evaluate.clip_scorer import load_scorer
from t2i.models.clip import CLIPModelConfig, build_clip
from t2i.models.ldm import LatentDiffusion
from t2i.pipelines.clip_guided import clip_guided, initial_latents, sample_clip_guided
from t2i.pipelines.sample_params import SampleParams

TINY_CLIP = CLIPModelConfig(resolution=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                            vision_mlp=32, text_width=16, text_layers=1, text_heads=2, text_mlp=32, max_length=24,
                            projection_dim=16)


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], check=False,
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_clip_folder(build_clip(TINY_CLIP), tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def ldm():
    torch.manual_seed(0)
    return LatentDiffusion(tiny_ldm_config(resolution=16)).eval()


def _shape(model):
    return (model.latent_channels, 16 // model.vae_scale_factor, 16 // model.vae_scale_factor)


def test_similarity_rises_and_is_reproducible(ldm, clip_dir):
    scorer = load_scorer(clip_dir)
    prompt = "a red circle"
    images, history = clip_guided(ldm.decode_latents, _shape(ldm), scorer, prompt, n=2, seed=3, steps=12, lr=0.3,
                                  freeze=(ldm,))
    assert len(images) == 2 and images[0].size == (16, 16) and len(history) == 12
    assert history[-1] > history[0] + 0.01
    with torch.no_grad():  # the un-augmented images: the optimisation helped them too, not just the views
        from t2i.models.common import to_pil_images

        start = to_pil_images(ldm.decode_latents(initial_latents(_shape(ldm), 2, 3, "noise")))
    assert scorer.similarity(images, [prompt] * 2).mean() > scorer.similarity(start, [prompt] * 2).mean()
    again, _ = clip_guided(ldm.decode_latents, _shape(ldm), scorer, prompt, n=2, seed=3, steps=12, lr=0.3,
                           freeze=(ldm,))
    assert [im.tobytes() for im in again] == [im.tobytes() for im in images]
    assert all(p.requires_grad for p in ldm.vae.parameters())  # unfrozen again afterwards
    assert all(p.grad is None for p in ldm.vae.parameters())


def test_blank_start_and_infotext(ldm, clip_dir):
    scorer = load_scorer(clip_dir)
    params = SampleParams(n=1, seed=5, steps=2, clip_guided="a blue square", clip_lr=0.05, clip_init="blank",
                          width=16, height=16, clip_guidance_method="optimize")
    grid, info, images = sample_clip_guided(ldm, params, "tiny", scorer)
    assert grid.size == (16, 16) and len(images) == 1
    for part in ("a blue square\n", "Steps: 2", "Seed: 5", "CLIP-guided: a blue square", "CLIP lr: 0.05",
                 "CLIP init: blank", "Model: tiny", "CLIP method: optimize"):
        assert part in info


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "at least 1 step"),
    ({"lr": 0.0}, "learning rate"),
    ({"init": "zebra"}, "--clip-init"),
])
def test_bad_options(ldm, clip_dir, kwargs, message):
    options = {"steps": 2, "lr": 0.1, "init": "noise"} | kwargs
    with pytest.raises(ParamError, match=message):
        clip_guided(ldm.decode_latents, _shape(ldm), load_scorer(clip_dir), "a red circle", **options)


def test_sampler_options_are_refused(ldm, clip_dir):
    with pytest.raises(ParamError, match="--sampler"):
        sample_clip_guided(ldm, SampleParams(clip_guided="a red circle", sampler="DDIM", clip_guidance_method="optimize"),
                           "tiny", load_scorer(clip_dir))


def test_cli_writes_an_image(tiny_model_dir, clip_dir, tmp_path):
    out = tmp_path / "cg.png"
    result = run_cli("sample", tiny_model_dir, "--clip-guided", "a red circle", "--steps", 3, "--n", 2,
                     "--clip-model", clip_dir, "--clip-lr", 0.2, "--seed", 7, "--clip-guidance-method", "optimize",
                     "-o", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as im:
        assert im.size == (64, 32)  # two 32 px images side by side
        info = im.info["parameters"]
    assert "CLIP-guided: a red circle" in info and "Steps: 3" in info and "Seed: 7" in info and "CLIP lr: 0.2" in info


@pytest.mark.parametrize("args, message", [
    (("--clip-guided", "a red circle", "--clip-lr", "0"), "clip_lr must be"),
    (("--clip-guided", "a red circle", "--clip-init", "zebra"), "--clip-init"),
    (("--clip-guided", "a red circle", "--sampler", "DDIM", "--clip-guidance-method", "optimize"), "--sampler"),
    (("--clip-guided", " "), "needs a prompt"),
])
def test_cli_bad_values_exit_2(tiny_model_dir, clip_dir, tmp_path, args, message):
    result = run_cli("sample", tiny_model_dir, *args, "--steps", 2, "--clip-model", clip_dir, "-o", tmp_path / "x.png")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()


# --- the diffusion method: an empty-prompt sampler steered by CLIP's gradient ---------------------

def _diffusion_params(**kwargs):
    return SampleParams(**({"n": 2, "seed": 3, "steps": 4, "clip_guided": "a red circle",
                            "clip_guidance_method": "diffusion", "width": 16, "height": 16} | kwargs))


def _plain_empty_prompt(model, seed, steps, sampler="DDIM"):
    """What the LDM samples with an empty prompt and no guidance of any kind."""
    from t2i.diffusion.samplers import make_scheduler
    from t2i.diffusion.sampling import denoise, draw_noise, make_generators
    from t2i.models.common import to_pil_images

    gens = make_generators([seed])
    with torch.no_grad():
        latents = denoise(model.unet, make_scheduler(sampler, None, model.scheduler_config()),
                          draw_noise(gens, _shape(model)), model.encode_prompts([""]), None, steps=steps,
                          cfg_scale=1.0, generators=gens)
        return to_pil_images(model.decode_latents(latents).float().clamp(-1, 1))[0]


@pytest.mark.parametrize("sampler", ["DDIM", "Euler a"])
def test_diffusion_scale_zero_is_plain_empty_prompt_sampling(ldm, clip_dir, sampler):
    _, info, images = sample_clip_guided(ldm, _diffusion_params(clip_guidance_scale=0.0, sampler=sampler), "tiny",
                                         load_scorer(clip_dir))
    assert [im.tobytes() for im in images] == [_plain_empty_prompt(ldm, 3 + i, 4, sampler).tobytes() for i in range(2)]
    assert f"Sampler: {sampler}" in info and "CLIP method: diffusion" in info and info.endswith("CLIP scale: 0")


@pytest.mark.parametrize("method", ["diffusion", "diffusion-x0"])
def test_diffusion_guidance_steers_towards_the_prompt(ldm, clip_dir, method):
    import numpy as np

    scorer = load_scorer(clip_dir)
    plain = sample_clip_guided(ldm, _diffusion_params(clip_guidance_scale=0.0), "tiny", scorer)[2]
    _, info, guided = sample_clip_guided(ldm, _diffusion_params(clip_guidance_scale=1.0, clip_guidance_method=method),
                                         "tiny", scorer)
    assert len(guided) == 2 and guided[0].size == (16, 16)
    assert all(np.abs(np.asarray(g, float) - np.asarray(p, float)).mean() > 1 for g, p in zip(guided, plain))
    assert scorer.similarity(guided, ["a red circle"] * 2).mean() > scorer.similarity(plain, ["a red circle"] * 2).mean()
    assert "CLIP similarity: " in info and "Steps: 4" in info and f"CLIP method: {method}," in info
    again = sample_clip_guided(ldm, _diffusion_params(clip_guidance_scale=1.0, n=1, seed=4,
                                                      clip_guidance_method=method), "tiny", scorer)[2]
    assert again[0].tobytes() == guided[1].tobytes()  # image i from seed + i, whatever n is
    assert all(p.requires_grad and p.grad is None for p in ldm.parameters())


def test_diffusion_x0_is_the_default_method(ldm, clip_dir):
    _, info, _ = sample_clip_guided(ldm, SampleParams(n=1, steps=2, clip_guided="a red circle", width=16, height=16),
                                    "tiny", load_scorer(clip_dir))
    assert "CLIP method: diffusion-x0," in info and "CLIP scale: 0.3," in info and "Sampler: DDIM" in info


def test_diffusion_tiny_scale_is_close_to_plain(ldm, clip_dir):
    """The guided path (UNet under autograd, eps from the output) changes nothing but the guidance."""
    from t2i.pipelines.clip_guided import view_similarity
    from t2i.pipelines.clip_guided_diffusion import clip_guided_diffusion

    scorer = load_scorer(clip_dir)
    text = scorer.embed_texts(["a red circle"])[0]
    runs = [clip_guided_diffusion(ldm, lambda seed: view_similarity(scorer, text, seed), _shape(ldm), 5, steps=3,
                                  scale=scale)[0] for scale in (0.0, 1e-6)]
    assert torch.allclose(runs[0], runs[1], rtol=1e-4, atol=1e-3) and not torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("kwargs, message", [
    ({"clip_lr": 0.1}, "--clip-lr"),
    ({"clip_init": "blank"}, "--clip-init"),
    ({"guidance_scale": 3.0}, "--guidance-scale"),
    ({"sampler": "zebra"}, "unknown sampler"),
    ({"clip_guidance_method": "zebra"}, "--clip-guidance-method"),
    ({"clip_guidance_method": "optimize", "clip_guidance_scale": 5.0}, "--clip-guidance-scale"),
])
def test_diffusion_bad_options(ldm, clip_dir, kwargs, message):
    with pytest.raises(ParamError, match=message):
        sample_clip_guided(ldm, _diffusion_params(**kwargs), "tiny", load_scorer(clip_dir))


def test_cli_diffusion_method(tiny_model_dir, clip_dir, tmp_path):
    out = tmp_path / "cgd.png"
    result = run_cli("sample", tiny_model_dir, "--clip-guided", "a red circle", "--clip-guidance-method", "diffusion",
                     "--clip-guidance-scale", 50, "--steps", 3, "--n", 2, "--clip-model", clip_dir, "--seed", 7,
                     "--sampler", "Euler", "-o", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as im:
        assert im.size == (64, 32)
        info = im.info["parameters"]
    for part in ("CLIP-guided: a red circle", "CLIP method: diffusion", "CLIP scale: 50", "Steps: 3", "Seed: 7",
                 "Sampler: Euler"):
        assert part in info


@pytest.mark.parametrize("args, message", [
    (("--clip-guidance-method", "zebra"), "--clip-guidance-method: invalid choice"),
    (("--clip-guidance-method", "diffusion", "--clip-guidance-scale", "-1"), "clip_guidance_scale must be"),
    (("--clip-guidance-method", "diffusion", "--clip-lr", "0.1"), "--clip-lr"),
    (("--clip-guidance-method", "optimize", "--clip-guidance-scale", "5"), "--clip-guidance-scale"),
])
def test_cli_diffusion_bad_values_exit_2(tiny_model_dir, clip_dir, tmp_path, args, message):
    result = run_cli("sample", tiny_model_dir, "--clip-guided", "a red circle", *args, "--steps", 2,
                     "--clip-model", clip_dir, "-o", tmp_path / "x.png")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()
