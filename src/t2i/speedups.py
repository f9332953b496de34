"""Opt-in accelerators and memory savers for a loaded diffusion model, each measured in
benchmarks/ (BENCHMARKS.md, "Fast path"). The automatic precision and layout choice lives in
t2i.runtime; DeepCache (step caching) in t2i.diffusion.deepcache, switched on per generation.

    compile_unet(loaded)                 # torch.compile the UNet (Inductor); returns compile seconds
    use_tiny_decoder(loaded, "taesd_decoder.safetensors")   # TAESD: fast approximate VAE decode
    enable_attention_slicing(loaded)     # attention one head slice at a time
    enable_vae_tiling(loaded)            # decode (and encode) large images tile by tile

Each takes a LoadedModel (t2i.checkpoints.registry) and changes it in place, through the
modules' public switches (`nn.Module.compile`, diffusers' `set_attention_slice`/`enable_tiling`).
"""
from __future__ import annotations

import os
import shutil
import time

import torch


def _model(loaded):
    return getattr(loaded, "model", loaded)


def _check_cpp_compiler() -> None:
    """Inductor compiles C++ for CPU kernels: fail early, in one line, without a compiler."""
    candidates = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    if not any(name and shutil.which(name) for name in candidates):
        raise ValueError("torch.compile on a CPU needs a C++ compiler (g++ or clang++) on PATH, or CXX set; "
                         "install one or run without --compile")


def compile_unet(loaded, *, warmup_batch: int | None = 2, mode: str | None = None) -> float:
    """Compile the UNet in place with torch.compile (Inductor). With `warmup_batch`, run it once
    at the model's default size (batch 2 = one image with classifier-free guidance) so that the
    compile happens now; returns those seconds (compile plus one step). Other sizes and batch
    sizes compile again on first use. `mode`: torch.compile's mode ("max-autotune", ...)."""
    model = _model(loaded)
    device = next(model.unet.parameters()).device
    if device.type == "cpu":
        _check_cpp_compiler()
    model.unet.compile(mode=mode)
    if not warmup_batch:
        return 0.0
    unet = model.unet
    param = next(unet.parameters())
    size = model.config.resolution // model.vae_scale_factor
    sample = torch.randn(warmup_batch, unet.config.in_channels, size, size, device=device, dtype=param.dtype)
    context = torch.zeros(warmup_batch, 77, unet.config.cross_attention_dim, device=device, dtype=param.dtype)
    start = time.perf_counter()
    with torch.no_grad():
        unet(sample, torch.tensor(500, device=device), encoder_hidden_states=context)
    return time.perf_counter() - start


def enable_attention_slicing(loaded, slice_size: str | int = "auto") -> None:
    """Attention computed one slice of heads at a time (diffusers' SlicedAttnProcessor): lower
    peak memory with the classic attention kernel. torch's SDPA, the default, already avoids
    the full attention matrix on CPU and CUDA; see BENCHMARKS.md before switching this on."""
    _model(loaded).unet.set_attention_slice(slice_size)


def enable_vae_tiling(loaded) -> None:
    """VAE decode and encode in overlapping tiles (diffusers' AutoencoderKL tiling): memory
    bounded by the tile size for large images; seams are blended."""
    vae = _model(loaded).vae
    if not hasattr(vae, "enable_tiling"):
        raise ValueError(f"this model's VAE ({type(vae).__name__}) has no tiled mode")
    vae.enable_tiling()


def use_tiny_decoder(loaded, path) -> None:
    """Decode latents with a TAESD-architecture tiny decoder read from `path` (see
    t2i.checkpoints.tiny_vae) instead of the full VAE decoder: several times faster, approximate."""
    from t2i.checkpoints.tiny_vae import load_tiny_decoder

    model = _model(loaded)
    decoder = load_tiny_decoder(path, latent_channels=model.latent_channels, scale_factor=model.vae_scale_factor)
    param = next(model.vae.parameters())
    runtime = getattr(loaded, "runtime", None)  # the same dtype and layout as the full VAE
    layout = torch.channels_last if getattr(runtime, "channels_last", False) else torch.contiguous_format
    model.tiny_decoder = decoder.to(device=param.device, dtype=param.dtype, memory_format=layout)
