"""Where and how models run: device, dtype and CPU threads, chosen by the caller.

Nothing probes hardware at import; `Runtime.auto()` is called by the front ends (CLI, API) and
reports what it chose so a user can see it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "full")


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype
    threads: int | None = None  # torch CPU threads; None leaves torch's default

    @classmethod
    def auto(cls, precision: str = "auto", device: str | None = None, threads: int | None = None) -> "Runtime":
        """`full`: float32 anywhere. `auto`: half precision on CUDA; float32 on a CPU (t2i's own
        small models are dispatch-bound there, where bf16 gains nothing)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float32
        if precision == "auto" and dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cls(dev, dtype, threads)

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def describe(self) -> str:
        return f"{self.device.type}, {str(self.dtype).removeprefix('torch.')}"
