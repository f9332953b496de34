"""Wall time of whole `t2i` processes: `t2i --help`, an argument error, and a cold one-image
`t2i generate` with the bundled model (64x64, 20 steps), each as a fresh process.

    python benchmarks/cli_startup.py --repeats 5 --threads 2

Prints min / median / max seconds per command. Run it with nothing else on the machine; the first
run of each command is a warm-up (the OS file cache) and is not counted.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

T2I = [sys.executable, "-m", "t2i.interfaces.cli"]


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as out:
        commands = {
            "t2i --help": T2I + ["--help"],
            "t2i generate --steps x (argument error)": T2I + ["generate", "--steps", "x"],
            "t2i generate, 1 image 64x64, 20 steps": T2I + ["generate", "a red circle", "--seed", "1", "--steps", "20",
                                                          "--outdir", out, "--threads", str(args.threads)],
        }
        print(f"{'command':<45} {'min s':>7} {'median s':>9} {'max s':>7}   ({args.repeats} runs, "
              f"{args.threads} threads)")
        for name, cmd in commands.items():
            timed(cmd, env)  # warm-up: file cache
            runs = [timed(cmd, env) for _ in range(args.repeats)]
            print(f"{name:<45} {min(runs):7.2f} {statistics.median(runs):9.2f} {max(runs):7.2f}")


if __name__ == "__main__":
    main()
