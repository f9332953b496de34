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
                          width=16, height=16)
    grid, info, images = sample_clip_guided(ldm, params, "tiny", scorer)
    assert grid.size == (16, 16) and len(images) == 1
    for part in ("a blue square\n", "Steps: 2", "Seed: 5", "CLIP-guided: a blue square", "CLIP lr: 0.05",
                 "CLIP init: blank", "Model: tiny"):
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
        sample_clip_guided(ldm, SampleParams(clip_guided="a red circle", sampler="DDIM"), "tiny", load_scorer(clip_dir))


def test_cli_writes_an_image(tiny_model_dir, clip_dir, tmp_path):
    out = tmp_path / "cg.png"
    result = run_cli("sample", tiny_model_dir, "--clip-guided", "a red circle", "--steps", 3, "--n", 2,
                     "--clip-model", clip_dir, "--clip-lr", 0.2, "--seed", 7, "-o", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as im:
        assert im.size == (64, 32)  # two 32 px images side by side
        info = im.info["parameters"]
    assert "CLIP-guided: a red circle" in info and "Steps: 3" in info and "Seed: 7" in info and "CLIP lr: 0.2" in info


@pytest.mark.parametrize("args, message", [
    (("--clip-guided", "a red circle", "--clip-lr", "0"), "clip_lr must be"),
    (("--clip-guided", "a red circle", "--clip-init", "zebra"), "--clip-init"),
    (("--clip-guided", "a red circle", "--sampler", "DDIM"), "--sampler"),
    (("--clip-guided", " "), "needs a prompt"),
])
def test_cli_bad_values_exit_2(tiny_model_dir, clip_dir, tmp_path, args, message):
    result = run_cli("sample", tiny_model_dir, *args, "--steps", 2, "--clip-model", clip_dir, "-o", tmp_path / "x.png")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.png").exists()
