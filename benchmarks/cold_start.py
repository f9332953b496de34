"""Cold start: how long does a fresh `t2i generate` of a single-file SD 1.5 model take to reach its
first UNet step, against the time it takes just to read the file's bytes from disk? And the
whole process (4 steps, 512x512) against diffusers' defaults (issue 16, item 2).

Writes a random-weight SD 1.5 file in the original layout (fp16, 1.99 GiB; see
benchmarks/sd_single_file_load.py) unless --path exists. Then, each a fresh process with the file's
pages dropped from the page cache first (posix_fadvise DONTNEED: only this file's pages; the
Python libraries stay cached, as they are on a machine in use):

  read       read every byte of the file (4 MiB reads): the floor a loader cannot beat
  t2i        `python -m t2i.interfaces.cli generate PROMPT --model FILE --steps 4 ...`, as a user runs it;
             the first run with an empty hash cache ("first ever"), the others with the cached hash
  diffusers  StableDiffusionPipeline.from_single_file(FILE), pipe(PROMPT, num_inference_steps=4):
             its documented defaults (float32, PNDM)

For each: seconds from the process's spawn to the start of its first UNet evaluation (a global
forward pre-hook, registered the moment torch is imported, so the CLI's own import order is
kept), and to its exit, wall and CPU (the process's own CPU seconds, all threads: the fairer
figure on a shared machine). t2i's start is split into phases by its `t2i.timing` DEBUG events
(libraries imported, weights placed, hashed) and the text encoder's forward hooks: import, load,
hash, text encode. `--to-first-step` stops each process at its first UNet step (the whole 4-step
generation takes minutes on a loaded 2-core machine). `--compare-preload` adds t2i runs with
T2I_PRELOAD=1 (the opt-in weight cast while the libraries import, t2i.checkpoints.preload),
interleaved with the others.

Also, in one process with the libraries imported: the load alone, t2i's path now (each
component read straight into its final dtype and layout; hash from the cache) against the path
before this change (everything read into float32, then cast to bf16 + channels_last; the file
hashed on every load).

    python benchmarks/cold_start.py --threads 2 --repeats 3 [--to-first-step] [--compare-preload] [--keep]
    python benchmarks/cold_start.py --to-first-step --skip diffusers phases --compare-preload
    python benchmarks/cold_start.py --skip phases first-ever      # whole process, t2i vs diffusers
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "a photograph of an astronaut riding a horse"
BLOCK = 4 * 2**20

# Child prologue: register a global forward pre-hook on torch as soon as torch is imported (a
# meta-path finder that only watches imports), record the time of the first UNet evaluation.
PROLOGUE = r"""
import json, logging, os, sys, time
T0 = float(sys.argv[1]); STOP = sys.argv[2] == "1"; OUT = sys.argv[3]
marks, cpu = {}, {}
def mark(name, first=True):
    if first and name in marks:
        return
    marks[name] = time.time() - T0
    cpu[name] = time.process_time()  # this process's CPU seconds (every thread) since it started
def dump():
    json.dump({**marks, "cpu": cpu}, open(OUT, "w"))
def _pre_hook(module, args):
    kind = type(module).__name__
    if kind.startswith("CLIPTextModel"):
        mark("text_start")
    elif kind == "UNet2DConditionModel" and "first_unet" not in marks:
        mark("first_unet")
        if STOP:
            dump(); os._exit(0)
def _post_hook(module, args, output):
    if type(module).__name__.startswith("CLIPTextModel") and "first_unet" not in marks:
        mark("text_end", first=False)  # the last text encoder call before the first UNet step
class _Timing(logging.Handler):  # t2i's phase events (logger t2i.timing, DEBUG)
    def emit(self, record):
        mark(record.getMessage().replace(" ", "_"))
_timing = logging.getLogger("t2i.timing")
_timing.setLevel(logging.DEBUG); _timing.addHandler(_Timing()); _timing.propagate = False
class _Watch:
    done = False
    def find_spec(self, name, path=None, target=None):
        mod = sys.modules.get("torch.nn.modules.module")
        if not self.done and getattr(mod, "register_module_forward_hook", None) and "torch" in sys.modules:
            self.done = True
            mark("torch_imported")
            mod.register_module_forward_pre_hook(_pre_hook)
            mod.register_module_forward_hook(_post_hook)
        return None
