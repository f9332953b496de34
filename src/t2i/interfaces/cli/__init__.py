"""The `t2i` command line. Thin: every command parses flags and calls pipelines/, train/ or data/.

User errors (bad parameters, missing files, invalid configs) print one `error:` line and exit
with status 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from t2i.pipelines.txt2img import Txt2ImgParams
from t2i.interfaces.cli.extra_networks import add_extra_network_arguments, configure_from_args
from t2i.interfaces.cli.images import add_image_commands
from t2i.interfaces.cli.models import add_model_commands
from t2i.interfaces.cli.scripts import add_script_commands, add_style_arguments, apply_cli_styles
from t2i.interfaces.cli.families import add_family_commands
from t2i.interfaces.cli.evaluate import add_evaluate_commands
from t2i.interfaces.cli.upscale import add_upscale_commands
from t2i.interfaces.cli.speed import add_speed_arguments, apply_speed_options
from t2i.pipelines.params import add_cli_arguments

EXIT_USER_ERROR = 2


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt (txt2img)",
                       description="Generate images from a text prompt. Without --model, the bundled default "
                                   "model (trained on the built-in `shapes` dataset) is used.")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (or use --from-file)")
    p.add_argument("--from-file", type=Path, help="a text file with one prompt per line")
    p.add_argument("--model", type=Path, help="a t2i or diffusers model folder, or a Stable Diffusion "
                   ".safetensors/.ckpt file (default: the bundled shapes model)")
    p.add_argument("--outdir", type=Path, default=Path("outputs/txt2img"), help="where images go (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "full"), default="auto",
                   help="auto: fastest correct precision for the device; full: float32 everywhere")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--grid", action="store_true", help="also save a grid of each prompt's images")
    p.add_argument("--infotext", type=Path, metavar="FILE",
                   help="reproduce an image: every parameter (prompt included) from the infotext of FILE (a "
                        "PNG/JPEG/WEBP made by t2i or the web UI, or a text file); flags given override it")
    add_cli_arguments(p, Txt2ImgParams, skip=("prompt",))
    add_style_arguments(p)  # --style, --styles-file (scripts.py)
    add_extra_network_arguments(p)  # --vae, --lora-dir, --embeddings-dir (extra_networks.py)
    add_speed_arguments(p)  # --compile, --vae-decoder tiny FILE (speed.py); --attention-slicing, --vae-tiling, --offload (models.py)
    p.set_defaults(run=_run_generate)


def _read_prompts(args) -> list[str]:
    if args.from_file is not None:
        if args.prompt is not None:
            raise ValueError("give either a prompt or --from-file, not both")
        try:
            lines = args.from_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read prompts from {args.from_file}: {err}") from err
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise ValueError(f"{args.from_file} holds no prompts (one per line expected)")
        return prompts
    return [args.prompt if args.prompt is not None else ""]


def _run_generate(args) -> None:
    from t2i.metadata import write_png
    from t2i.outputs import make_grid, next_image_path
    from t2i.pipelines.infotext import model_mismatch
    from t2i.pipelines.params import from_cli, validate
    from t2i.pipelines.txt2img import resolve_params, txt2img
    from t2i.runtime import Runtime

    from t2i.interfaces.cli.images import imply_enable_hr
    from t2i.interfaces.cli.progress import ProgressBar
    from t2i.interfaces.cli.models import apply_memory_from_args, decode_size, load_for_memory

    settings = _infotext_settings(args)  # None without --infotext
    base = settings.params if settings is not None else None
    reuse_prompt = base is not None and args.prompt is None and args.from_file is None
    prompts = [base.prompt] if reuse_prompt else _read_prompts(args)
    imply_enable_hr(args)  # --hr-scale and friends switch the hires fix on
    params = apply_cli_styles(args, from_cli(Txt2ImgParams, args, base, prompt=prompts[0]))
    validate(params)
    runtime = Runtime.auto(args.precision, args.device, args.threads)
    runtime.apply_threads()
    start = time.perf_counter()
    loaded = load_for_memory(args, runtime)  # load_model; into main memory when --offload asks
    configure_from_args(loaded, args)  # --vae, --lora-dir, --embeddings-dir
    resolved = resolve_params(params, loaded)  # fail on bad parameters before any work
    memory = apply_memory_from_args(args, loaded, runtime, *decode_size(resolved, loaded.model.vae_scale_factor))
    print(f"model {loaded.name} ({loaded.hash}) on {loaded.runtime.describe()}, {memory.describe()}, "
          f"loaded in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    apply_speed_options(loaded, args)
    warning = model_mismatch(settings, loaded) if settings is not None else None
    if warning:
        print(warning, file=sys.stderr)
    bar = ProgressBar()  # per-step tqdm bar with the run's ETA, on a terminal (progress.py)
    for prompt in prompts:
        result = txt2img(loaded, apply_cli_styles(args, from_cli(Txt2ImgParams, args, base, prompt=prompt)),
                         progress=bar)
        bar.close()
        for image, seed, info in zip(result.images, result.seeds, result.infotexts):
            path = write_png(image, next_image_path(args.outdir, seed, prompt), info)
            print(path)
        if args.grid and len(result.images) > 1:
            grid_path = args.outdir / f"grid-{next_image_path(args.outdir, result.seeds[0], prompt).name}"
            print(write_png(make_grid(result.images), grid_path, result.infotexts[0]))
        print(f"seed {result.seeds[0]}{'..' + str(result.seeds[-1]) if len(result.seeds) > 1 else ''}: "
              f"{len(result.images)} image(s) for {prompt!r}", file=sys.stderr)


def _infotext_settings(args):
    """The parameters in the --infotext file (None without it); notes the keys t2i cannot apply."""
    if args.infotext is None:
        return None
    from t2i.pipelines.infotext import infotext_from_file, read_settings

    settings = read_settings(infotext_from_file(args.infotext))
    if settings.ignored:
        print(f"note: {args.infotext} sets {', '.join(settings.ignored)}, which t2i does not apply", file=sys.stderr)
    return settings


def _png_info_parser(sub) -> None:
    p = sub.add_parser("png-info", help="print the generation parameters stored in an image")
    p.add_argument("file", type=Path)
    p.set_defaults(run=_run_png_info)


def _run_png_info(args) -> None:
    from t2i.metadata import read_infotext

    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file} does not exist")
    try:
        text = read_infotext(args.file)
    except OSError as err:
        raise ValueError(f"{args.file} is not a readable image: {err}") from err
    if text is None:
        raise ValueError(f"{args.file} holds no generation parameters")
    print(text)


def _data_parser(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser("preview", help="save a grid of dataset samples")
    preview.add_argument("dataset", choices=("shapes",))
    preview.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--resolution", type=int, default=64)
    preview.add_argument("-o", "--output", type=Path, default=Path("shapes.png"))
    preview.add_argument("--captions", action="store_true", help="also print the captions")
    preview.set_defaults(run=_run_data_preview)


def _run_data_preview(args) -> None:
    from t2i.data.shapes import ShapesDataset
    from t2i.metadata import write_png
    from t2i.outputs import make_grid

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    dataset = ShapesDataset(length=args.n, seed=args.seed, resolution=args.resolution)
    samples = [dataset[i] for i in range(args.n)]
    captions = "\n".join(f"{i}: {s['caption']}" for i, s in enumerate(samples))
    write_png(make_grid([s["image"] for s in samples]), args.output, captions)
    if args.captions:
        print(captions)
    print(args.output)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (e.g. configs/shapes-ldm.yaml)")
    p.add_argument("config", type=Path)
    p.add_argument("--outdir", type=Path, required=True, help="run folder: checkpoints, logs, final model/")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --outdir")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--budget-minutes", type=float, metavar="N",
                   help="stop every stage once this process has used N CPU-minutes (all threads); the run "
                        "still writes a model that samples, and budget.json (see t2i.training.budget)")
    p.add_argument("--budget-clock", choices=("cpu", "wall"), default="cpu",
                   help="what --budget-minutes counts: process CPU time (default) or elapsed wall time (on a GPU)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> None:
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be a positive number of CPU-minutes, got {args.budget_minutes:g}")
    import torch

    from t2i.training.registry import load_training_config

    family, cfg, train_fn = load_training_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and any(args.outdir.glob("*.ckpt")):
        raise ValueError(f"{args.outdir} already holds checkpoints; pass --resume to continue or choose another --outdir")
    print(f"training {family} model from {args.config} into {args.outdir}", file=sys.stderr)
    if args.budget_minutes is not None:
        from t2i.training.budget import train_on_budget

        train_on_budget(train_fn, cfg, args.outdir, resume=args.resume, minutes=args.budget_minutes,
                        clock=args.budget_clock)
    else:
        train_fn(cfg, args.outdir, resume=args.resume)
    # GAN / VAE / DDPM runs write model.safetensors, AR runs ar.safetensors, VQGAN runs
    # vqgan.safetensors, KL autoencoder runs autoencoder.safetensors; LDM runs write a folder
    files = [args.outdir / name for name in ("model.safetensors", "ar.safetensors", "vqgan.safetensors",
                                             "autoencoder.safetensors")]
    print(next((f for f in files if f.is_file()), args.outdir / "model"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i", description="Text-to-image: train and generate, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _png_info_parser(sub)
    _data_parser(sub)
    _train_parser(sub)
    add_image_commands(sub)  # img2img, inpaint, outpaint (images.py)
    add_script_commands(sub)  # xyz, prompt-matrix, loopback (scripts.py)
    add_family_commands(sub)  # sample, interpolate (families.py)
    add_evaluate_commands(sub)  # evaluate recon (evaluate.py)
    add_model_commands(sub)  # convert, merge (models.py)
    add_upscale_commands(sub)  # upscale (upscale.py)
    return parser


def main(argv: list[str] | None = None) -> int:
    from t2i.checkpoints.diffusers_folder import ModelLoadError
    from t2i.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, ModelLoadError, ConfigError) as err:
        print(f"t2i {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


