"""End to end: how long does a 20-step 512x512 txt2img take from a single-file SD 1.5 checkpoint,
in t2i and in diffusers, and how much memory does each use?

Writes a random-weight SD 1.5 file in the original single-file layout (fp16, as
`v1-5-pruned-emaonly.safetensors`; benchmarks/sd_single_file_load.py), then runs every variant
in its own fresh process (clean peak RSS): load the file, one 1-step warm-up generation at the
same size (kernels are built on the first call of a shape), then the timed 20-step generation,
min of --repeats. Full UNet evaluations are counted (diffusers' default PNDM does steps + 1;
DeepCache's shallow evaluations are not counted).

variants (--variants picks some):
  t2i-default      `t2i generate` with no setting touched (Runtime.auto, DPM++ 2M)
  t2i-full         --precision full (float32)
  t2i-deepcache    + DeepCache interval 3
  t2i-fastest      + DeepCache interval 3 + tiny VAE decoder (random TAESD weights: its speed only)
  t2i-compile      + torch.compile (the warm-up pays the compile; reported as load+warm-up)
  t2i-vae-tiling   + VAE tiling (memory; t2i's "auto" tiles only above 1024x1024 on a CPU)
  t2i-attn-slicing + attention slicing (memory; "auto" leaves it off on a CPU)
  diffusers-default       StableDiffusionPipeline.from_single_file, then pipe(prompt) as documented
  diffusers-best-manual   torch_dtype=bfloat16 + channels_last UNet and VAE

    python benchmarks/sd15_txt2img.py --threads 2 [--variants t2i-default diffusers-default] [--keep]
    python benchmarks/sd15_txt2img.py --small     # SD-shaped model at 1/10 width, 128x128, 4 steps
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("t2i-default", "t2i-full", "t2i-deepcache", "t2i-fastest", "t2i-compile", "t2i-vae-tiling",
            "t2i-attn-slicing", "diffusers-default", "diffusers-best-manual")
PROMPT = "a photograph of an astronaut riding a horse"


def write_small_model(folder: Path) -> tuple[Path, Path]:
    """(single file, config folder) of the 1/10-width SD 1.5-shaped model."""
    from t2i.checkpoints.convert import save_single_file
    from t2i.checkpoints.single_file import bundled_config_dir
    from t2i.evaluate.random_sd import random_sd_model, sd_configs

    configs = folder / "configs"
    shutil.copytree(bundled_config_dir("sd15"), configs)
    for part, config in sd_configs("sd15", tiny=True).items():
        if part != "scheduler":
            (configs / part / "config.json").write_text(json.dumps(config, indent=2))
    path = folder / "sd15-small.safetensors"
    import torch

    save_single_file(random_sd_model("sd15", tiny=True), path, "sd1", dtype=torch.float16)
    return path, configs


def write_taesd(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from t2i.checkpoints.tiny_vae import build_tiny_decoder

    torch.manual_seed(0)
    state = build_tiny_decoder(4).state_dict()
    save_file({f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v.contiguous() for k, v in state.items()}, str(path))


# ----------------------------------------------------------------------------- one variant, in a child


def _import_libraries() -> None:
    """Import what both sides use before their load timers start: load times compare loading."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401


def _count_calls(unet) -> list:
    calls = []
    unet.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


def run_t2i(variant: str, path: Path, config_dir: Path | None, taesd: Path, size: int, steps: int, repeats: int):
    from t2i.checkpoints.registry import load_model
    from t2i.checkpoints.single_file import load_user_model
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img
    from t2i.runtime import Runtime
    from t2i import speedups
    from t2i.memory import MemoryPlan, apply_memory

    _import_libraries()
    start = time.perf_counter()
    runtime = Runtime.auto("full" if variant == "t2i-full" else "auto", "cpu")
    loaded = load_user_model(path, runtime, config_dir=config_dir) if config_dir else load_model(path, runtime)
    extra = {}
    if variant in ("t2i-deepcache", "t2i-fastest"):
        extra["deepcache_interval"] = 3
    if variant == "t2i-fastest":
        speedups.use_tiny_decoder(loaded, taesd)
    if variant in ("t2i-vae-tiling", "t2i-attn-slicing"):
        apply_memory(loaded.model, MemoryPlan(attention_slicing=variant == "t2i-attn-slicing",
                                              vae_tiling=variant == "t2i-vae-tiling"), "cpu")
    if variant == "t2i-compile":
        speedups.compile_unet(loaded, warmup_batch=None)
    load_s = time.perf_counter() - start
    params = dict(prompt=PROMPT, seed=1, width=size, height=size, cfg_scale=7.0, **extra)
    start = time.perf_counter()
    txt2img(loaded, Txt2ImgParams(steps=1, **params))
    warm_s = time.perf_counter() - start
    calls = _count_calls(loaded.model.unet)
    best = float("inf")
    for _ in range(repeats):
        calls.clear()
        start = time.perf_counter()
        txt2img(loaded, Txt2ImgParams(steps=steps, **params))
        best = min(best, time.perf_counter() - start)
    return {"load_s": load_s, "warmup_s": warm_s, "seconds": best, "unet_calls": len(calls),
            "setting": loaded.runtime.describe()}


