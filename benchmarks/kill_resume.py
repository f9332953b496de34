"""kill -9 a real `t2i train` run at random moments, resume it, and count what survives.

    python benchmarks/kill_resume.py --kills 20 --seed 0

Each trial starts a fresh run of the tiny LDM config (tests/fault_harness.py: a seconds-long run
with a latent cache and checkpoints every 2 of 6 steps per stage), kills it with SIGKILL at one
moment drawn at random, then runs `t2i train --resume` once. Moments: a random time after the
start (uniform over an uninterrupted run's duration), or the instant the temporary file of a
checkpoint (vae or unet, which one drawn), of the latent cache, of the shapes cache or the staging
folder of the final model appears (found with inotify, so the kill lands while it is written).

Per trial it reports whether the kill left a temporary (it landed mid-write), the newest complete
checkpoint steps after the kill, whether the resume exited 0 without a traceback, the temporaries
it removed and any left after it, and whether the final weights are byte-identical to an
uninterrupted run. Linux only (inotify). Not run in CI: ~20 s a trial on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fault_harness as fh  # noqa: E402

MOMENTS = ("random time", "vae checkpoint", "latent cache", "unet checkpoint", "shapes cache", "model folder")
MATCH = {"vae checkpoint": fh.temp_of("-vae.ckpt"), "latent cache": fh.temp_of("-latents.pt"),
         "unet checkpoint": fh.temp_of("-unet.ckpt"), "model folder": fh.temp_of("-model"),
         "shapes cache": lambda name: fh.temp_of(".pt")(name) and "-shapes-" in name}


def kill_once(config: Path, outdir: Path, moment: str, rng: random.Random, duration: float, log: Path) -> str:
    """Start a fresh run, kill it at `moment`; returns a description of the kill point."""
    outdir.mkdir(parents=True)
    (outdir / "cache").mkdir()  # made now so that inotify can watch it from the start
    watch = fh.Watch(outdir, outdir / "cache")
    try:
        proc = fh.start(config, outdir, log=log)
        if moment == "random time":
            delay = rng.uniform(0.0, duration)
            time.sleep(delay)
            if proc.poll() is not None:
                return f"after {delay:.2f}s: run already done"
            proc.kill()
            proc.wait()
            return f"at {delay:.2f}s"
        nth = rng.randint(1, 4) if moment.endswith("checkpoint") else 1
        killed = fh.kill_when(proc, watch, MATCH[moment], nth=nth)
        return f"#{nth} write" if killed else "run ended first"
    finally:
        watch.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder, removed)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="t2i-kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "tiny.yaml"
    config.write_text(fh.TINY_LDM)

    t0 = time.perf_counter()
    straight = fh.train(config, work / "straight")
    duration = time.perf_counter() - t0
    if straight.returncode != 0:
        sys.exit(f"the uninterrupted run failed:\n{straight.stderr}")
    expected = fh.model_weights(work / "straight")
    print(f"uninterrupted run: {duration:.1f}s wall; {len(expected)} weight files\n")

    header = ("trial", "moment", "kill", "mid-write", "ckpt vae/unet", "resume", "removed", "left", "identical")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    totals = {"mid-write": 0, "resumed": 0, "identical": 0, "left": 0, "tracebacks": 0}
    for trial in range(args.kills):
        moment = rng.choice(MOMENTS)
        outdir = work / f"trial-{trial:02d}"
        where = kill_once(config, outdir, moment, rng, duration, work / f"trial-{trial:02d}.log")
        temps = fh.leftovers(outdir)
        steps = "/".join(str(fh.checkpoint_step(outdir / f"{k}.ckpt")) for k in ("vae", "unet"))
        resumed = fh.train(config, outdir, resume=True)
        ok = resumed.returncode == 0 and "Traceback" not in resumed.stderr
        left = fh.leftovers(outdir)
        same = ok and fh.model_weights(outdir) == expected
        totals["mid-write"] += bool(temps)
        totals["resumed"] += ok
        totals["identical"] += same
        totals["left"] += len(left)
        totals["tracebacks"] += "Traceback" in resumed.stderr
        print(" | ".join(map(str, (trial, moment, where, len(temps), steps, "ok" if ok else f"rc {resumed.returncode}",
                                   len(temps) - len(left), len(left), "yes" if same else "NO"))), flush=True)
        if not ok:
            print(resumed.stderr[-2000:], file=sys.stderr)
        shutil.rmtree(outdir, ignore_errors=True)
    print(f"\n{args.kills} kills: {totals['mid-write']} landed while a file was being written, "
          f"{totals['resumed']} resumed cleanly, {totals['identical']} bit-identical to the uninterrupted run, "
          f"{totals['tracebacks']} tracebacks, {totals['left']} temporaries left after resume")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