sys.meta_path.insert(0, _Watch())
"""

T2I_CHILD = PROLOGUE + r"""
from t2i.interfaces.cli import program
sys.argv = ["t2i", *sys.argv[4:]]
code = program()  # the `t2i` program itself, with what it sets up for its own process
mark("exit")
dump()
sys.exit(code)
"""

DIFFUSERS_CHILD = PROLOGUE + r"""
path, steps, size, threads = sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
import torch
torch.set_num_threads(threads)
from diffusers import StableDiffusionPipeline
from t2i.checkpoints.single_file import bundled_config_dir
from t2i.models.text import load_tokenizer
pipe = StableDiffusionPipeline.from_single_file(path, config=str(bundled_config_dir("sd15")), local_files_only=True,
    tokenizer=load_tokenizer(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
mark("model_loaded")
pipe.set_progress_bar_config(disable=True)
image = pipe(%r, num_inference_steps=steps, height=size, width=size, generator=torch.Generator().manual_seed(1)).images[0]
image.save(os.path.join(os.path.dirname(OUT), "diffusers.png"))
mark("exit")
dump()
""" % PROMPT


def evict(path: Path) -> None:
    """Drop this file's pages from the page cache (other files are untouched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def read_times(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds to read every byte of `path` in 4 MiB reads."""
    start, cpu = time.perf_counter(), time.process_time()
    buffer = bytearray(BLOCK)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buffer):
            pass
    return time.perf_counter() - start, time.process_time() - cpu


def run_child(code: str, args: list[str], stop: bool, env: dict, work: Path) -> dict:
    out = work / "marks.json"
    out.unlink(missing_ok=True)
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", code, repr(t0), "1" if stop else "0", str(out), *args], env=env,
                          capture_output=True, text=True, cwd=work)
    if not out.exists():
        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    marks = json.loads(out.read_text())
    marks.setdefault("exit", time.time() - t0)
    marks.setdefault("cpu", {})
    loaded = re.search(r"loaded in ([0-9.]+)s", done.stderr)  # t2i's summary line
    if loaded:
        marks["load"] = float(loaded.group(1))
    return marks


def load_phases(path: Path, threads: int, cache_dir: Path) -> dict:
    """Load alone, now vs before this change, in a fresh process with the libraries imported."""
    code = f"""
import json, time, torch
torch.set_num_threads({threads})
import diffusers, transformers
from diffusers import UNet2DConditionModel, AutoencoderKL
from transformers import CLIPTextModel
from t2i.checkpoints.hash_cache import sha256_file
from t2i.checkpoints.single_file import load_single_file, load_user_model
from t2i.runtime import Runtime
runtime = Runtime.auto("auto", "cpu")
path = {str(path)!r}
out = {{}}
for _ in range(2):
    start = time.perf_counter()
    model = load_single_file(path, dtype=runtime.load_dtype)   # before: all float32 ...
    runtime.for_model(model).place(model)                      # ... then cast and re-laid out
    sha256_file(path)                                          # ... and hashed on every load
    out.setdefault("before", []).append(time.perf_counter() - start)
    del model
    start = time.perf_counter()
    loaded = load_user_model(path, runtime)                    # now (hash from the cache after the first)
    out.setdefault("now", []).append(time.perf_counter() - start)
    out["setting"] = loaded.runtime.describe()
    del loaded
print(json.dumps(out))
"""
    env = {**os.environ, "T2I_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("/tmp/t2i-sd15-random.safetensors"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--to-first-step", action="store_true", help="stop each process at its first UNet step")
    parser.add_argument("--skip", nargs="*", default=[], choices=["diffusers", "phases", "first-ever"],
                        help="first-ever: no run with an empty hash cache (the hash is cached beforehand)")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint for another run")
    parser.add_argument("--compare-preload", action="store_true",
                        help="also time t2i with T2I_PRELOAD=1 (the opt-in cast while importing), runs interleaved")
    args = parser.parse_args()

    if not args.path.exists():
        sys.path.insert(0, str(HERE))
        from sd_single_file_load import write_random_sd15

        write_random_sd15(args.path)
    size = args.path.stat().st_size
    work = Path(tempfile.mkdtemp(prefix="t2i-cold-"))
    cache = work / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "T2I_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    stop = args.to_first_step
    rows: dict[str, list[dict]] = {}
    try:
        read_times(args.path)  # warm-up of the disk path
        reads = []
        for _ in range(args.repeats):
            evict(args.path)
            reads.append(read_times(args.path))
        warm_reads = [read_times(args.path) for _ in range(args.repeats)]
        cli = ["generate", PROMPT, "--model", str(args.path), "--steps", str(args.steps), "--width", str(args.size),
               "--height", str(args.size), "--seed", "1", "--threads", str(args.threads), "--outdir", str(work / "out")]
        if "first-ever" in args.skip:
            from t2i.checkpoints.hash_cache import CACHE_NAME, sha256_of

            sha256_of(args.path, cache_file=cache / CACHE_NAME)
        for i in range(1 if "first-ever" in args.skip else 0, args.repeats + 1):  # run 0: empty hash cache
            evict(args.path)
            marks = run_child(T2I_CHILD, cli, stop, {k: v for k, v in env.items() if k != "T2I_PRELOAD"}, work)
            rows.setdefault("t2i, first ever (hash computed)" if i == 0 else "t2i (hash cached)", []).append(marks)
            print(f"t2i run {i}: {marks}", file=sys.stderr)
            if args.compare_preload and i > 0:
                evict(args.path)
                marks = run_child(T2I_CHILD, cli, stop, {**env, "T2I_PRELOAD": "1"}, work)
                rows.setdefault("t2i (hash cached), T2I_PRELOAD=1", []).append(marks)
                print(f"t2i run {i}, preload: {marks}", file=sys.stderr)
        if "diffusers" not in args.skip:
            for _ in range(args.repeats):
                evict(args.path)
                marks = run_child(DIFFUSERS_CHILD, [str(args.path), str(args.steps), str(args.size), str(args.threads)],
                                  stop, env, work)
                rows.setdefault("diffusers defaults", []).append(marks)
                print(f"diffusers: {marks}", file=sys.stderr)
        phases = None if "phases" in args.skip else load_phases(args.path, args.threads, work / "phase-cache")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep and args.path.exists():
            args.path.unlink()

    report(args, size, reads, warm_reads, rows, phases)


