"""How fast is one SD 1.5 UNet step with classifier-free guidance at 512x512 on this machine, in
t2i and in diffusers, and how close to the hardware peak?

Random weights in the real SD 1.5 UNet architecture (t2i's bundled config, 860 M parameters),
batch 2 (uncond + cond), 64x64 latents, 77-token context. Side by side in one process:

- diffusers defaults: float32, NCHW, SDPA attention, as `UNet2DConditionModel` loads;
- diffusers best manual settings: bf16 weights + channels_last (what diffusers' CPU docs advise);
- t2i default: whatever `Runtime.auto()` picks for this CPU (no setting touched), called
  through t2i's CFG denoiser as the sampler calls it;
- with --accelerators: t2i + torch.compile (compile time reported), t2i + DeepCache (interval 3,
  mean over 6 consecutive steps), t2i + attention slicing.

Each timing: warm-up first (kernels are built on the first call of a shape), then the min of
--repeats. FLOPs of one step counted with torch.utils.flop_counter; % of peak against the matmul
peak of the precision used, measured in the same run (benchmarks/matmul_peak.py).

    python benchmarks/sd15_unet_step.py --threads 2 [--repeats 3] [--accelerators]
    python benchmarks/sd15_unet_step.py --small      # SD-shaped UNet at 1/10 width: checks the script
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import peak_gflops  # noqa: E402


class _Holder(nn.Module):
    """The part of a t2i model that Runtime.place and the denoiser need: a `.unet`."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.vae = None  # no VAE in this benchmark


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def step_flops(unet, x, t, ctx) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=ctx)
    return counter.get_total_flops()


def main() -> None:
    from t2i.diffusion.deepcache import DeepCacheUNet
    from t2i.diffusion.sampling import CFGDenoiser
    from t2i.evaluate.random_sd import random_sd_unet
    from t2i.memory import MemoryPlan, apply_memory
    from t2i.runtime import Runtime, cpu_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accelerators", action="store_true", help="also time compile, DeepCache, slicing")
    parser.add_argument("--small", action="store_true", help="SD-shaped UNet at 1/10 width, 16x16 latents")
    parser.add_argument("--force-bf16", action="store_true", help="time bf16 rows even on a CPU without native bf16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = 16 if args.small else 64

    # bf16 rows only where the CPU has native bf16: elsewhere it is emulated, ~100x slower (runtime.py)
    with_bf16 = args.small or args.force_bf16 or cpu_native_bf16() is not None
    peak_sizes = (512,) if args.small else (2048, 4096)
    peaks = {torch.float32: peak_gflops(torch.float32, sizes=peak_sizes)}
    if with_bf16:
        peaks[torch.bfloat16] = peak_gflops(torch.bfloat16, sizes=peak_sizes)
    base = random_sd_unet("sd15", tiny=args.small)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, size, size, generator=g)  # one image; CFG doubles the UNet batch
    context = torch.randn(2, 77, base.config.cross_attention_dim, generator=g)
    t = torch.tensor(500)
    x2 = torch.cat([latents, latents])
    flops = step_flops(base, x2, t, context)
    rows = []

    def diffusers_step(unet, dtype):
        def run():
            with torch.no_grad():
                out = unet(x2.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample.float()
                uncond, cond = out.chunk(2)
                return uncond + 7.0 * (cond - uncond)
        return run

    def add(name, seconds, dtype, note=""):
        rows.append((name, seconds, dtype, note))

    add("diffusers defaults (fp32, NCHW, SDPA)", best_time(diffusers_step(base, torch.float32), args.repeats),
        torch.float32)

    if with_bf16:
        manual = copy.deepcopy(base).to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        add("diffusers best manual (bf16 + channels_last)",
            best_time(diffusers_step(manual, torch.bfloat16), args.repeats), torch.bfloat16)
        del manual

    runtime = Runtime.auto("auto", "cpu", args.threads)
    holder = _Holder(copy.deepcopy(base))
    runtime = runtime.for_model(holder)
    runtime.place(holder)
    denoiser = CFGDenoiser(holder.unet, context[1:], context[:1], 7.0, batch_size=1)

    def t2i_step():
        with torch.no_grad():
            return denoiser(latents, t)

    add(f"t2i default ({runtime.describe()})", best_time(t2i_step, args.repeats), runtime.dtype)

    if args.accelerators:
        with DeepCacheUNet(holder.unet, interval=3) as cached:
            dc = CFGDenoiser(cached, context[1:], context[:1], 7.0, batch_size=1)
            with torch.no_grad():
                dc(latents, t)  # warm-up of both paths
                dc(latents, t)
                dc(latents, t)
                cached.calls = 0
                start = time.perf_counter()
                for _ in range(6):
                    dc(latents, t)
            add("t2i + DeepCache interval 3 (mean of 6 steps)", (time.perf_counter() - start) / 6, runtime.dtype,
                "approximate; GFLOP/s counts a full step's work")
        sliced = _Holder(copy.deepcopy(holder.unet))
        apply_memory(sliced, MemoryPlan(attention_slicing=True), "cpu")
        sliced_denoiser = CFGDenoiser(sliced.unet, context[1:], context[:1], 7.0, batch_size=1)
        add("t2i + attention slicing", best_time(lambda: sliced_denoiser(latents, t), args.repeats), runtime.dtype)
        del sliced
        from t2i.speedups import compile_unet

        start = time.perf_counter()
        compile_unet(holder, warmup_batch=None)
        with torch.no_grad():
            denoiser(latents, t)
        compile_s = time.perf_counter() - start
        add("t2i + torch.compile", best_time(t2i_step, args.repeats), runtime.dtype,
            f"compile + first step {compile_s:.0f} s")

    reference = rows[0][1]
    print(f"torch {torch.__version__}, {args.threads} threads; UNet {'SD 1.5 at 1/10 width' if args.small else 'SD 1.5'}, "
          f"batch 2 (CFG), {size}x{size} latents; {flops / 1e12:.3f} TFLOP per step")
    bf16_peak = f"bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s" if with_bf16 else "bf16 not timed (no native bf16 here)"
    print(f"matmul peak: fp32 {peaks[torch.float32]:.0f} GFLOP/s, {bf16_peak}; min of {args.repeats} after warm-up")
    print("| variant | s/step | vs diffusers defaults | GFLOP/s | % of peak (its precision) | note |")
    print("|---|---|---|---|---|---|")
    for name, seconds, dtype, note in rows:
        achieved = flops / seconds / 1e9
        print(f"| {name} | {seconds:.3f} | {seconds / reference:.2f}x | {achieved:.0f} | "
              f"{achieved / peaks[dtype]:.0%} ({str(dtype).removeprefix('torch.')}) | {note} |")


if __name__ == "__main__":
    main()
