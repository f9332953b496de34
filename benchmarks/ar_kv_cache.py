"""How much faster is autoregressive code sampling with cached keys/values?

One random-weight transformer (t2i.models.ar.CodeTransformer, class-conditional) samples the
same images twice per repeat: with past_key_values (one new token per step) and without (the
whole sequence recomputed each step). Warm-up first, then the min of `--repeats` runs of each,
measured in the same process so the ratio is meaningful on a noisy machine. Also checks that
both paths gave the same codes.

    python benchmarks/ar_kv_cache.py                 # 16x16 = 256 codes, batch 1, 1 thread
    python benchmarks/ar_kv_cache.py --side 8 --threads 2
"""
from __future__ import annotations

import argparse
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=16, help="code grid side: side² codes per image")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--codes", type=int, default=512, help="codebook size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from t2i.models.ar import ARConfig, CodeTransformer, sample_codes

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ARConfig(num_codes=args.codes, code_shape=(args.side, args.side), conditioning="class",
                   class_names=tuple(f"c{i}" for i in range(10)), n_embd=args.width, n_layer=args.layers, n_head=8)
    model = CodeTransformer(cfg).to(args.device).eval()
    cond = model.condition_ids([i % 10 for i in range(args.batch)])

    def run(use_cache: bool, prefix: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        generators = [torch.Generator().manual_seed(i) for i in range(args.batch)]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        codes = sample_codes(model, cond, generators, use_cache=use_cache, top_k=100, temperature=1.0,
                             prefix_codes=prefix)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, codes

    # warm-up: both paths complete the last rows of a given grid (short, but every operation of
    # a full run, at its longest shapes)
    prefix = torch.randint(0, args.codes, (args.batch, args.side * max(0, args.side - 2)),
                           generator=torch.Generator().manual_seed(0))
    run(True, prefix)
    run(False, prefix)
    times, codes = {True: [], False: []}, {}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            t, codes[use_cache] = run(use_cache)
            times[use_cache].append(t)
    fast, slow = min(times[True]), min(times[False])
    params = sum(p.numel() for p in model.parameters())
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, device {args.device}, "
          f"{args.threads} thread(s); GPT-2 {args.layers} layers x {args.width} wide, {params / 1e6:.2f} M params")
    print(f"# {args.side}x{args.side} = {args.side ** 2} codes per image, batch {args.batch}, "
          f"min of {args.repeats} after warm-up")
    print("| sampling | seconds | images/s | codes/s |")
    print("|---|---|---|---|")
    for name, t in (("cached keys/values", fast), ("no cache (recompute)", slow)):
        print(f"| {name} | {t:.3f} | {args.batch / t:.2f} | {args.batch * args.side ** 2 / t:.0f} |")
    print(f"speed-up with cache: {slow / fast:.1f}x; same codes: {torch.equal(codes[True], codes[False])}")


if __name__ == "__main__":
    main()
