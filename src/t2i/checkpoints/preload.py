"""Cast a Stable Diffusion single file's weights into their final dtype while the libraries import.

A cold `t2i generate` of a 2 GB float16 SD 1.5 file on a CPU spends its first seconds importing
torch, transformers and diffusers (one core, Python holding the GIL) and then casting 1.07 G
weights into float32 (4.3 GB of fresh memory: page faults and conversion, a few CPU seconds). The
two do not depend on each other past `import torch`, so `start_preload` (called by the CLI right
after its flags are parsed) does the cast in a daemon thread (torch releases the GIL for it) on
the other core while the main thread imports. `load_single_file` then `take`s the cast tensors:
the same values, cast once from the file's dtype, that it would have made itself.

Only a `.safetensors` file on the CPU, and only the tensors of the UNet, VAE and text encoders
(not EMA copies or anything else a file carries). The loader still checks everything: it uses
the preloaded tensors only when the dtype and layout of every component are the ones it chose
(else it casts from the file as usual), and a preload that failed for any reason is ignored
(the loader then reports the problem itself). Nothing happens at import.

**Off unless T2I_PRELOAD=1.** Measured on a quiet 2-core Xeon (BENCHMARKS.md, "Cold start"), the
cast competes with the imports for the cores and memory bandwidth: 15.3 s to the first UNet step
with it against 14.5 s without, and more CPU time. It is kept as an opt-in for machines with
cores to spare, where it has not been measured yet.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

# The tensors of each component in an original-layout file (t2i.checkpoints.detect's prefixes).
COMPONENT_PREFIXES = (("unet", ("model.diffusion_model.",)), ("vae", ("first_stage_model.",)),
                      ("text_encoder", ("cond_stage_model.", "conditioner.embedders.")))


@dataclass
class Preload:
    path: Path
    stamp: tuple[int, int]  # (size, mtime_ns) when it started: a file replaced since is not used
    thread: threading.Thread | None = None
    state: dict | None = None  # key -> tensor, the components' floating tensors cast
    placements: dict = field(default_factory=dict)  # component -> (dtype, memory format) used
    # set when nobody will take it: the thread stops at its next tensor (a daemon thread still inside
    # torch when the interpreter exits aborts the process: "terminate called without an active exception")
    cancel: threading.Event = field(default_factory=threading.Event)


_LOCK = threading.Lock()
_PENDING: dict[Path, Preload] = {}


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def start_preload(path, precision: str = "auto", device: str | None = None, threads: int | None = None,
                  runtime=None) -> threading.Thread | None:
    """Start casting `path`'s weights in a daemon thread, for the runtime `Runtime.auto(precision,
    device, threads)` would choose (or `runtime`); returns the thread (None when there is nothing
    to do: not a `.safetensors` file, or not on the CPU)."""
    if os.environ.get("T2I_PRELOAD") != "1":  # opt-in: no gain measured on 2 cores (module docstring)
        return None
    if not path or (device is not None and not str(device).startswith("cpu")):
        return None
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    job = Preload(path.resolve(), _stamp(path))
    job.thread = threading.Thread(target=_run, args=(job, precision, device, threads, runtime),
                                  name="t2i-preload", daemon=True)
    discard_all()  # one preload at a time: an earlier one nobody took is dropped (its memory with it)
    with _LOCK:
        _PENDING[job.path] = job
    job.thread.start()
    return job.thread


def discard_all() -> None:
    """Drop every preload not taken (a command that ended before it loaded its model): called when
    a CLI command ends, so a process that runs commands in turn never keeps a cast model alive."""
    with _LOCK:
        jobs = list(_PENDING.values())
        _PENDING.clear()
    for job in jobs:
        job.cancel.set()
    for job in jobs:  # stopped at their next tensor (or once `import torch` is done): the exit is clean
        job.thread.join(timeout=60)


def _forget(job: Preload) -> None:
    """A preload with nothing to offer leaves the table at once."""
    with _LOCK:
        if _PENDING.get(job.path) is job:
            del _PENDING[job.path]


def _component(key: str) -> str | None:
    return next((name for name, prefixes in COMPONENT_PREFIXES if key.startswith(prefixes)), None)


def _run(job: Preload, precision: str, device: str | None, threads: int | None, runtime) -> None:
    try:
        from types import SimpleNamespace

        import torch

        from t2i.checkpoints.safe_load import (
            load_state_dict_file,
            read_safetensors_header,
        )
        from t2i.runtime import Runtime

        runtime = runtime or Runtime.auto(precision, device, threads)  # no device: CUDA if there is one
        if runtime.device.type != "cpu":  # cast on the GPU by the loader (float16 files: nothing to cast)
            return _forget(job)
        metadata = read_safetensors_header(job.path)[1]
        if metadata.get("t2i_family") or metadata.get("t2i_kind"):  # a t2i file: its own loader
            return _forget(job)
        if job.cancel.is_set():
            return
        state = load_state_dict_file(job.path)
        unet = [t for k, t in state.items() if _component(k) == "unet"]
        if not unet:
            return _forget(job)  # not an SD checkpoint (a LoRA, a VAE alone, ...)
        final = runtime.for_model(SimpleNamespace(unet=SimpleNamespace(parameters=lambda: iter(unet))))
        placements = {name: final.placement(name) for name, _ in COMPONENT_PREFIXES}
        cast = {}
        for key, tensor in state.items():
            if job.cancel.is_set():
                return
            name = _component(key)
            if name is not None and tensor.is_floating_point():
                dtype, layout = placements[name]
                tensor = tensor.to(dtype=dtype, memory_format=layout if tensor.ndim == 4 else torch.preserve_format)
            cast[key] = tensor
        job.placements, job.state = placements, cast
    except Exception:  # noqa: BLE001  the loader reads the file again and reports what is wrong
        job.state = None
        _forget(job)


def take(path, placements: dict) -> dict | None:
    """The preloaded tensors of `path` (waiting for the cast to finish), or None: no preload, the
    file changed since, it failed, or its dtypes or layouts differ from `placements` (component ->
    (dtype, memory format), the loader's choice). Each preload is taken once."""
    path = Path(path).resolve()
    with _LOCK:
        job = _PENDING.pop(path, None)
    if job is None:
        return None
    job.thread.join()
    try:
        same_file = _stamp(path) == job.stamp
    except OSError:
        return None
    if not same_file or job.state is None:
        return None
    if any(job.placements.get(name) != placement for name, placement in placements.items()):
        return None
    return job.state
