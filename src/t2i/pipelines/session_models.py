"""Loading one model for a Session: device and precision, the files of `LoadSettings`, and the
load-time options applied once (VAE, LoRA/embedding folders, offload, tiny decoder, compile)."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace

from t2i.errors import ParamError
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.schema import validate_strict
from t2i.pipelines.session_types import ModelEntry, NoteCallback, parameter_bytes
from t2i.runtime import check_device

# Phase events of a load at DEBUG level (silent unless a caller enables the logger):
# benchmarks/cold_start.py times a cold start's phases from them.
TIMING = logging.getLogger("t2i.timing")


def apply_threads(settings: LoadSettings) -> None:
    """torch's CPU threads are one setting per process: the latest request wins."""
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)


# diffusers and transformers resolve their classes lazily, on first attribute access; two threads
# doing that at once on a fresh process (two workers' first loads of different models) can see a
# half-initialised module. The classes t2i's loaders and samplers use are resolved once, here,
# under a lock, before any load.
_LIBRARIES_LOCK = threading.Lock()
_libraries_ready = False
DIFFUSERS_CLASSES = ("AutoencoderKL", "UNet2DConditionModel", "UNet2DModel", "VQModel", "DDPMScheduler",
                     "DDIMScheduler")
TRANSFORMERS_CLASSES = ("CLIPTextConfig", "CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer",
                        "CLIPConfig", "CLIPModel")


def prepare_model_libraries() -> None:
    """Resolve the lazy library classes every load and sampler needs, once per process (thread-safe)."""
    global _libraries_ready
    if _libraries_ready:
        return
    with _LIBRARIES_LOCK:
        if _libraries_ready:
            return
        import diffusers
        import transformers

        from t2i.diffusion.samplers import SAMPLERS

        names = [(diffusers, n) for n in DIFFUSERS_CLASSES] + [(transformers, n) for n in TRANSFORMERS_CLASSES]
        names += [(diffusers, spec.scheduler) for spec in SAMPLERS.values()]
        for module, name in names:
            try:
                getattr(module, name)
            except (AttributeError, ImportError, RuntimeError):  # a class this version lacks, or one needing an
                pass  # extra package: the code that needs it says so when it runs
        _libraries_ready = True


def load_entry(settings: LoadSettings, kind: str, notes: NoteCallback) -> ModelEntry:
    validate_strict(settings)
    prepare_model_libraries()
    TIMING.debug("libraries imported")
    start = time.perf_counter()
    device = check_device(settings.device)
    apply_threads(settings)
    if kind == "diffusion":
        entry = _load_diffusion(settings, device, notes)
    elif kind == "family":
        from t2i.pipelines.families import load_family_model

        if settings.model_path is None:
            raise ParamError("t2i sample needs a model file or training run folder (the bundled model is a latent "
                             "diffusion model: use `t2i generate`)")
        entry = ModelEntry(load_family_model(settings.model_path, str(device), settings.first_stage), settings, kind)
    elif kind == "sr":
        from t2i.pipelines.upscale import load_sr_model

        entry = ModelEntry(load_sr_model(settings.model_path, str(device)), settings, kind)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    entry.load_seconds = time.perf_counter() - start
    TIMING.debug("model loaded")
    entry.bytes = parameter_bytes(getattr(entry.loaded, "model", entry.loaded))
    return entry


def _load_diffusion(settings: LoadSettings, device, notes: NoteCallback) -> ModelEntry:
    from t2i.checkpoints.registry import load_model
    from t2i.extra_networks.library import configure_extra_networks
    from t2i.memory import MemoryPlan, apply_memory
    from t2i.runtime import Runtime

    runtime = Runtime.auto(settings.precision, str(device), settings.threads)
    offload = settings.offload != "none" and device.type == "cuda"
    if settings.offload != "none" and not offload:
        notes(f"note: offload {settings.offload} ignored: it moves weights between main memory and a CUDA GPU, "
              f"and on {device.type} they already live in main memory")
    import torch

    # a model too large for the GPU must never be put there whole: load into main memory first
    loaded = load_model(settings.model_path, replace(runtime, device=torch.device("cpu")) if offload else runtime)
    configure_extra_networks(loaded, vae=settings.vae, lora_dirs=settings.lora_dirs or None,
                             embedding_dirs=settings.embedding_dirs or None)
    if offload:
        apply_memory(loaded.model, MemoryPlan(offload=settings.offload), device)  # for the model's lifetime
        loaded.runtime = replace(loaded.runtime, device=device)
    entry = ModelEntry(loaded, settings, "diffusion")
    tiny = settings.tiny_decoder
    if tiny is not None:
        from t2i.speedups import use_tiny_decoder

        use_tiny_decoder(loaded, tiny)
        entry.notes.append(f"VAE decoder: tiny ({tiny})")
    if settings.compile:
        from t2i.speedups import compile_unet_cached

        notes("compiling the UNet (torch.compile; from the compile cache when it has this UNet) ...")
        report = compile_unet_cached(loaded, settings.compile_cache, notes)
        entry.compile = report
        if report.source != "later":
            entry.notes.append(f"{report.describe()} (compile and one step at {report.shape}); other sizes "
                               f"compile on first use" + (", then are cached too" if report.cache else ""))
    return entry