def run_diffusers(variant: str, path: Path, config_dir: Path | None, size: int, steps: int, repeats: int):
    import torch
    from diffusers import StableDiffusionPipeline

    from t2i.checkpoints.single_file import bundled_config_dir
    from t2i.models.text import load_tokenizer

    _import_libraries()
    start = time.perf_counter()
    best_manual = variant == "diffusers-best-manual"
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir or bundled_config_dir("sd15")), local_files_only=True,
        tokenizer=load_tokenizer(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        torch_dtype=torch.bfloat16 if best_manual else None)
    if best_manual:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    generate = lambda n: pipe(PROMPT, num_inference_steps=n, height=size, width=size, guidance_scale=7.0,  # noqa: E731
                              generator=torch.Generator().manual_seed(1)).images
    start = time.perf_counter()
    generate(1)
    warm_s = time.perf_counter() - start
    calls = _count_calls(pipe.unet)
    best = float("inf")
    for _ in range(repeats):
        calls.clear()
        start = time.perf_counter()
        generate(steps)
        best = min(best, time.perf_counter() - start)
    setting = f"{str(pipe.unet.dtype).removeprefix('torch.')}, {type(pipe.scheduler).__name__}"
    return {"load_s": load_s, "warmup_s": warm_s, "seconds": best, "unet_calls": len(calls), "setting": setting}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    config_dir = Path(args.config_dir) if args.config_dir else None
    if args.child.startswith("t2i"):
        result = run_t2i(args.child, Path(args.path), config_dir, Path(args.taesd), args.size, args.steps, args.repeats)
    else:
        result = run_diffusers(args.child, Path(args.path), config_dir, args.size, args.steps, args.repeats)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


# ----------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="timed generations per variant (min is reported)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        default=["t2i-default", "t2i-fastest", "diffusers-default", "diffusers-best-manual"])
    parser.add_argument("--path", type=Path, default=Path("/tmp/t2i-sd15-random.safetensors"))
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoint for another run")
    parser.add_argument("--small", action="store_true", help="1/10-width model, 128x128, 4 steps")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", help=argparse.SUPPRESS)
    parser.add_argument("--taesd", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    work = Path(tempfile.mkdtemp(prefix="t2i-bench-"))
    try:
        config_dir = None
        if args.small:
            args.size, args.steps = 128, 4
            path, config_dir = write_small_model(work)
        else:
            path = args.path
            if not path.exists():
                sys.path.insert(0, str(HERE))
                from sd_single_file_load import write_random_sd15

                start = time.perf_counter()
                write_random_sd15(path)
                print(f"wrote {path} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        taesd = work / "taesd_decoder.safetensors"
        write_taesd(taesd)
        rows = []
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--child", variant, "--path", str(path), "--taesd", str(taesd),
                   "--threads", str(args.threads), "--steps", str(args.steps), "--size", str(args.size),
                   "--repeats", str(args.repeats)] + (["--config-dir", str(config_dir)] if config_dir else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{variant} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
                continue
            rows.append((variant, json.loads(out.stdout.strip().splitlines()[-1])))
            print(f"{variant}: {rows[-1][1]}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.small and not args.keep and args.path.exists():
            args.path.unlink()

    reference = dict(rows).get("diffusers-default")
    print(f"{args.threads} threads; {'1/10-width ' if args.small else ''}SD 1.5 single file, {args.size}x{args.size}, "
          f"{args.steps} steps, CFG 7; min of {args.repeats} timed run(s) after a 1-step warm-up, each variant in "
          f"its own process")
    print("| variant | settings | load s | warm-up s | generate s | UNet calls | vs diffusers defaults | "
          "peak RSS GiB | RSS vs diffusers |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, r in rows:
        ratio = f"{r['seconds'] / reference['seconds']:.2f}x" if reference else "-"
        mem = f"{r['peak_rss_gb'] / reference['peak_rss_gb']:.2f}x" if reference else "-"
        print(f"| {variant} | {r['setting']} | {r['load_s']:.1f} | {r['warmup_s']:.1f} | {r['seconds']:.1f} | "
              f"{r['unet_calls']} | {ratio} | {r['peak_rss_gb']:.2f} | {mem} |")


if __name__ == "__main__":
    main()
