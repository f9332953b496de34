"""A float16 VAE that overflows is run again in float32, as the web UI's automatic VAE upcast does.

On CUDA t2i runs the VAE in float16 (t2i.runtime: the fastest dtype there). Most SD VAEs decode
fine in float16, but some (SDXL's original VAE, some fine-tunes) let activations pass float16's
65,504 and the image comes out NaN/inf (black). Rather than paying for float32 on every decode
(diffusers' `force_upcast`), t2i tries float16, checks the result, and only when it is not finite
casts the VAE to float32 for good (this model, this process: the next call would overflow again)
and repeats the call, with a warning. bfloat16 and float32 have float32's range: never retried.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def run_vae(vae: nn.Module, call: Callable[[torch.Tensor], T], x: torch.Tensor,
            values: Callable[[T], torch.Tensor] = lambda out: out) -> T:
    """`call(x)` with the VAE as it is; if the VAE is float16 and `values(result)` is not finite,
    the VAE is cast to float32 and `call(x.float())` returned instead."""
    out = call(x)
    checked = values(out)
    if checked.dtype != torch.float16 or finite(checked):
        return out
    # nn.Module.to, not diffusers' override (it warns on every dtype cast); keeps channels_last
    nn.Module.to(vae, dtype=torch.float32)
    logging.getLogger("t2i").warning(
        "the VAE overflowed in float16 (NaN/inf in its output): redone in float32, and the VAE stays float32 "
        "for this model from now on (the web UI's automatic VAE upcast)")
    return call(x.float())
