"""One UNet step with CFG (batch 2) by four backends in turn, round after round, in one process:
OpenVINO float32, eager float32, t2i's `--compile` and torch.compile with Inductor's default
options (what t2i's `--compile` used before it kept t2i's memory layout). With `--runtime auto`
the eager and compiled UNets are placed as t2i places them on this CPU (bf16 channels_last with
AMX) and OpenVINO runs twice more: with its own precision choice (bf16 with AMX) as well.

compile_cache.py times each backend's repeats back to back; on a machine whose speed drifts (a
shared host), a backend then gets a fast or a slow stretch of its own and the ratios move by tens
of percent between runs. Here every round times each backend once, so a drift hits all of them;
the min and median over the rounds are reported, wall seconds.

    python benchmarks/compile_interleaved.py --unet sd15 --size 256 --threads 2 --rounds 8 --cache DIR

`--cache`: t2i's compile cache folder (a fresh temporary one by default: t2i's `--compile` then
compiles in this process). Needs openvino (the `bench` extra) unless --no-openvino.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch

from compile_cache import _Plain, add_unet_arguments, apply_allocator, build, openvino_callable, place, step_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser, "sd15", 256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cache", help="t2i compile cache folder (default: a fresh temporary one)")
    parser.add_argument("--no-openvino", action="store_true")
    args = parser.parse_args()
    apply_allocator(args)
    torch.set_num_threads(args.threads)
    from t2i.speedups import compile_unet_cached

    holder, length = build(args.unet, args.size)
    unet = holder.unet
    latents, context = step_inputs(holder, length)
    x, t = torch.cat([latents, latents]), torch.tensor(500)

    backends = {}
    if not args.no_openvino:  # converted from the plain float32 module, before any compile
        for precision in ("f32", "auto") if args.runtime == "auto" else ("f32",):
            ov_step, facts = openvino_callable(_Plain(unet).eval(), (x, t, context), args.threads, precision)
            print("OpenVINO", facts, flush=True)
            backends[f"OpenVINO {precision if precision == 'f32' else 'own choice'}"] = (
                lambda step=ov_step, x=x, context=context: step(x, t, context))  # float32 inputs, bound now
    unet, dtype = place(unet, args.runtime, holder)
    holder.unet = unet
    x, context = x.to(dtype), context.to(dtype)
    eager = copy.deepcopy(unet)
    backends[f"eager {str(dtype).removeprefix('torch.')}"] = lambda: eager(x, t, encoder_hidden_states=context).sample
    defaults = copy.deepcopy(unet)
    defaults.compile()  # Inductor's default options; compiled on its first call below
    with tempfile.TemporaryDirectory(prefix="t2i-compile-bench-") as temp:
        report = compile_unet_cached(holder, args.cache or temp, notes=print)
        print(report.describe(), flush=True)
        backends["t2i --compile"] = lambda: unet(x, t, encoder_hidden_states=context).sample
        backends["torch.compile, Inductor defaults"] = lambda: defaults(x, t, encoder_hidden_states=context).sample
        times = {name: [] for name in backends}
        with torch.no_grad():
            for fn in backends.values():  # warm-up (and the defaults' compile)
                fn()
            for _ in range(args.rounds):
                for name, fn in backends.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
    results = {"unet": args.unet, "size": args.size, "threads": args.threads, "rounds": args.rounds,
               "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "step_wall_s": {name: {"min": min(v), "median": statistics.median(v), "all": v}
                               for name, v in times.items()}}
    print(json.dumps(results, indent=1))
    for name, v in times.items():
        print(f"{name}: min {min(v):.3f} s, median {statistics.median(v):.3f} s")


if __name__ == "__main__":
    main()
