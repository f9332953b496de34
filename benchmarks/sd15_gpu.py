"""SD 1.5 txt2img on a GPU: t2i against diffusers, eager and compiled (issue 6's GPU targets).

Target: SD 1.5 at 512x512, 50 steps, CFG 7.5 (UNet batch 2), one image: t2i's default >= 1.0x
diffusers eager it/s, and t2i + torch.compile within 10% of diffusers compiled. (Public anchor:
A100, diffusers SDPA 31 it/s, compile + channels_last 47 it/s.)

A random-weight SD 1.5 single file in the original layout (fp16, as `v1-5-pruned-emaonly.safetensors`;
benchmarks/sd_single_file_load.py) is loaded by both sides, all rows in one process:

  diffusers-fp32          StableDiffusionPipeline.from_single_file, float32, default scheduler (PNDM), SDPA
  diffusers-fp16          the same with torch_dtype=float16 (the usual manual GPU setting)
  t2i-auto                t2i.load: Runtime.auto (printed), default sampler (DPM++ 2M)
  t2i-fp16                t2i with float16 forced (auto picks bf16 where the GPU has it): vs diffusers-fp16
  t2i-fp32                t2i with precision "full": float32 reference for the numerics check
  t2i-compile             t2i-auto's model + speedups.compile_unet (Inductor, default mode)
  diffusers-fp16-compile  diffusers-fp16 + channels_last UNet and VAE + torch.compile(unet), default mode
  t2i-compile-channels-last  (opt-in, --rows) t2i auto + channels_last + compile: should auto use NHWC on a GPU?

Timing: a warm-up generation first (it pays kernel selection and compilation: reported as
"first s"), then --repeats timed generations, median reported. it/s = UNet evaluations per second
of the denoising loop, measured between the step callbacks of the first and last evaluation
(torch.cuda.synchronize at those two points only, so the GPU queue is not drained every step);
every evaluation is one batch-2 UNet call (CFG). PNDM does steps + 1 evaluations, DPM++ 2M
steps, so it/s compares per-evaluation speed and s/image (encode + loop + VAE decode + PIL) the
whole run. Compiled rows reuse their eager row's model; "compile s" = first s - s/image. Numerics:
PSNR of t2i-auto's and t2i-fp16's images against t2i-fp32's (same seed and sampler), and of
diffusers-fp16 against diffusers-fp32 for scale; random weights make this a smoke test of the
reduced-precision path, not a quality measure.

    python benchmarks/sd15_gpu.py --out sd15_gpu.json                  # on the GPU, default rows
    python benchmarks/sd15_gpu.py --rows t2i-auto t2i-compile-channels-last --path /tmp/sd15.safetensors
    python benchmarks/sd15_gpu.py --tiny --steps 3 --repeats 1 --skip-compile   # CPU check of the script
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# row -> (library, precision, compiled). Eager rows run first; a compiled row then takes over its
# eager row's model (compiling changes it in place) or loads its own.
ROWS = {
    "diffusers-fp32": ("diffusers", "float32", False),
    "diffusers-fp16": ("diffusers", "float16", False),
    "t2i-auto": ("t2i", "auto", False),
    "t2i-fp16": ("t2i", "float16", False),
    "t2i-fp32": ("t2i", "full", False),
    "t2i-compile": ("t2i", "auto", True),
    "diffusers-fp16-compile": ("diffusers", "float16", True),
    "t2i-compile-channels-last": ("t2i", "auto-cl", True),  # opt-in: does channels_last help compiled t2i?
}
DEFAULT_ROWS = [row for row in ROWS if row != "t2i-compile-channels-last"]
PROMPT = "a photograph of an astronaut riding a horse"
SEED = 1
CFG = 7.5


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class LoopClock:
    """Step callbacks for both libraries: the times of the first and last model evaluation's
    callback (synchronised there only), the number of evaluations and the final latents."""

    def __init__(self, device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.calls, self.first, self.last, self.latents = 0, None, None, None

    def _tick(self, index: int, total: int, latents) -> None:
        self.calls += 1
        if index == 0 or index == total - 1:
            _sync(self.device)
            now = time.perf_counter()
            self.first = now if index == 0 else self.first
            if index == total - 1:
                self.last, self.latents = now, latents.detach().float().cpu().clone()

    def t2i(self, index, total, latents):  # t2i StepCallback: (i, total, latents)
        self._tick(index, total, latents)

    def diffusers(self, pipe, index, timestep, kwargs):  # diffusers callback_on_step_end
        self._tick(index, pipe.num_timesteps, kwargs["latents"])
        return kwargs

    def its(self) -> float:
        """UNet evaluations per second between the first and the last evaluation's end."""
        if self.calls < 2 or self.last is None or self.last <= self.first:
            return float("nan")
        return (self.calls - 1) / (self.last - self.first)


