"""Opt-in accelerators: DeepCache, the tiny VAE decoder, compile (memory switches: t2i.memory)."""
import copy
import json

import numpy as np
import pytest
import torch

from t2i.diffusion.deepcache import DeepCacheUNet, deep_cache
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img


@pytest.fixture(scope="module")
def sd_unet():
    """An SD 1.5-shaped UNet (4 levels, 2 layers per block) at a tenth of the width."""
    from t2i.evaluate.random_sd import random_sd_unet

    return random_sd_unet("sd15", tiny=True)


def _inputs(batch=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size, size, generator=g), torch.tensor(600),
            torch.randn(batch, 77, 32, generator=g))


@pytest.mark.parametrize("depth", [1, 2])
def test_shallow_branch_on_a_fresh_cache_equals_the_full_unet(sd_unet, depth):
    x, t, ctx = _inputs()
    with torch.no_grad():
        full = sd_unet(x, t, encoder_hidden_states=ctx).sample
        with DeepCacheUNet(sd_unet, interval=2, depth=depth) as cached:
            assert torch.equal(cached(x, t, ctx).sample, full)  # full evaluation, feature cached
            assert torch.equal(cached(x, t, ctx).sample, full)  # shallow branch on that feature
            assert (cached.calls, cached.full_calls) == (2, 1)
    x_odd = torch.randn(2, 4, 12, 20)  # sizes that are not multiples of the UNet's total stride
    with torch.no_grad(), DeepCacheUNet(sd_unet, interval=2, depth=depth) as cached:
        first = cached(x_odd, t, ctx).sample
        assert torch.equal(cached(x_odd, t, ctx).sample, first)


def test_interval_runs_the_deep_blocks_one_step_in_n(sd_unet):
    calls = []
    hook = sd_unet.mid_block.register_forward_hook(lambda *a: calls.append(1))
    try:
        x, _, ctx = _inputs()
        with torch.no_grad(), DeepCacheUNet(sd_unet, interval=3) as cached:
            outs = [cached(x, torch.tensor(t), ctx).sample for t in range(900, 0, -100)]  # 9 evaluations
    finally:
        hook.remove()
    assert len(calls) == 3 and cached.full_calls == 3
    assert all(torch.isfinite(o).all() for o in outs)
    assert not sd_unet.up_blocks[-2]._forward_hooks  # closing removed the hook


def test_deepcache_rejects_what_it_cannot_cache(sd_unet):
    with pytest.raises(ValueError, match="interval must be >= 1"):
        DeepCacheUNet(sd_unet, interval=0)
    with pytest.raises(ValueError, match="depth must be between"):
        DeepCacheUNet(sd_unet, interval=2, depth=4)
    x, t, ctx = _inputs()
    with DeepCacheUNet(sd_unet, interval=2) as cached, pytest.raises(ValueError, match="does not support"):
        cached(x, t, ctx, down_block_additional_residuals=[x])
    with pytest.raises(ValueError, match="needs a diffusers UNet2DConditionModel"):
        deep_cache(torch.nn.Linear(2, 2), 3)
    assert deep_cache(sd_unet, 1).__enter__() is sd_unet


def _pixels(result):
    return np.stack([np.asarray(im, dtype=np.float64) for im in result.images])


def test_txt2img_deepcache(tiny_loaded):
    base = dict(prompt="a red circle", steps=6, seed=3, cfg_scale=5.0, sampler="Euler")
    plain = txt2img(tiny_loaded, Txt2ImgParams(**base))
    one = txt2img(tiny_loaded, Txt2ImgParams(**base, deepcache_interval=1))
    assert np.array_equal(_pixels(plain), _pixels(one))
    cached = txt2img(tiny_loaded, Txt2ImgParams(**base, deepcache_interval=3))
    a, b = _pixels(plain).ravel() - 127.5, _pixels(cached).ravel() - 127.5
    assert not np.array_equal(a, b)
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.9  # close to the uncached image
    assert "DeepCache interval: 3" in cached.infotexts[0]
    assert "DeepCache" not in plain.infotexts[0]


# ----------------------------------------------------------------------------- tiny VAE decoder


