"""Opt-in accelerators for a loaded diffusion model, each measured in benchmarks/ (BENCHMARKS.md,
"Fast path"). The automatic precision and layout choice lives in t2i.runtime; DeepCache (step
caching) in t2i.diffusion.deepcache, switched on per generation; attention slicing and VAE
tiling, which save memory rather than time, in t2i.memory.

    compile_unet(loaded)                 # torch.compile the UNet (Inductor); returns compile seconds
    compile_unet_cached(loaded, root, notes)   # the same, kept on disk (t2i.compile_cache)
    use_tiny_decoder(loaded, "taesd_decoder.safetensors")   # TAESD: fast approximate VAE decode

Each takes a LoadedModel (t2i.checkpoints.registry) or a model and changes it in place, through
public switches (`nn.Module.compile`, a `tiny_decoder` that `decode_latents` uses).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

import torch

from t2i.checkpoints.tiny_vae import load_tiny_decoder
from t2i.compile_cache import CompileCache


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
    options = inductor_options(device)
    if mode or not options:  # torch.compile takes a mode or options, not both
        model.unet.compile(mode=mode)
    else:
        model.unet.compile(options=options)
    unet = model.unet
    config = unet.config
    if not warmup_batch or config.addition_embed_type not in (None, "text_time"):
        return 0.0  # compiled on first use
    param = next(unet.parameters())
    zeros = lambda *shape: torch.zeros(warmup_batch, *shape, device=device, dtype=param.dtype)  # noqa: E731
    size = _latent_size(model)
    extra = {}
    if config.addition_embed_type == "text_time":  # SDXL: pooled text embedding and 6 size/crop ids
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {"text_embeds": zeros(pooled), "time_ids": zeros(6)}
    start = time.perf_counter()
    with torch.no_grad():
        unet(zeros(config.in_channels, size, size), torch.tensor(500, device=device),
             encoder_hidden_states=zeros(_context_length(model), config.cross_attention_dim), **extra)
    return time.perf_counter() - start


def inductor_options(device: torch.device) -> dict:
    """Inductor settings for the UNet on `device`. On a CPU, Inductor must keep the memory layout
    t2i chose (t2i.runtime: channels_last only with bf16, where it is faster): its own layout
    optimisation turns float32 convolutions channels_last, which made the compiled SD 1.5 UNet
    slower than eager on a CPU without AMX (BENCHMARKS.md, "Why compiled was slower than eager")."""
    return {"layout_optimization": False} if device.type == "cpu" else {}


def _context_length(model) -> int:
    """The text context's length a prompt gives (CLIP's 77; less for small t2i models): the warm-up
    must match what generation passes, or the first generation compiles again."""
    length = getattr(getattr(model, "tokenizer", None), "model_max_length", None)
    return length if isinstance(length, int) and 0 < length <= 4096 else 77


def _latent_size(model) -> int:
    return model.config.resolution // model.vae_scale_factor


@dataclass
class CompileReport:
    seconds: float  # the compile (or the cached load) and one step at the model's default size
    source: str  # "cache": every graph came from the compile cache; "compiled": built now; "later": on first use
    cache: CompileCache | None  # the open cache entry (commit it after runs that compile new sizes)
    shape: str = ""  # the warm-up input

    def describe(self) -> str:
        if self.source == "later":
            return "UNet compiled on first use"
        where = "from the compile cache" if self.source == "cache" else \
            ("compiled, now cached" if self.cache is not None else "compiled (no compile cache)")
        return f"UNet {where} in {self.seconds:.1f}s"


def _graph_cache_counts() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses so far in this process (torch's own counters)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["fxgraph_cache_hit"], counters["inductor"]["fxgraph_cache_miss"]


def compile_unet_cached(loaded, cache_root=None, notes=print, **compile_args) -> CompileReport:
    """`compile_unet` with its artefacts kept in the compile cache under `cache_root` (None: the
    default folder; "off": torch's own default, unchecked; see t2i.compile_cache). A cache entry
    torch fails to load is discarded with a note and the UNet compiled again."""
    model = _model(loaded)
    device = next(model.unet.parameters()).device
    if device.type == "cpu":
        _check_cpp_compiler()
    try:
        cache = CompileCache.open(cache_root, model.unet, notes, model=getattr(loaded, "name", ""))
    except OSError as error:
        notes(f"note: compile cache folder {cache_root or 'default'} cannot be used ({error.strerror or error}); "
              f"compiling without it")
        cache = None
    batch = compile_args.get("warmup_batch", 2)
    shape = f"{batch}x{model.unet.config.in_channels}x{_latent_size(model)}x{_latent_size(model)}" if batch else ""
    before = _graph_cache_counts()
    try:
        seconds = compile_unet(loaded, **compile_args)
    except Exception as error:  # torch failing on a cached artefact (a .so it cannot load, ...)
        if cache is None or cache.state == "new":  # nothing came from the cache: a real failure
            raise
        cache.discard(f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
        torch._dynamo.reset()  # forget the graphs traced from the bad entry
        before = _graph_cache_counts()
        seconds = compile_unet(loaded, **compile_args)
    hits, misses = (now - then for now, then in zip(_graph_cache_counts(), before))
    if not seconds and not hits and not misses:
        return CompileReport(0.0, "later", cache, shape)
    if cache is not None:
        cache.commit(shape)
    return CompileReport(seconds, "cache" if hits and not misses else "compiled", cache, shape)


def use_tiny_decoder(loaded, path) -> None:
    """Decode latents with a TAESD-architecture tiny decoder read from `path` (see
    t2i.checkpoints.tiny_vae) instead of the full VAE decoder: several times faster, approximate."""
    model = _model(loaded)
    decoder = load_tiny_decoder(path, latent_channels=model.latent_channels, scale_factor=model.vae_scale_factor)
    param = next(model.vae.parameters())
    runtime = getattr(loaded, "runtime", None)  # the same dtype and layout as the full VAE
    layout = torch.channels_last if getattr(runtime, "channels_last", False) else torch.contiguous_format
    model.tiny_decoder = decoder.to(device=param.device, dtype=param.dtype, memory_format=layout)
