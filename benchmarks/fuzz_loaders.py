"""Hostile weight files at scale: how many cases end in a traceback, run code, hang or blow memory?

The CI test (tests/test_fuzz_loaders.py) runs 2,000 mutated safetensors files; this runs the same
corpus (tests/fuzz_corpus.py) at 10^4: `--safetensors` mutated safetensors files over the nine
safetensors entry points, the malicious-pickle corpus (tests/fuzz_pickles.py) through the
eleven pickle-taking entry points, and `--checkpoints` damaged training checkpoints through
resume and export. One subprocess per seed, under an address-space limit (RLIMIT_AS), one thread.
First the hostile files the issue named, one by one; then a table per entry point and the
totals (the figures of RELIABILITY.md):

    nice python benchmarks/fuzz_loaders.py --safetensors 10000 --checkpoints 1000 --seeds 1 --limit-gb 4
    python benchmarks/fuzz_loaders.py --named-only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "fuzz_corpus.py"


def run_seed(seed: int, safetensors: int, checkpoints: int, limit_gb: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="t2i-fuzz-") as work:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run([sys.executable, str(CORPUS), "--safetensors", str(safetensors), "--checkpoints",
                               str(checkpoints), "--seed", str(seed), "--limit-gb", str(limit_gb), "--workdir", work],
                              cwd=work, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the corpus run failed (seed {seed}):\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def named_cases() -> None:
    """The hostile files the issue named, one by one: outcome and cost."""
    import struct
    import time

    import torch
    from safetensors.torch import save_file

    from t2i.checkpoints.safe_load import load_state_dict_file
    from t2i.errors import T2IError

    def header_file(path: Path, header: bytes, body: bytes = b"") -> Path:
        header += b" " * (-len(header) % 8)
        path.write_bytes(struct.pack("<Q", len(header)) + header + body)
        return path

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        many = ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(1_000_000))
        cases = {
            "5-byte file": lambda: (tmp / "short.safetensors").write_bytes(b"abcde") and tmp / "short.safetensors",
            "header nested 100,000 deep": lambda: header_file(tmp / "deep.safetensors",
                                                              b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            "99 MB header nested 50M deep": lambda: header_file(tmp / "deeper.safetensors",
                                                                b"{" + b"[" * 49_000_000 + b"]" * 49_000_000 + b"}"),
            "1,000,000-entry header": lambda: header_file(tmp / "many.safetensors", ("{" + many + "}").encode()),
            "header claims 2**63 bytes": lambda: (tmp / "huge.safetensors").write_bytes(
                struct.pack("<Q", 2**63) + b"{}" + bytes(64)) and tmp / "huge.safetensors",
        }

        def new_dtypes() -> Path:
            save_file({"a": torch.ones(4).to(torch.float8_e8m0fnu), "b": torch.ones(2, dtype=torch.complex64)},
                      str(tmp / "f8e8m0-c64.safetensors"))
            return tmp / "f8e8m0-c64.safetensors"

        cases["valid F8_E8M0 + C64 file"] = new_dtypes
        print(f"{'case':32s} {'outcome':>9s} {'CPU s':>7s}  message")
        for name, make in cases.items():
            path = make()
            start = time.process_time()
            try:
                load_state_dict_file(path)
                outcome, message = "loaded", ""
            except T2IError as err:
                outcome, message = "t2i error", str(err).replace(str(tmp) + "/", "")[:90]
            except Exception as err:  # noqa: BLE001
                outcome, message = "TRACEBACK", f"{type(err).__name__}: {err}"[:90]
            print(f"{name:32s} {outcome:>9s} {time.process_time() - start:7.2f}  {message}")
            path.unlink()
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--safetensors", type=int, default=10_000)
    parser.add_argument("--checkpoints", type=int, default=1_000)
    parser.add_argument("--seeds", type=int, default=1, help="runs with seeds 1..N (the CI test uses seed 0)")
    parser.add_argument("--limit-gb", type=float, default=4.0)
    parser.add_argument("--json", type=Path, help="also write the summaries here")
    parser.add_argument("--named-only", action="store_true", help="only the issue's named cases")
    args = parser.parse_args()
    named_cases()
    if args.named_only:
        return
    runs = [run_seed(seed, args.safetensors, args.checkpoints, args.limit_gb) for seed in range(1, args.seeds + 1)]
    targets: dict[str, dict] = {}
    for run in runs:
        for name, counts in run["by_target"].items():
            total = targets.setdefault(name, {"cases": 0, "accepted": 0, "clean": 0, "traceback": 0, "seconds": 0.0,
                                              "cpu_seconds": 0.0})
            for key in total:
                total[key] += counts[key]
    print(f"{'entry point':24s} {'cases':>7s} {'loaded':>7s} {'clean error':>11s} {'traceback':>9s} "
          f"{'CPU ms/case':>11s}")
    for name, t in targets.items():
        print(f"{name:24s} {t['cases']:7d} {t['accepted']:7d} {t['clean']:11d} {t['traceback']:9d} "
              f"{1000 * t['cpu_seconds'] / max(1, t['cases']):11.1f}")
    tracebacks = [tb for run in runs for tb in run["tracebacks"]]
    executions = [ex for run in runs for ex in run["executions"]]
    print(f"\ncases {sum(r['cases'] for r in runs)} (safetensors {sum(r['safetensors_cases'] for r in runs)}, "
          f"pickles {sum(r['pickle_cases'] for r in runs)} of {runs[0]['pickle_kinds']} kinds, "
          f"training checkpoints {sum(r['checkpoint_cases'] for r in runs)})")
    print(f"loaded {sum(r['accepted'] for r in runs)}, clean errors {sum(r['clean_errors'] for r in runs)}, "
          f"tracebacks {len(tracebacks)}, executions {len(executions)}")
    slowest = max(runs, key=lambda r: r["max_seconds"])
    costliest = max(runs, key=lambda r: r["max_cpu_seconds"])
    print(f"costliest case {costliest['max_cpu_seconds']:.2f} s of CPU ({costliest['slowest_cpu']}); "
          f"slowest {slowest['max_seconds']:.2f} s wall ({slowest['slowest']}); peak RSS "
          f"{max(r['max_rss_mb'] for r in runs)} MB under RLIMIT_AS {args.limit_gb:g} GiB; "
          f"{sum(r['seconds'] for r in runs):.0f} s wall for the cases (+{runs[0]['setup_seconds']:.0f} s setup per run), "
          f"{sum(t['cpu_seconds'] for t in targets.values()):.0f} s of CPU")
    for tb in tracebacks[:20]:
        print("TRACEBACK", *tb)
    for ex in executions:
        print("EXECUTED", *ex)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
