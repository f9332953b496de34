"""Seamless textures (the web UI's "Tiling"): every padded Conv2d of the given modules pads
circularly, so the image wraps around at its edges and tiles without seams.

    with circular_padding(model.unet, model.vae, enabled=params.tiling):
        latents = denoise(...)
        images = decode(...)

Only instance attributes change (`padding_mode` of each `torch.nn.Conv2d`), never a class, and
they are restored in `finally`, so the model is exactly as before afterwards, even after an
error. torch's Conv2d reads `padding_mode` on every call: with "circular" it pads the input by
wrapping (its padding amounts were fixed at construction) and convolves without padding.

While the context is open the modules are changed for every caller: a server that shares one
model between requests must not run a tiled and an untiled generation at the same time.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

CIRCULAR = "circular"


def _pads(conv: nn.Conv2d) -> bool:
    """Whether the convolution pads at all (1x1 and 'valid' convolutions do not)."""
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


def padded_convs(*modules: nn.Module) -> list[nn.Conv2d]:
    """Every Conv2d (subclasses included) with padding inside `modules`, each once."""
    seen: dict[int, nn.Conv2d] = {}
    for module in modules:
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d) and _pads(layer):
                seen.setdefault(id(layer), layer)
    return list(seen.values())


@contextmanager
def circular_padding(*modules: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, the padded Conv2d layers of `modules` (e.g. a UNet and a VAE) pad
    circularly; yields how many layers were switched (0 when not `enabled`). Nests safely."""
    if not enabled:
        yield 0
        return
    layers = padded_convs(*modules)
    saved = [(layer, layer.padding_mode) for layer in layers]
    try:
        for layer in layers:
            layer.padding_mode = CIRCULAR
        yield len(layers)
    finally:
        for layer, mode in saved:
            layer.padding_mode = mode