# (name, start mark, end mark) of each phase of a cold start; "" is the process's spawn
PHASES = (("import", "", "libraries_imported"), ("load", "libraries_imported", "weights_placed"),
          ("hash", "weights_placed", "hashed"), ("text encode", "text_start", "text_end"),
          ("to first UNet step", "", "first_unet"))


def _span(run: dict, start: str, end: str, cpu: bool) -> float:
    times = run["cpu"] if cpu else run
    if end not in times or (start and start not in times):
        return float("nan")
    return times[end] - (times[start] if start else 0.0)


def report(args, size: int, reads, warm_reads, rows: dict[str, list[dict]], phases) -> None:
    """Markdown tables: min of the runs for every figure, wall and CPU seconds (CPU: the process's
    own, all threads; the fairer figure on a shared machine)."""
    cold, cold_cpu = min(r[0] for r in reads), min(r[1] for r in reads)
    warm, warm_cpu = min(r[0] for r in warm_reads), min(r[1] for r in warm_reads)
    print(f"{args.threads} threads; file {size / 2**30:.2f} GiB; {args.steps} steps {args.size}x{args.size}; "
          f"load average {os.getloadavg()[0]:.1f}; min of {args.repeats}")
    print(f"read every byte: after evicting the file's pages {cold:.2f} s wall ({cold_cpu:.2f} s CPU; runs "
          f"{', '.join(f'{r[0]:.2f}' for r in reads)}), from the page cache {warm:.2f} s wall ({warm_cpu:.2f} s CPU)")
    print("| process | " + " | ".join(f"{name} s" for name, _, _ in PHASES) + " | first step / read (evicted, cached) "
          "| exit s |")
    print("|---|" + "---|" * (len(PHASES) + 2))
    for name, runs in rows.items():
        cells = []
        for _, start, end in PHASES:
            wall = min(_span(r, start, end, False) for r in runs)
            cpu = min(_span(r, start, end, True) for r in runs)
            cells.append(f"{wall:.2f} ({cpu:.2f})")
        first = min(_span(r, "", "first_unet", False) for r in runs)
        end = "-" if args.to_first_step else f"{min(r['exit'] for r in runs):.1f} ({min(r['cpu']['exit'] for r in runs):.1f})"
        print(f"| {name} | {' | '.join(cells)} | {first / cold:.1f}x, {first / warm:.1f}x | {end} |")
    print("(wall s, with CPU s in brackets; diffusers has no import/load/hash events: its first step includes them)")
    if phases:
        print(f"load alone ({phases['setting']}), libraries imported: before {min(phases['before']):.1f} s "
              f"(runs {', '.join(f'{x:.1f}' for x in phases['before'])}), now {min(phases['now']):.1f} s "
              f"(runs {', '.join(f'{x:.1f}' for x in phases['now'])}; the first hashes the file)")
    if not args.to_first_step and "diffusers defaults" in rows and "t2i (hash cached)" in rows:
        for label, key in (("wall", None), ("CPU", "cpu")):
            pick = (lambda r: r["exit"]) if key is None else (lambda r: r["cpu"]["exit"])
            t2i_exit = min(map(pick, rows["t2i (hash cached)"]))
            ref = min(map(pick, rows["diffusers defaults"]))
            print(f"whole process, {label}: t2i {t2i_exit:.1f} s / diffusers defaults {ref:.1f} s = {t2i_exit / ref:.2f}x")

if __name__ == "__main__":
    main()
