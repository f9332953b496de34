"""What matmul throughput can this machine reach, per dtype? The peak the other benchmarks set
their achieved FLOP/s against.

Square matmuls of a few sizes, warm-up first, min time of --repeats; prints GFLOP/s per dtype and
the CPU features that decide the fast path (t2i.runtime.cpu_native_bf16). float16 on a CPU is
included only with --fp16: it is emulated, ~100x slower than float32. A dtype without native
support (bf16 on a CPU without AVX512-BF16/AMX, fp16) is timed at 512 only.

    python benchmarks/matmul_peak.py [--threads 2] [--sizes 1024 2048 4096] [--repeats 5]
    python benchmarks/matmul_peak.py --small          # a quick check of the script itself
"""
from __future__ import annotations

import argparse
import time

import torch


def matmul_gflops(n: int, dtype: torch.dtype, repeats: int, device: str = "cpu") -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel selection, first-touch of buffers
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


EMULATED_SIZE = 512  # a half-precision matmul without native support runs ~100x slower: time a small one


def emulated(dtype: torch.dtype) -> bool:
    """Whether this CPU lacks native support for `dtype` (then only small sizes are timed)."""
    from t2i.runtime import cpu_native_bf16

    return dtype == torch.float16 or (dtype == torch.bfloat16 and cpu_native_bf16() is None)


def peak_gflops(dtype: torch.dtype, threads: int | None = None, sizes=(2048, 4096), repeats: int = 3) -> float:
    """The best GFLOP/s over `sizes`: what other benchmarks call this machine's peak."""
    if threads:
        torch.set_num_threads(threads)
    if emulated(dtype):
        sizes = [min(n, EMULATED_SIZE) for n in sizes]
    return max(matmul_gflops(n, dtype, repeats) for n in sorted(set(sizes)))


def main() -> None:
    from t2i.runtime import cpu_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fp16", action="store_true", help="also time float16 (slow on CPUs)")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check that the script runs")
    args = parser.parse_args()
    if args.small:
        args.sizes, args.repeats = [256], 2
    torch.set_num_threads(args.threads)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if args.fp16 else [])
    print(f"torch {torch.__version__}, {args.threads} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_native_bf16() or 'no'}")
    print("| n | " + " | ".join(f"{str(d).removeprefix('torch.')} GFLOP/s" for d in dtypes) + " |")
    print("|---|" + "---|" * len(dtypes))
    best = {d: 0.0 for d in dtypes}
    for n in args.sizes:
        row = []
        for d in dtypes:
            if emulated(d) and n > EMULATED_SIZE:
                row.append("(emulated: skipped)")
                continue
            g = matmul_gflops(n, d, args.repeats)
            best[d] = max(best[d], g)
            row.append(f"{g:.3g}")
        print(f"| {n} | " + " | ".join(row) + " |")
    print("| peak | " + " | ".join(f"**{best[d]:.3g}**" for d in dtypes) + " |")


if __name__ == "__main__":
    main()