def measure(generate, clock: LoopClock, repeats: int, device, before_first=None) -> dict:
    """Warm-up (with `before_first()`, e.g. an explicit compile, timed into it), then `repeats`
    timed generations. `generate()` returns PIL images."""
    import numpy as np
    import torch

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    if before_first is not None:
        before_first()
    clock.reset()
    generate()
    _sync(device)
    first_s = time.perf_counter() - start
    its, seconds = [], []
    for _ in range(repeats):
        clock.reset()
        _sync(device)
        start = time.perf_counter()
        images = generate()
        _sync(device)
        seconds.append(time.perf_counter() - start)
        its.append(clock.its())
    return {"its": statistics.median(its), "s_image": statistics.median(seconds), "first_s": first_s,
            "unet_calls": clock.calls, "its_runs": its, "s_image_runs": seconds,
            "cuda_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "image": np.asarray(images[0]), "latents": clock.latents}


# ----------------------------------------------------------------------------- the two libraries


def diffusers_pipe(path: Path, config_dir: Path, device, dtype):
    from diffusers import StableDiffusionPipeline

    from t2i.models.text import load_tokenizer

    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, torch_dtype=dtype, tokenizer=load_tokenizer(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def diffusers_generate(pipe, clock: LoopClock, size: int, steps: int):
    import torch

    return lambda: pipe(PROMPT, num_inference_steps=steps, height=size, width=size, guidance_scale=CFG,
                        generator=torch.Generator().manual_seed(SEED), callback_on_step_end=clock.diffusers).images


def t2i_load(path: Path, config_dir: Path | None, device, precision: str):
    """precision: "auto" (Runtime.auto), "full" (float32), "float16" (forced, to compare with
    diffusers-fp16 where auto picks bf16), "auto-cl" (auto + channels_last UNet and VAE)."""
    from dataclasses import replace

    import torch

    from t2i.checkpoints.registry import load_model
    from t2i.checkpoints.single_file import load_user_model
    from t2i.runtime import Runtime

    if precision == "float16":
        runtime = Runtime(torch.device(device), torch.float16, reason="float16 set by this benchmark")
    else:
        runtime = Runtime.auto("full" if precision == "full" else "auto", str(device))
        if precision == "auto-cl":
            runtime = replace(runtime, channels_last=True, reason=f"{runtime.reason}; channels_last by this benchmark")
    # the tiny model's configs are not the bundled ones: name them, as a user would with --config
    return load_user_model(path, runtime, config_dir=config_dir) if config_dir else load_model(path, runtime)


def t2i_generate(loaded, clock: LoopClock, size: int, steps: int):
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    params = Txt2ImgParams(prompt=PROMPT, seed=SEED, steps=steps, width=size, height=size, cfg_scale=CFG)
    return lambda: txt2img(loaded, params, callback=clock.t2i).images


def attention_of(unet) -> str:
    processors = {type(p).__name__ for p in unet.attn_processors.values()}
    return "+".join(sorted(processors))


# ----------------------------------------------------------------------------- rows


def prepare_row(library: str, compiled: bool, model, clock: LoopClock, size: int, steps: int):
    """(generate, dtype, setting, before_first) of one row; compiling changes `model` in place."""
    import torch

    from t2i import speedups

    if library == "t2i":
        setting = f"{model.runtime.describe()}, DPM++ 2M, {attention_of(model.model.unet)}"
        before_first = None
        if compiled:  # t2i's switch: compile plus one UNet step at the model's size, timed into "first s"
            before_first = lambda: speedups.compile_unet(model, warmup_batch=2)  # noqa: E731
            setting += ", torch.compile (default mode)"
        return t2i_generate(model, clock, size, steps), model.runtime.dtype, setting, before_first
    setting = f"{type(model.scheduler).__name__}, {attention_of(model.unet)}"
    if compiled:  # diffusers' documented recipe, default mode to keep the compile time bounded
        model.unet.to(memory_format=torch.channels_last)
        model.vae.to(memory_format=torch.channels_last)
        model.unet = torch.compile(model.unet, fullgraph=False)
        setting += ", channels_last, torch.compile (default mode)"
    return diffusers_generate(model, clock, size, steps), model.unet.dtype, setting, None


def run_rows(args, path: Path, config_dir: Path, t2i_config_dir: Path | None, on_row) -> dict:
    """Time every row of `args.rows`; `on_row(results)` after each (partial results survive a timeout)."""
    import torch

    clock = LoopClock(args.device)
    results = {}
    rows = sorted(args.rows, key=lambda r: (ROWS[r][2], list(ROWS).index(r)))  # eager rows first
    kept = {}  # (library, precision) -> a model a later compiled row takes over

    def load(library: str, precision: str):
        if (library, precision) in kept:
            return kept.pop((library, precision))
        if library == "t2i":
            loaded = t2i_load(path, t2i_config_dir, args.device, precision)
            print(f"t2i ({precision}) chose: {loaded.runtime.describe()}", file=sys.stderr, flush=True)
            return loaded
        return diffusers_pipe(path, config_dir, args.device, getattr(torch, precision))

    for index, row in enumerate(rows):
        library, precision, compiled = ROWS[row]
        model = load(library, precision)
        generate, dtype, setting, before_first = prepare_row(library, compiled, model, clock, args.size, args.steps)
        result = measure(generate, clock, args.repeats, args.device, before_first)
        result.update(row=row, dtype=str(dtype).removeprefix("torch."), setting=setting,
                      compile_s=result["first_s"] - result["s_image"] if compiled else None)
        results[row] = result
        print(f"{row}: {result['its']:.2f} it/s, {result['s_image']:.2f} s/image, first {result['first_s']:.1f} s, "
              f"{result['unet_calls']} UNet calls; {setting}", file=sys.stderr, flush=True)
        on_row(results)
        if not compiled and any(ROWS[r] == (library, precision, True) for r in rows[index + 1:]):
            kept[(library, precision)] = model
        del model, generate, before_first
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


# ----------------------------------------------------------------------------- numerics and report


def psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def compare(results: dict, low: str, full: str) -> dict | None:
    if low not in results or full not in results:
        return None
    a, b = results[low], results[full]
    rel = float((a["latents"] - b["latents"]).norm() / b["latents"].norm().clamp_min(1e-12))
    return {"pair": f"{low} vs {full}", "image_psnr_db": psnr(a["image"], b["image"]),
            "latent_rel_error": rel, "image_std": float(b["image"].std())}


def numerics(results: dict) -> list[dict]:
    pairs = (("t2i-auto", "t2i-fp32"), ("t2i-fp16", "t2i-fp32"), ("diffusers-fp16", "diffusers-fp32"))
    return [c for c in (compare(results, low, full) for low, full in pairs) if c]


def table(results: dict) -> list[str]:
    ref1, ref2 = results.get("diffusers-fp32"), results.get("diffusers-fp16")
    ratio = lambda r, ref: f"{r['its'] / ref['its']:.2f}x" if ref else "-"  # noqa: E731
    lines = ["| row | dtype | it/s (UNet evals) | s/image | UNet calls | it/s vs diffusers-fp32 | "
             "it/s vs diffusers-fp16 | first s | compile s | CUDA peak GiB | setting |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        r = results.get(row)
        if r is None:
            continue
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        peak = f"{r['cuda_peak_gb']:.2f}" if r["cuda_peak_gb"] is not None else "-"
        lines.append(f"| {row} | {r['dtype']} | {r['its']:.2f} | {r['s_image']:.2f} | {r['unet_calls']} | "
                     f"{ratio(r, ref1)} | {ratio(r, ref2)} | {r['first_s']:.1f} | {compile_s} | {peak} | "
                     f"{r['setting']} |")
    return lines


def targets(results: dict) -> list[str]:
    lines = []
    t2i, eager = results.get("t2i-auto"), results.get("diffusers-fp32")
    fp16 = results.get("diffusers-fp16")
    if t2i and eager:
        lines.append(f"t2i default vs diffusers eager defaults: {t2i['its'] / eager['its']:.2f}x it/s (target >= 1.0)")
    if t2i and fp16:
        lines.append(f"t2i default vs diffusers eager fp16: {t2i['its'] / fp16['its']:.2f}x it/s (target >= 1.0)")
    compiled, ref = results.get("t2i-compile"), results.get("diffusers-fp16-compile")
    if compiled and ref:
        lines.append(f"t2i compiled vs diffusers compiled: {compiled['its'] / ref['its']:.2f}x it/s (target >= 0.90)")
    return lines


# ----------------------------------------------------------------------------- driver


def _strict_json(value):
    """inf / nan (identical images, an unmeasurable loop) as null: strict JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def write_model(work: Path, tiny: bool, path: Path | None) -> tuple[Path, Path, Path | None]:
    """(checkpoint, diffusers config folder, t2i config folder or None for the bundled sd15)."""
    from t2i.checkpoints.single_file import bundled_config_dir

    sys.path.insert(0, str(HERE))
    if tiny:
        from sd15_txt2img import write_small_model

        file, configs = write_small_model(work)
        return file, configs, configs
    if path is None or not path.exists():
        from sd_single_file_load import write_random_sd15

        path = path or work / "sd15-random.safetensors"
        start = time.perf_counter()
        write_random_sd15(path)
        print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return path, bundled_config_dir("sd15"), None


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may reach a hub (set before diffusers is imported)
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if importlib.util.find_spec("t2i") is None:  # a checkout without t2i installed (e.g. the GPU machine)
        sys.path.insert(0, str(HERE.parent / "src"))
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per row after a warm-up (median)")
    parser.add_argument("--size", type=int, default=None, help="image side (default 512; 128 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="SD 1.5 layout at 1/10 width: checks the script on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile rows")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=DEFAULT_ROWS,
                        help="rows to time (default: all but t2i-compile-channels-last)")
    parser.add_argument("--path", type=Path, help="reuse this random SD 1.5 file (written there if missing, kept)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (it/s is timed between the first and last step)")
    args.size = args.size or (128 if args.tiny else 512)
    if args.skip_compile:
        args.rows = [r for r in args.rows if not ROWS[r][2]]

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()  # keep the log to the rows (a remote run returns its tail)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cuda = torch.device(args.device).type == "cuda"
    machine = torch.cuda.get_device_name(args.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    header = (f"{machine}; torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
              f"{transformers.__version__}; {'tiny (1/10-width) ' if args.tiny else ''}SD 1.5 random weights, "
              f"{args.size}x{args.size}, {args.steps} steps, CFG {CFG}, batch 1; median of {args.repeats} "
              f"after a warm-up")
    print(header, file=sys.stderr, flush=True)

    def save(results: dict) -> None:  # after every row, so a run cut short still leaves its rows
        if args.out:
            rows = [{k: v for k, v in r.items() if k not in ("image", "latents")} for r in results.values()]
            report = {"setup": header, "rows": rows, "targets": targets(results), "numerics": numerics(results)}
            args.out.write_text(json.dumps(_strict_json(report), indent=2))

    work = Path(tempfile.mkdtemp(prefix="t2i-sd15-gpu-"))
    try:
        path, config_dir, t2i_config_dir = write_model(work, args.tiny, args.path)
        results = run_rows(args, path, config_dir, t2i_config_dir, save)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(header)
    print("\n".join(table(results)))
    for line in targets(results):
        print(line)
    for c in numerics(results):
        print(f"numerics {c['pair']}: image PSNR {c['image_psnr_db']:.1f} dB, final latents relative error "
              f"{c['latent_rel_error']:.2e} (reference image std {c['image_std']:.1f} of 255)")

if __name__ == "__main__":
    main()
