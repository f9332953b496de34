"""The tiny-VAE distillation recipe (t2i.training.tiny_vae) on the bundled model's VAE as teacher."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny-taesd.yaml"


def _config(**optim):
    from t2i.training.registry import load_training_config

    family, cfg, train_fn = load_training_config(CONFIG)
    assert family == "tiny_vae"
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **optim)), train_fn


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished run of the test config, 12 steps."""
    cfg, train_fn = _config(steps=12)
    outdir = tmp_path_factory.mktemp("taesd")
    return cfg, outdir, train_fn(cfg, outdir)


def _teacher_distance(decoder, outdir: Path) -> float:
    """Mean L1 between the decoder and the teacher on every cached training image."""
    state = torch.load(outdir / "cache" / "teacher.pt", weights_only=True)
    target = state["decoded"].permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        return (decoder(state["latents"]) - target).abs().mean().item()


def test_distillation_moves_the_decoder_towards_the_teacher(trained):
    from t2i.training.tiny_vae import build_student

    cfg, outdir, decoder = trained
    state = torch.load(outdir / "cache" / "teacher.pt", weights_only=True)
    assert state["latents"].shape == (cfg.data.size, 4, 8, 8)  # 32x32 images through the x4 teacher
    assert state["decoded"].shape == (cfg.data.size, 32, 32, 3) and state["decoded"].dtype == torch.uint8
    torch.manual_seed(cfg.seed)
    untrained = build_student(cfg.decoder, latent_channels=4, factor=4).eval()
    assert _teacher_distance(decoder, outdir) < 0.8 * _teacher_distance(untrained, outdir)


def test_output_file_loads_with_the_tiny_vae_loader(trained):
    from t2i.checkpoints.diffusers_folder import ModelLoadError
    from t2i.checkpoints.registry import load_model
    from t2i.checkpoints.safe_load import load_state_dict_file
    from t2i.checkpoints.tiny_vae import load_tiny_decoder
    from t2i.runtime import Runtime
    from t2i.speedups import use_tiny_decoder
    from t2i.training.tiny_vae import DECODER_FILE

    _, outdir, decoder = trained
    path = outdir / DECODER_FILE
    keys = set(load_state_dict_file(path))
    assert "1.weight" in keys and not any(k.startswith(("0.", "layers.", "decoder.")) for k in keys)  # TAESD layout
    loaded = load_tiny_decoder(path, latent_channels=4, scale_factor=4)
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = loaded(z)
        assert images.shape == (2, 3, 64, 64)
        torch.testing.assert_close(images, decoder(z))
    with pytest.raises(ModelLoadError, match="x4"):
        load_tiny_decoder(path, latent_channels=4, scale_factor=8)  # an SD VAE is x8: refused

    model = load_model(None, Runtime.auto("full", "cpu"))  # the bundled model: x4 like this decoder
    use_tiny_decoder(model, path)
    with torch.no_grad():
        torch.testing.assert_close(model.model.decode_latents(z), images)


def test_resume_continues_exactly(trained, tmp_path):
    from safetensors.torch import load_file

    from t2i.training.tiny_vae import DECODER_FILE

    cfg, outdir, _ = trained
    resumed = tmp_path / "resumed"
    (resumed / "cache").mkdir(parents=True)
    (resumed / "cache" / "teacher.pt").write_bytes((outdir / "cache" / "teacher.pt").read_bytes())
    cfg, train_fn = _config(steps=12)
    train_fn(cfg, resumed, stop_after=5)  # an interrupted run leaves a checkpoint, no decoder file
    assert (resumed / "tiny_vae.ckpt").is_file() and not (resumed / DECODER_FILE).exists()
    train_fn(cfg, resumed, resume=True)
    whole, parts = load_file(outdir / DECODER_FILE), load_file(resumed / DECODER_FILE)
    assert whole.keys() == parts.keys()
    for key in whole:
        torch.testing.assert_close(parts[key], whole[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("optim, message", [({"loss": "huber"}, "optim.loss"), ({"crop": 6}, "multiple")])
def test_bad_settings_are_refused(tmp_path, optim, message):
    cfg, train_fn = _config(**optim)
    with pytest.raises(ValueError, match=message):
        train_fn(cfg, tmp_path)
