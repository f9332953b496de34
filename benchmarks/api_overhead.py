"""The REST API's overhead: the same txt2img job (bundled model, 64x64, 20 steps, batch 1) through
`t2i serve` (HTTP, queue, PNG + base64 answer) and through `Session.run` in-process.

    OMP_NUM_THREADS=1 nice python benchmarks/api_overhead.py --jobs 30

The two are interleaved job by job (in-process, then API, with the next seed), so both see the
same load on a shared machine. Reported per path: wall-clock jobs/s, and CPU seconds a job (the
benchmark process for in-process; the server's plus the client's for the API), which other work
on the machine does not inflate: 1 / CPU-s is the jobs/s an otherwise idle core would give with one
torch thread. Then a batch through 4 concurrent clients (the queue never empty).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' server launcher

from api_helpers import Server


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def body(seed: int, args) -> dict:
    return {"prompt": "a red circle and a blue square", "seed": seed, "steps": args.steps, "width": args.size,
            "height": args.size, "sampler_name": "Euler a", "save_images": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in-process and in the server")
    args = parser.parse_args()

    import torch

    from t2i.pipelines.generation_params import Txt2ImgParams
    from t2i.pipelines.load_settings import LoadSettings
    from t2i.pipelines.session import Session

    torch.set_num_threads(args.threads)
    session = Session(LoadSettings(threads=args.threads))

    def local(seed: int):
        b = body(seed, args)
        session.run(Txt2ImgParams(prompt=b["prompt"], seed=seed, steps=args.steps, width=args.size, height=args.size,
                                  sampler="Euler a"))

    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp), "--threads", str(args.threads), "--queue-size", "64")
        pid = server.proc.pid
        try:
            with server.client() as client:
                def remote(seed: int):
                    answer = client.post("/sdapi/v1/txt2img", json=body(seed, args))
                    if answer.status_code != 200 or len(answer.json()["images"]) != 1:
                        raise RuntimeError(f"request failed: {answer.status_code} {answer.text[:200]}")

                for seed in range(3):  # warm-up: first calls build kernels
                    local(seed)
                    remote(seed)
                wall = {"local": 0.0, "api": 0.0}
                cpu = {"local": 0.0, "api": 0.0}
                for i in range(args.jobs):
                    seed = 100 + i
                    w, c = time.perf_counter(), time.process_time()
                    local(seed)
                    wall["local"] += time.perf_counter() - w
                    cpu["local"] += time.process_time() - c
                    w, c, s = time.perf_counter(), time.process_time(), process_cpu(pid)
                    remote(seed)
                    wall["api"] += time.perf_counter() - w
                    cpu["api"] += (time.process_time() - c) + (process_cpu(pid) - s)
            # 4 clients at once: the worker never waits for the next request
            seeds = iter(range(1000, 1000 + args.jobs))
            lock = threading.Lock()

            def client_loop():
                with server.client() as client:
                    while True:
                        with lock:
                            seed = next(seeds, None)
                        if seed is None:
                            return
                        client.post("/sdapi/v1/txt2img", json=body(seed, args)).raise_for_status()

            threads = [threading.Thread(target=client_loop) for _ in range(4)]
            w, s = time.perf_counter(), process_cpu(pid)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall4, cpu4 = time.perf_counter() - w, process_cpu(pid) - s
        finally:
            server.stop()

    n = args.jobs
    print(f"{args.size}x{args.size}, {args.steps} steps, batch 1, Euler a, {args.threads} torch thread(s), "
          f"{n} jobs each, interleaved")
    print(f"{'':28} {'wall jobs/s':>12} {'CPU s/job':>10} {'1/CPU-s':>8} {'vs in-process':>14}")
    base = n / cpu["local"]
    rows = [("in-process Session.run", n / wall["local"], cpu["local"] / n),
            ("API, 1 client (sequential)", n / wall["api"], cpu["api"] / n),
            ("API, 4 clients (server CPU)", n / wall4, cpu4 / n)]
    for name, jobs_s, cpu_job in rows:
        print(f"{name:28} {jobs_s:12.3f} {cpu_job:10.3f} {1 / cpu_job:8.3f} {(1 / cpu_job) / base:13.1%}")
    print(f"wall-clock ratio, interleaved: API {wall['local'] / wall['api']:.1%} of in-process")


if __name__ == "__main__":
    main()
