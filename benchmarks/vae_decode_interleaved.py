"""One SD 1.5 VAE decode (random weights, batch 1) by four backends in turn, round after round, in
one process: OpenVINO with its own precision choice (bf16 with AMX), eager in t2i's placement for
this CPU (Runtime.auto: bf16 channels_last with AMX), and torch.compile of that with t2i's Inductor
options and with Inductor's defaults. Min and median wall s over the rounds, and each backend's
cosine against the eager float32 image. Interleaved for the reason compile_interleaved.py gives
(a host whose speed drifts).

    python benchmarks/vae_decode_interleaved.py --size 512 --threads 2 --rounds 5

t2i's `--compile` compiles only the UNet; this measures whether compiling the decoder would pay.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from compile_cache import _Decoder, add_allocator_argument, apply_allocator, cosine, openvino_callable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image size in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    add_allocator_argument(parser)
    args = parser.parse_args()
    apply_allocator(args)
    torch.set_num_threads(args.threads)
    from t2i.evaluate.random_sd import random_sd_vae
    from t2i.runtime import Runtime
    from t2i.speedups import inductor_options

    decoder = _Decoder(random_sd_vae("sd15").eval())
    z = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = decoder(z)
    ov_decode, facts = openvino_callable(decoder, (z,), args.threads, "auto")
    print("OpenVINO", facts, flush=True)
    runtime = Runtime.auto("auto", "cpu")  # an SD-sized model: no small-UNet exception
    dtype, layout = runtime.placement("vae")
    eager = torch.nn.Module.to(copy.deepcopy(decoder), dtype=dtype, memory_format=layout)
    compiled, defaults = copy.deepcopy(eager), copy.deepcopy(eager)
    compiled.compile(options=inductor_options(torch.device("cpu")))
    defaults.compile()
    zt = z.to(dtype)
    name = str(dtype).removeprefix("torch.")
    backends = {"OpenVINO, its own precision": lambda: ov_decode(z), f"eager {name}": lambda: eager(zt),
                f"torch.compile {name}, t2i's options": lambda: compiled(zt),
                f"torch.compile {name}, Inductor defaults": lambda: defaults(zt)}
    times = {key: [] for key in backends}
    with torch.no_grad():
        for key, fn in backends.items():  # warm-up (and the compiles)
            start = time.perf_counter()
            image = fn()
            print(f"{key}: first call {time.perf_counter() - start:.1f} s, cosine vs float32 "
                  f"{cosine(image.float(), reference):.6f}", flush=True)
        for _ in range(args.rounds):
            for key, fn in backends.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    print(f"{runtime.describe()}; torch {torch.__version__}; {args.size}², {args.threads} threads, {args.rounds} rounds")
    for key, values in times.items():
        print(f"{key}: min {min(values):.3f} s, median {statistics.median(values):.3f} s")


if __name__ == "__main__":
    main()
