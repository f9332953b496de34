"""Should a small UNet (t2i's bundled model) use bf16 on a CPU that has it? The question behind
`t2i.runtime.SMALL_UNET_PARAMS`: below it, the automatic fast path keeps float32.

Bundled model at its 64x64 resolution, 20 steps DPM++ 2M with CFG, batch 16 (as
generation_speed.py), in float32, bf16 + channels_last and bf16 NCHW; warm-up first, min of
--repeats; FLOPs counted once, each set against the matmul peak of its precision measured in
the same run. On a CPU without native bf16 the bf16 rows only show the emulation's cost.

    python benchmarks/small_model_precision.py --threads 2 [--batch 16] [--repeats 3]
    python benchmarks/small_model_precision.py --small      # batch 2, 2 steps: checks the script
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmul_peak import peak_gflops  # noqa: E402


def main() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from t2i.checkpoints.registry import load_model
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img
    from t2i.runtime import Runtime, cpu_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a t2i model folder (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if args.small:
        args.batch, args.steps, args.repeats = 2, 2, 1
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    sizes = (512,) if args.small else (2048, 4096)
    peaks = {torch.float32: peak_gflops(torch.float32, sizes=sizes), torch.bfloat16: peak_gflops(torch.bfloat16, sizes=sizes)}
    settings = {
        "float32": Runtime(cpu, torch.float32, args.threads),
        "bf16 + channels_last": Runtime(cpu, torch.bfloat16, args.threads, channels_last=True, text_dtype=torch.float32),
        "bf16, NCHW": Runtime(cpu, torch.bfloat16, args.threads, text_dtype=torch.float32),
    }
    params = Txt2ImgParams(prompt="a blue square above a yellow triangle on a white background", seed=1,
                           steps=args.steps, batch_size=args.batch, cfg_scale=5.0, sampler="DPM++ 2M")
    flops, rows = None, []
    for name, runtime in settings.items():
        loaded = load_model(args.model, runtime)
        if flops is None:
            with FlopCounterMode(display=False) as counter:
                txt2img(loaded, params)
            flops = counter.get_total_flops()
        txt2img(loaded, params)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            txt2img(loaded, params)
            best = min(best, time.perf_counter() - start)
        n_params = sum(p.numel() for p in loaded.model.unet.parameters())
        rows.append((name, best, runtime.dtype))
    print(f"{args.threads} threads; native bf16: {cpu_native_bf16() or 'no'}; UNet {n_params / 1e6:.1f} M parameters; "
          f"batch {args.batch}, {args.steps} steps, CFG; {flops / args.batch / 1e9:.2f} GFLOP per image; "
          f"peaks fp32 {peaks[torch.float32]:.0f}, bf16 {peaks[torch.bfloat16]:.0f} GFLOP/s")
    print("| precision | images/s | vs float32 | GFLOP/s | % of its peak |")
    print("|---|---|---|---|---|")
    for name, seconds, dtype in rows:
        achieved = flops / seconds / 1e9
        print(f"| {name} | {args.batch / seconds:.2f} | {rows[0][1] / seconds:.2f}x | {achieved:.0f} | "
              f"{achieved / peaks[dtype]:.0%} |")


if __name__ == "__main__":
    main()
