"""The automatic fast path: device-dependent precision and layout, and its numerics against fp32."""
import math

import numpy as np
import pytest
import torch

import t2i.runtime as runtime_module
from t2i.runtime import Runtime


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend this CPU has AMX (the numerics are the same where bf16 is emulated)."""
    monkeypatch.setattr(runtime_module, "cpu_native_bf16", lambda: "amx_bf16")


def test_auto_picks_bf16_channels_last_on_a_bf16_cpu(bf16_cpu):
    rt = Runtime.auto("auto", "cpu")
    assert (rt.dtype, rt.channels_last, rt.text_dtype) == (torch.bfloat16, True, torch.float32)
    assert rt.load_dtype == torch.float32  # weights read in fp32, the UNet and VAE cast by place()
    assert "amx_bf16" in rt.describe() and "channels_last" in rt.describe()


def test_intel_avx512_bf16_without_amx_stays_float32(monkeypatch):
    """Measured on an Intel Xeon without AMX: torch's bf16 matmuls are slower than float32."""
    monkeypatch.setattr(runtime_module, "cpu_native_bf16", lambda: "avx512_bf16")
    monkeypatch.setattr(runtime_module, "cpu_vendor", lambda: "GenuineIntel")
    rt = Runtime.auto("auto", "cpu")
    assert (rt.dtype, rt.channels_last) == (torch.float32, False)
    assert "no AMX" in rt.describe() and "GenuineIntel" in rt.describe()


def test_amd_avx512_bf16_gets_the_fast_path(monkeypatch):
    """Measured on an AMD EPYC (Zen 4, no AMX): bf16 matmuls 2.3x float32's, a UNet step 1.7x faster."""
    monkeypatch.setattr(runtime_module, "cpu_native_bf16", lambda: "avx512_bf16")
    monkeypatch.setattr(runtime_module, "cpu_vendor", lambda: "AuthenticAMD")
    rt = Runtime.auto("auto", "cpu")
    assert (rt.dtype, rt.channels_last, rt.text_dtype, rt.small_unet_dtype) == (
        torch.bfloat16, True, torch.float32, torch.float32)
    assert "AMD CPU with avx512_bf16" in rt.describe()
    monkeypatch.setattr(runtime_module, "cpu_native_bf16", lambda: None)  # an older AMD: emulated bf16
    assert Runtime.auto("auto", "cpu").dtype == torch.float32


def test_cpu_vendor_reads_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nflags\t\t: fpu avx2\n\n"
                       "processor\t: 1\nvendor_id\t: AuthenticAMD\n")
    real_path = runtime_module.Path
    monkeypatch.setattr(runtime_module, "Path", lambda p: real_path(cpuinfo) if p == "/proc/cpuinfo" else real_path(p))
    assert runtime_module.cpu_vendor() == "AuthenticAMD"
    assert runtime_module._cpuinfo_flags() == {"fpu", "avx2"}
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # an ARM machine names no vendor_id
    monkeypatch.setattr(runtime_module.platform, "processor", lambda: "aarch64")
    assert runtime_module.cpu_vendor() == ""
    cpuinfo.unlink()  # Windows: no /proc/cpuinfo, the vendor is in the processor string
    monkeypatch.setattr(runtime_module.platform, "processor",
                        lambda: "AMD64 Family 25 Model 17 Stepping 1, AuthenticAMD")
    assert runtime_module.cpu_vendor() == "AuthenticAMD"


def test_full_precision_and_cpus_without_bf16_stay_float32(bf16_cpu, monkeypatch):
    full = Runtime.auto("full", "cpu")
    assert (full.dtype, full.channels_last) == (torch.float32, False)
    assert "--precision full" in full.describe()
    monkeypatch.setattr(runtime_module, "cpu_native_bf16", lambda: None)
    plain = Runtime.auto("auto", "cpu")
    assert (plain.dtype, plain.channels_last) == (torch.float32, False)
    with pytest.raises(ValueError, match="precision must be one of"):
        Runtime.auto("half", "cpu")


