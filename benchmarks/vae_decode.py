"""How fast does the SD 1.5 VAE decode one 512x512 image on this machine, in t2i and diffusers?

Random weights in the real SD 1.5 KL VAE (t2i's bundled config), one 64x64x4 latent. Side by
side in one process, warm-up first, min of --repeats:

- diffusers defaults: float32, NCHW;
- diffusers best manual settings: bf16 + channels_last;
- t2i default: what `Runtime.auto()` picks for this CPU, through `model.decode_latents`;
- t2i tiny decoder (TAESD architecture, random weights: the speed of `--vae-decoder tiny FILE`);
- t2i + VAE tiling (`--vae-tiling`; at 512x512 SD's tile covers the whole image, so this shows
  the switch's overhead; its memory effect is measured in sd15_txt2img.py).

    python benchmarks/vae_decode.py --threads 2 [--repeats 3]
    python benchmarks/vae_decode.py --small     # SD-shaped VAE at 1/10 width, 128x128: checks the script
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import peak_gflops  # noqa: E402
from sd15_unet_step import best_time  # noqa: E402

from t2i.models.ldm import VAELatents  # noqa: E402


class _VAEModel(VAELatents, nn.Module):
    """The VAE side of a t2i model: `decode_latents` as t2i's pipelines call it."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.config = SimpleNamespace(scaling_factor=vae.config.scaling_factor)


def main() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from t2i.checkpoints.tiny_vae import build_tiny_decoder
    from t2i.evaluate.random_sd import random_sd_vae
    from t2i.memory import MemoryPlan, apply_memory
    from t2i.runtime import Runtime, cpu_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--force-bf16", action="store_true", help="time bf16 rows even on a CPU without native bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = 16 if args.small else 64
    sizes = (512,) if args.small else (2048, 4096)
    # bf16 rows only where the CPU has native bf16: elsewhere it is emulated, ~100x slower (runtime.py)
    with_bf16 = args.small or args.force_bf16 or cpu_native_bf16() is not None
    peaks = {torch.float32: peak_gflops(torch.float32, sizes=sizes)}
    if with_bf16:
        peaks[torch.bfloat16] = peak_gflops(torch.bfloat16, sizes=sizes)

    base = random_sd_vae("sd15", tiny=args.small)
    z = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base.decode(z)
    flops = counter.get_total_flops()
    rows = []

    def decode(vae, dtype):
        def run():
            with torch.no_grad():
                return vae.decode(z.to(dtype)).sample.float()
        return run

    rows.append(("diffusers defaults (fp32, NCHW)", best_time(decode(base, torch.float32), args.repeats), torch.float32, flops))
    if with_bf16:
        manual = copy.deepcopy(base).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        rows.append(("diffusers best manual (bf16 + channels_last)",
                     best_time(decode(manual, torch.bfloat16), args.repeats), torch.bfloat16, flops))
        del manual

    runtime = Runtime.auto("auto", "cpu", args.threads)  # the VAE follows the UNet's choice: SD-sized here
    model = _VAEModel(copy.deepcopy(base))
    runtime.place(model)
    scaled = z * base.config.scaling_factor

    def t2i_decode():
        with torch.no_grad():
            return model.decode_latents(scaled.to(runtime.dtype)).float()

    rows.append((f"t2i default ({runtime.describe()})", best_time(t2i_decode, args.repeats), runtime.dtype, flops))

    tiny = build_tiny_decoder(4).eval().to(dtype=runtime.dtype, memory_format=torch.channels_last if
                                           runtime.channels_last else torch.contiguous_format)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tiny(scaled.to(runtime.dtype))
    rows.append(("t2i tiny decoder (TAESD)", best_time(lambda: tiny(scaled.to(runtime.dtype)), args.repeats),
                 runtime.dtype, counter.get_total_flops()))

    apply_memory(model, MemoryPlan(vae_tiling=True), "cpu")
    rows.append(("t2i default + VAE tiling", best_time(t2i_decode, args.repeats), runtime.dtype, flops))

    reference = rows[0][1]
    print(f"torch {torch.__version__}, {args.threads} threads; {'1/10-width ' if args.small else ''}SD 1.5 VAE decode, "
          f"{size * 8}x{size * 8}; {flops / 1e9:.0f} GFLOP (full decoder)")
    bf16_peak = f"bf16 {peaks[torch.bfloat16]:.0f}" if with_bf16 else "bf16 not timed (no native bf16 here)"
    print(f"matmul peak GFLOP/s: fp32 {peaks[torch.float32]:.0f}, {bf16_peak}; min of {args.repeats}")
    print("| variant | s | vs diffusers defaults | GFLOP/s | % of peak (its precision) |")
    print("|---|---|---|---|---|")
    for name, seconds, dtype, f in rows:
        achieved = f / seconds / 1e9
        print(f"| {name} | {seconds:.3f} | {seconds / reference:.2f}x | {achieved:.0f} | "
              f"{achieved / peaks[dtype]:.0%} ({str(dtype).removeprefix('torch.')}) |")


if __name__ == "__main__":
    main()
