"""Sampling speed of a t2i model on this machine, and where the time of one `t2i generate` goes.

1. Throughput: images/s at the model's resolution, 20 steps of DPM++ 2M with CFG, batch 16
   (warm-up first, min of --repeats runs), FLOPs counted with torch.utils.flop_counter and set
   against this CPU's measured fp32 matmul peak.
2. Cold start: wall time of a whole `t2i generate` process (import to PNG), min of --repeats,
   and a split of one in-process run into import / load / generate / save.

    python benchmarks/generation_speed.py [--model DIR] [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time


def measure_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(model_dir, threads: int, batch: int, steps: int, repeats: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import t2i
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    torch.set_num_threads(threads)
    loaded = t2i.load(model_dir, precision="full")
    params = Txt2ImgParams(prompt="a blue square above a yellow triangle on a white background", seed=1,
                           steps=steps, batch_size=batch, cfg_scale=5.0, sampler="DPM++ 2M")
    txt2img(loaded, params)  # warm-up: first calls of each shape set up kernels
    seconds = min(_timed(lambda: txt2img(loaded, params)) for _ in range(repeats))
    with FlopCounterMode(display=False) as counter:
        txt2img(loaded, params)
    flops = counter.get_total_flops()
    return {"images_per_s": batch / seconds, "seconds": seconds, "gflop_per_image": flops / batch / 1e9,
            "achieved_gflops": flops / seconds / 1e9}


def cold_start(model_dir, threads: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "t2i.interfaces.cli", "generate", "a red circle", "--seed", "1",
               "--outdir", out, "--threads", str(threads)]
        if model_dir:
            cmd += ["--model", str(model_dir)]
        return min(_timed(lambda: subprocess.run(cmd, check=True, capture_output=True)) for _ in range(repeats))


SPLIT = """
import time; t0 = time.perf_counter()
import torch, diffusers, transformers; t1 = time.perf_counter()
import t2i; from t2i.metadata import write_png
torch.set_num_threads({threads})
m = t2i.load({model!r}); t2 = time.perf_counter()
img = t2i.generate("a red circle", model=m, seed=1)[0]; t3 = time.perf_counter()
write_png(img, {out!r} + "/x.png", img.info["parameters"]); t4 = time.perf_counter()
print(f"{{t1-t0:.2f}} {{t2-t1:.2f}} {{t3-t2:.2f}} {{t4-t3:.3f}}")
"""


def split(model_dir, threads: int) -> list[float]:
    with tempfile.TemporaryDirectory() as out:
        code = SPLIT.format(threads=threads, model=str(model_dir) if model_dir else None, out=out)
        res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        return [float(x) for x in res.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    peak = measure_peak_gflops(args.threads)
    tp = throughput(args.model, args.threads, args.batch, args.steps, args.repeats)
    cold = cold_start(args.model, args.threads, args.repeats)
    parts = split(args.model, args.threads)
    print(f"threads {args.threads}; measured fp32 matmul peak {peak:.0f} GFLOP/s")
    print("| measure | value |")
    print("|---|---|")
    print(f"| images/s ({args.steps} steps DPM++ 2M, CFG, batch {args.batch}) | {tp['images_per_s']:.2f} |")
    print(f"| GFLOP per image (UNet x2 for CFG, text, VAE) | {tp['gflop_per_image']:.2f} |")
    print(f"| achieved GFLOP/s / fraction of peak | {tp['achieved_gflops']:.1f} / {tp['achieved_gflops'] / peak:.1%} |")
    print(f"| cold `t2i generate`, 1 image, wall s (min of {args.repeats}) | {cold:.2f} |")
    print(f"| of one run: import torch+diffusers+transformers s | {parts[0]:.2f} |")
    print(f"| of one run: load model s | {parts[1]:.2f} |")
    print(f"| of one run: generate 1 image s | {parts[2]:.2f} |")
    print(f"| of one run: write PNG s | {parts[3]:.3f} |")


if __name__ == "__main__":
    main()