def _original_taesd_file(path, latent_channels=4, **arch):
    """A random decoder saved in the original TAESD layout (nn.Sequential, clamp at index 0)."""
    from safetensors.torch import save_file

    from t2i.checkpoints.tiny_vae import build_tiny_decoder

    torch.manual_seed(0)
    decoder = build_tiny_decoder(latent_channels, **arch)
    state = {}
    for key, value in decoder.state_dict().items():
        index, rest = key.removeprefix("layers.").split(".", 1)
        state[f"{int(index) + 1}.{rest}"] = value.contiguous()
    save_file(state, str(path))
    return decoder


def test_tiny_decoder_from_an_original_taesd_file(tmp_path):
    from t2i.evaluate.random_sd import random_sd_model
    from t2i.speedups import use_tiny_decoder

    reference = _original_taesd_file(tmp_path / "taesd_decoder.safetensors")
    model = random_sd_model("sd15", tiny=True)  # a KL VAE at x8, like SD's
    use_tiny_decoder(model, tmp_path / "taesd_decoder.safetensors")
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        out = model.decode_latents(latents)
        assert torch.equal(out, reference(latents))  # scaled latents go in as they are
    assert out.shape == (1, 3, 64, 64)


def test_tiny_decoder_from_an_autoencoder_tiny_folder_in_txt2img(tmp_path, tiny_model_dir):
    from safetensors.torch import save_file

    from t2i.checkpoints.registry import load_model
    from t2i.checkpoints.tiny_vae import build_tiny_decoder
    from t2i.runtime import Runtime
    from t2i.speedups import use_tiny_decoder

    loaded = load_model(tiny_model_dir, Runtime.auto("full", "cpu"))  # its own copy: the decoder stays on it
    arch = {"num_blocks": (1, 1), "block_out_channels": (16, 16)}  # x2, as the tiny test VAE
    decoder = build_tiny_decoder(4, **arch)
    folder = tmp_path / "tiny_vae"
    folder.mkdir()
    state = {"decoder." + k: v for k, v in decoder.state_dict().items()}
    state["encoder.layers.0.weight"] = torch.zeros(1)  # an AutoencoderTiny file also holds its encoder
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny", "num_decoder_blocks": [1, 1],
                                                   "decoder_block_out_channels": [16, 16]}))
    params = Txt2ImgParams(prompt="a red circle", steps=2, seed=1)
    full = _pixels(txt2img(loaded, params))
    use_tiny_decoder(loaded, folder)
    tiny = _pixels(txt2img(loaded, params))
    assert tiny.shape == full.shape and not np.array_equal(tiny, full)


def test_tiny_decoder_errors(tmp_path, tiny_loaded):
    from t2i.checkpoints.diffusers_folder import ModelLoadError
    from t2i.speedups import use_tiny_decoder

    _original_taesd_file(tmp_path / "taesd.safetensors")
    with pytest.raises(ModelLoadError, match="upsamples latents x8, but this model's VAE works at x2"):
        use_tiny_decoder(copy.copy(tiny_loaded), tmp_path / "taesd.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        use_tiny_decoder(tiny_loaded, tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"model.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelLoadError, match="not a TAESD-format decoder"):
        use_tiny_decoder(tiny_loaded, tmp_path / "other.safetensors")
    assert getattr(tiny_loaded.model, "tiny_decoder", None) is None


# ----------------------------------------------------------------------------- compile, CLI


def test_compile_without_a_cpp_compiler_says_so(tiny_loaded, monkeypatch):
    import t2i.speedups as speedups

    monkeypatch.setattr(speedups.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        speedups.compile_unet(tiny_loaded)


def test_cli_vae_decoder_flag():
    from t2i.pipelines.load_settings import LoadSettings

    def _tiny_decoder_path(values):
        return LoadSettings(vae_decoder=tuple(values) if values else ("full",)).tiny_decoder

    assert _tiny_decoder_path(None) is None and _tiny_decoder_path(["full"]) is None
    assert str(_tiny_decoder_path(["tiny", "x.safetensors"])) == "x.safetensors"
    with pytest.raises(ValueError, match="'full' or 'tiny FILE'"):
        _tiny_decoder_path(["tiny"])
