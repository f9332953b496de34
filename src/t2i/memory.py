"""Memory options for generation: attention slicing, VAE tiling and CPU offload.

    options = MemoryOptions(attention_slicing="auto", vae_tiling="auto", offload="none")
    plan = plan_memory(options, runtime.device, width=2048, height=2048)   # what "auto" means here
    with memory_applied(loaded.model, plan, runtime.device):
        txt2img(loaded, params)
    print(plan.describe())   # "attention slicing off, VAE tiling on, offload none"

- Attention slicing computes attention a few heads at a time (diffusers' SlicedAttnProcessor on
  every UNet attention layer). It saves memory only where attention would materialise the
  whole (tokens x tokens) matrix; torch's SDPA kernels already avoid that, so "auto" leaves it
  off except on CUDA GPUs under 8 GiB.
- VAE tiling decodes (and encodes) the image in overlapping tiles of the VAE's training size,
  blended at the seams (diffusers' AutoencoderKL tiling). The decoder's full-resolution
  activations dominate memory for large images (an SD VAE holds several 128-channel float
  maps of the full image), so "auto" tiles above 1024x1024 pixels on a CPU or a GPU under
  12 GiB, above 2048x2048 on larger GPUs. Tiles see less context: seams may show slightly.
- CPU offload (CUDA only) keeps weights in main memory and moves them to the GPU when used:
  "model" moves one whole component at a time (text encoder, UNet, VAE; the one in use is the
  only one on the GPU), "sequential" moves each layer just before it runs and back after
  (smallest GPU memory, slowest). On a CPU the weights are already in main memory; asking for
  offload there is ignored with a note.

Everything is applied through the modules' own public switches and torch forward hooks, and
undone when the `memory_applied` block ends; no class is patched.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

SWITCH = ("auto", "off", "on")
OFFLOAD = ("none", "model", "sequential")
COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae")
GIB = 1024**3
SMALL_GPU_FOR_SLICING = 8 * GIB
SMALL_GPU_FOR_TILING = 12 * GIB
TILE_ABOVE_PIXELS = 1024 * 1024  # CPU, or a GPU under SMALL_GPU_FOR_TILING
TILE_ABOVE_PIXELS_LARGE_GPU = 2048 * 2048


@dataclass(frozen=True)
class MemoryOptions:
    """What the user asked for."""

    attention_slicing: str = "auto"  # auto | off | on
    vae_tiling: str = "auto"  # auto | off | on
    offload: str = "none"  # none | model | sequential

    def __post_init__(self):
        for name, allowed in (("attention_slicing", SWITCH), ("vae_tiling", SWITCH), ("offload", OFFLOAD)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass(frozen=True)
class MemoryPlan:
    """What was chosen for one device and image size, and why where it differs from the request."""

    attention_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        flag = lambda on: "on" if on else "off"  # noqa: E731
        return (f"attention slicing {flag(self.attention_slicing)}, VAE tiling {flag(self.vae_tiling)}, "
                f"offload {self.offload}")


def gpu_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes (None for other devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(device).total_memory


def plan_memory(options: MemoryOptions, device: torch.device | str, width: int, height: int,
                gpu_bytes: int | None = None) -> MemoryPlan:
    """Resolve "auto" for `device` and the largest image the VAE will decode (width x height).
    `gpu_bytes`: the GPU's memory (default: asked from CUDA)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda and gpu_bytes is None:
        gpu_bytes = gpu_memory(device)
    notes = []
    if options.attention_slicing == "auto":
        slicing = cuda and gpu_bytes is not None and gpu_bytes < SMALL_GPU_FOR_SLICING
    else:
        slicing = options.attention_slicing == "on"
    if options.vae_tiling == "auto":
        large_gpu = cuda and gpu_bytes is not None and gpu_bytes >= SMALL_GPU_FOR_TILING
        tiling = width * height > (TILE_ABOVE_PIXELS_LARGE_GPU if large_gpu else TILE_ABOVE_PIXELS)
    else:
        tiling = options.vae_tiling == "on"
    offload = options.offload
    if offload != "none" and not cuda:
        notes.append(f"offload {offload} ignored: it moves weights between main memory and a CUDA GPU, "
                     f"and on {device.type} they already live in main memory")
        offload = "none"
    return MemoryPlan(slicing, tiling, offload, tuple(notes))


def components(model) -> dict[str, nn.Module]:
    return {name: getattr(model, name) for name in COMPONENTS if getattr(model, name, None) is not None}


