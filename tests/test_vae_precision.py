"""Issue 16, GPU defaults: a float16 VAE (t2i's CUDA default) whose output overflows is run again
in float32 and stays there, as the web UI's automatic VAE upcast. Checked on the CPU with latents
and images crafted to overflow float16 (float16 convolutions run on the CPU too)."""
import copy
import logging

import pytest
import torch
from torch import nn

from t2i.models.ldm import VAELatents
from t2i.runtime import Runtime

SCALE = 0.18215


class TinyVAEModel(VAELatents, nn.Module):
    """What the pipelines decode through: a `.vae` and `config.scaling_factor`."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.config = type("Config", (), {"scaling_factor": SCALE})()
        self.tiny_decoder = None


@pytest.fixture()
def vae32():
    from test_sd_checkpoints import tiny_vae

    torch.manual_seed(0)
    return tiny_vae().eval().requires_grad_(False)


def _fp16_model(vae32):
    # float16 weights: the float32 reference below starts from the same (rounded) values
    return TinyVAEModel(copy.deepcopy(vae32).half())


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "t2i" and r.levelno == logging.WARNING]


def test_a_float16_decode_that_overflows_is_redone_in_float32(vae32, caplog):
    model = _fp16_model(vae32)
    # 30,000 fits float16; divided by the scaling factor (1.6e5) it does not: inf, then NaN
    latents = torch.full((1, 4, 8, 8), 3.0e4)
    latents[:, :, ::2] *= -1
    with torch.no_grad():
        direct = model.vae.decode(latents.half() / SCALE).sample
        assert not torch.isfinite(direct).all()  # the crafted input does overflow in float16
        with caplog.at_level(logging.WARNING, logger="t2i"):
            images = model.decode_latents(latents.half())
        reference = copy.deepcopy(model.vae).float().decode(latents / SCALE).sample
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert torch.allclose(images, reference, atol=1e-5)
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}  # upcast for good
    assert len(_messages(caplog)) == 1 and "float32" in _messages(caplog)[0]
    # the next call goes straight to float32, no second warning
    caplog.clear()
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="t2i"):
        again = model.decode_latents(latents)
    assert torch.equal(again, images) and not _messages(caplog)


def test_a_float16_decode_that_is_finite_stays_float16(vae32, caplog):
    model = _fp16_model(vae32)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="t2i"):
        images = model.decode_latents(latents.half())
        reference = vae32.decode(latents / SCALE).sample
    assert images.dtype == torch.float16 and {p.dtype for p in model.vae.parameters()} == {torch.float16}
    assert not _messages(caplog)
    assert (images.float() - reference).abs().max() < 0.05  # float16 rounding only


def test_float32_and_bfloat16_are_never_retried(vae32, caplog):
    """NaN from a float32 or bfloat16 VAE is not an overflow (they have float32's range): the
    result comes back as it is and the VAE keeps its dtype."""
    latents = torch.full((1, 4, 8, 8), float("nan"))
    for dtype in (torch.float32, torch.bfloat16):
        model = TinyVAEModel(copy.deepcopy(vae32).to(dtype))
        with torch.no_grad(), caplog.at_level(logging.WARNING, logger="t2i"):
            images = model.decode_latents(latents.to(dtype))
        assert images.dtype == dtype and torch.isnan(images).all()
        assert {p.dtype for p in model.vae.parameters()} == {dtype}
    assert not _messages(caplog)


def test_a_float16_encode_that_overflows_is_redone_in_float32(vae32, caplog):
    model = _fp16_model(vae32)
    with torch.no_grad():
        model.vae.encoder.conv_in.weight.mul_(50)  # still representable in float16
    images = torch.full((1, 3, 16, 16), 6.0e4)  # fits float16; times the weights it does not
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="t2i"):
        latents = model.encode_images(images.half(), sample=False)
        reference = copy.deepcopy(model.vae).float().encode(images).latent_dist.mode() * SCALE
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    assert torch.allclose(latents, reference, atol=1e-5)
    assert len(_messages(caplog)) == 1


def test_pipeline_images_from_an_overflowing_float16_vae_are_not_black(vae32):
    """Through the pipelines' decode (txt2img.latents_to_images casts latents to the VAE's dtype)."""
    from t2i.pipelines.txt2img import latents_to_images

    model = _fp16_model(vae32)
    latents = torch.full((1, 4, 8, 8), 3.0e4)
    latents[:, :, ::2] *= -1
    fp16 = latents_to_images(model, latents)[0]
    reference = latents_to_images(TinyVAEModel(copy.deepcopy(vae32).half().float()), latents)[0]
    assert fp16.tobytes() == reference.tobytes()
    assert len(set(fp16.tobytes())) > 1


def test_cuda_default_is_float16_everywhere_and_cpu_unchanged():
    """The CUDA choice (data, checked without a GPU): float16 for UNet, VAE (even with diffusers'
    force_upcast: the decode falls back instead) and text encoder; the CPU keeps its own rules."""
    from types import SimpleNamespace

    runtime = Runtime.auto("auto", "cuda")
    upcast = SimpleNamespace(config=SimpleNamespace(force_upcast=True))
    assert runtime.placement("vae", upcast) == (torch.float16, torch.contiguous_format)
    assert runtime.placement("unet")[0] == runtime.placement("text_encoder")[0] == torch.float16
    assert "float32" in runtime.describe()  # says a VAE that overflows is redone in float32
    cpu = Runtime.auto("auto", "cpu")
    assert cpu.dtype in (torch.float32, torch.bfloat16) and cpu.placement("vae", upcast)[0] == cpu.dtype