def test_cpu_probe_falls_back_to_cpuinfo_flags(monkeypatch):
    def broken():
        raise RuntimeError("probe moved")

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, broken, raising=False)
    monkeypatch.setattr(runtime_module, "_cpuinfo_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert runtime_module.cpu_native_bf16() == "avx512_bf16"
    monkeypatch.setattr(runtime_module, "_cpuinfo_flags", lambda: {"avx2", "avx512f"})
    assert runtime_module.cpu_native_bf16() is None  # AVX-512 without BF16 emulates bf16: not fast


def test_small_unet_stays_float32_and_a_large_one_gets_the_fast_path(bf16_cpu, tiny_loaded, monkeypatch):
    rt = Runtime.auto("auto", "cpu")
    small = rt.for_model(tiny_loaded.model)
    assert (small.dtype, small.channels_last) == (torch.float32, False)
    assert "small UNet" in small.describe()
    assert small.for_model(tiny_loaded.model) == small  # idempotent
    monkeypatch.setattr(runtime_module, "SMALL_UNET_PARAMS", 0)
    large = small.for_model(tiny_loaded.model)  # decides afresh from the request
    assert (large.dtype, large.channels_last) == (torch.bfloat16, True)


def test_load_model_places_the_fast_path(bf16_cpu, tiny_model_dir, monkeypatch):
    from t2i.checkpoints.registry import load_model
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    monkeypatch.setattr(runtime_module, "SMALL_UNET_PARAMS", 0)
    loaded = load_model(tiny_model_dir, Runtime.auto("auto", "cpu"))
    model = loaded.model
    assert loaded.runtime.dtype == torch.bfloat16
    assert next(model.unet.parameters()).dtype == torch.bfloat16
    assert next(model.vae.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.parameters()).dtype == torch.float32
    assert model.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.unet.conv_in.weight.is_contiguous()
    result = txt2img(loaded, Txt2ImgParams(prompt="a red circle", steps=2, seed=1, cfg_scale=3.0))
    pixels = np.asarray(result.images[0], dtype=np.float64)
    assert pixels.std() > 0  # a real image, not a constant from NaNs


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


@pytest.fixture(scope="module")
def sd_shaped():
    from t2i.evaluate.random_sd import random_sd_model

    return random_sd_model("sd15", tiny=True)


def test_fast_path_follows_fp32_step_by_step(sd_shaped):
    """bf16 + channels_last UNet and VAE against fp32 on an SD 1.5-shaped model: per-step latent
    cosine >= 0.999 (the scheduler math stays fp32 between steps), image PSNR reported."""
    import copy

    from t2i.diffusion.samplers import make_scheduler
    from t2i.diffusion.sampling import denoise, initial_noise

    fast = copy.deepcopy(sd_shaped)
    Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True, text_dtype=torch.float32).place(fast)
    with torch.no_grad():
        cond = sd_shaped.encode_prompts(["a photo of a cat"])
        uncond = sd_shaped.encode_prompts([""])

    def run(model):
        steps = []
        scheduler = make_scheduler("DPM++ 2M", "Automatic", model.scheduler_config())
        latents = denoise(model.unet, scheduler, initial_noise([7], (4, 16, 16)), cond, uncond, steps=6,
                          cfg_scale=7.0, generators=None, callback=lambda i, n, x: steps.append(x.clone()))
        assert latents.dtype == torch.float32  # scheduler math in fp32 whatever the UNet's dtype
        with torch.no_grad():
            image = model.decode_latents(latents.to(next(model.vae.parameters()).dtype)).float()
        return steps, image

    ref_steps, ref_image = run(sd_shaped)
    fast_steps, fast_image = run(fast)
    cosines = [_cosine(a, b) for a, b in zip(ref_steps, fast_steps)]
    assert min(cosines) >= 0.999, cosines
    mse = ((ref_image.clamp(-1, 1) - fast_image.clamp(-1, 1)) ** 2).mean().item()
    psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # images span [-1, 1]: peak-to-peak 2
    print(f"per-step latent cosine min {min(cosines):.5f}; image PSNR {psnr:.1f} dB")
    assert psnr > 30
