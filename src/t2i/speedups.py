"""Opt-in accelerators for a loaded diffusion model, each measured in benchmarks/ (BENCHMARKS.md,
"Fast path"). The automatic precision and layout choice lives in t2i.runtime; DeepCache (step
caching) in t2i.diffusion.deepcache, switched on per generation; attention slicing and VAE
tiling, which save memory rather than time, in t2i.memory.

    compile_unet(loaded)                 # torch.compile the UNet (Inductor); returns compile seconds
    use_tiny_decoder(loaded, "taesd_decoder.safetensors")   # TAESD: fast approximate VAE decode

Each takes a LoadedModel (t2i.checkpoints.registry) or a model and changes it in place, through
public switches (`nn.Module.compile`, a `tiny_decoder` that `decode_latents` uses).
"""
from __future__ import annotations

import os
import shutil
import time

import torch

from t2i.checkpoints.tiny_vae import load_tiny_decoder


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
    unet = model.unet
    config = unet.config
    if not warmup_batch or config.addition_embed_type not in (None, "text_time"):
        return 0.0  # compiled on first use
    param = next(unet.parameters())
    zeros = lambda *shape: torch.zeros(warmup_batch, *shape, device=device, dtype=param.dtype)  # noqa: E731
    size = model.config.resolution // model.vae_scale_factor
    extra = {}
    if config.addition_embed_type == "text_time":  # SDXL: pooled text embedding and 6 size/crop ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": zeros(pooled), "time_ids": zeros(6)}
    start = time.perf_counter()
    with torch.no_grad():
        unet(zeros(config.in_channels, size, size), torch.tensor(500, device=device),
             encoder_hidden_states=zeros(77, config.cross_attention_dim), **extra)
    return time.perf_counter() - start


def use_tiny_decoder(loaded, path) -> None:
    """Decode latents with a TAESD-architecture tiny decoder read from `path` (see
    t2i.checkpoints.tiny_vae) instead of the full VAE decoder: several times faster, approximate."""
    model = _model(loaded)
    decoder = load_tiny_decoder(path, latent_channels=model.latent_channels, scale_factor=model.vae_scale_factor)
    param = next(model.vae.parameters())
    runtime = getattr(loaded, "runtime", None)  # the same dtype and layout as the full VAE
    layout = torch.channels_last if getattr(runtime, "channels_last", False) else torch.contiguous_format
    model.tiny_decoder = decoder.to(device=param.device, dtype=param.dtype, memory_format=layout)