# ----------------------------------------------------------------------------- attention, tiling


def _enable_attention_slicing(unet: nn.Module) -> Callable[[], None]:
    """Sliced attention on every attention layer of `unet`: half its heads at a time (at least
    one). Returns the undo."""
    saved = dict(unet.attn_processors)
    for module in unet.modules():
        if hasattr(module, "set_attention_slice") and hasattr(module, "sliceable_head_dim"):
            module.set_attention_slice(max(1, module.sliceable_head_dim // 2))
    return lambda: unet.set_attn_processor(saved)


def _set_vae_tiling(vae: nn.Module, on: bool) -> Callable[[], None]:
    before = bool(getattr(vae, "use_tiling", False))
    if not hasattr(vae, "enable_tiling"):
        if on:
            raise ValueError(f"VAE tiling: {type(vae).__name__} has no tiled decoding; use --vae-tiling off")
        return lambda: None
    vae.enable_tiling() if on else vae.disable_tiling()
    return lambda: vae.enable_tiling() if before else vae.disable_tiling()


# ----------------------------------------------------------------------------- offload


def _to_device(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _holds_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))


def _move_own(module: nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers that `module` holds itself (not its children's)."""
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buffer in list(module.named_buffers(recurse=False)):
        setattr(module, name, buffer.to(device))


class Offloader:
    """Keep `parts` (name -> module) in `storage` memory and run them on `device`, through
    forward pre-hooks on every module that holds weights: the hook brings the weights (the whole
    component in "model" mode, the module's own in "sequential" mode) and the inputs to
    `device`; in sequential mode a forward hook sends the module's weights back afterwards.
    `on_move(name, device)` is told of every whole-component move (tests, logs)."""

    def __init__(self, parts: dict[str, nn.Module], device: torch.device, mode: str,
                 storage: torch.device | str = "cpu", on_move: Callable[[str, torch.device], None] | None = None):
        if mode not in ("model", "sequential"):
            raise ValueError(f"offload mode must be model or sequential, got {mode!r}")
        self.parts, self.device, self.mode = parts, torch.device(device), mode
        self.storage, self.on_move = torch.device(storage), on_move
        self.active: str | None = None
        self._handles = []
        for name, module in parts.items():
            module.to(self.storage)
            for sub in module.modules():
                if _holds_weights(sub):
                    self._handles.append(sub.register_forward_pre_hook(self._pre_hook(name, sub), with_kwargs=True))
                    if mode == "sequential":
                        self._handles.append(sub.register_forward_hook(self._post_hook(sub)))

    def _activate(self, name: str) -> None:
        if self.active == name:
            return
        if self.active is not None:
            self.parts[self.active].to(self.storage)
            if self.on_move:
                self.on_move(self.active, self.storage)
        self.parts[name].to(self.device)
        self.active = name
        if self.on_move:
            self.on_move(name, self.device)

    def _pre_hook(self, name: str, module: nn.Module):
        def hook(_module, args, kwargs):
            if self.mode == "model":
                self._activate(name)
            else:
                _move_own(module, self.device)
            return _to_device(args, self.device), _to_device(kwargs, self.device)
        return hook

    def _post_hook(self, module: nn.Module):
        def hook(_module, _args, output):
            _move_own(module, self.storage)
            return output
        return hook

    def remove(self, final_device: torch.device | str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self.parts.values():
            module.to(final_device)
        self.active = None


# ----------------------------------------------------------------------------- applying a plan


def apply_memory(model, plan: MemoryPlan, device: torch.device | str) -> Callable[[], None]:
    """Switch `model`'s modules to `plan`; returns a function that undoes it (weights return to
    `device`)."""
    undo: list[Callable[[], None]] = []
    try:
        if plan.attention_slicing:
            undo.append(_enable_attention_slicing(model.unet))
        undo.append(_set_vae_tiling(model.vae, plan.vae_tiling))
        if plan.offload != "none":
            offloader = Offloader(components(model), torch.device(device), plan.offload)
            undo.append(lambda: offloader.remove(device))
    except BaseException:
        for step in reversed(undo):
            step()
        raise

    def restore() -> None:
        for step in reversed(undo):
            step()
    return restore


@contextmanager
def memory_applied(model, plan: MemoryPlan, device: torch.device | str) -> Iterator[MemoryPlan]:
    restore = apply_memory(model, plan, device)
    try:
        yield plan
    finally:
        restore()
