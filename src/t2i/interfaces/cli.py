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
from t2i.interfaces.cli_images import add_image_commands
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
    add_cli_arguments(p, Txt2ImgParams, skip=("prompt",))
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
    from t2i.checkpoints.registry import load_model
    from t2i.metadata import write_png
    from t2i.outputs import make_grid, next_image_path
    from t2i.pipelines.params import from_cli, validate
    from t2i.pipelines.txt2img import resolve_params, txt2img
    from t2i.runtime import Runtime

    from t2i.interfaces.cli_images import imply_enable_hr

    prompts = _read_prompts(args)
    imply_enable_hr(args)  # --hr-scale and friends switch the hires fix on
    params = from_cli(Txt2ImgParams, args, prompt=prompts[0])
    validate(params)
    runtime = Runtime.auto(args.precision, args.device, args.threads)
    runtime.apply_threads()
    start = time.perf_counter()
    loaded = load_model(args.model, runtime)
    resolve_params(params, loaded)  # fail on bad parameters before any work
    print(f"model {loaded.name} ({loaded.hash}) on {runtime.describe()}, loaded in {time.perf_counter() - start:.1f}s",
          file=sys.stderr)
    for prompt in prompts:
        result = txt2img(loaded, from_cli(Txt2ImgParams, args, prompt=prompt))
        for image, seed, info in zip(result.images, result.seeds, result.infotexts):
            path = write_png(image, next_image_path(args.outdir, seed, prompt), info)
            print(path)
        if args.grid and len(result.images) > 1:
            grid_path = args.outdir / f"grid-{next_image_path(args.outdir, result.seeds[0], prompt).name}"
            print(write_png(make_grid(result.images), grid_path, result.infotexts[0]))
        print(f"seed {result.seeds[0]}{'..' + str(result.seeds[-1]) if len(result.seeds) > 1 else ''}: "
              f"{len(result.images)} image(s) for {prompt!r}", file=sys.stderr)


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
    p.set_defaults(run=_run_train)


def _run_train(args) -> None:
    import torch

    from t2i.training.registry import load_training_config

    family, cfg, train_fn = load_training_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and any(args.outdir.glob("*.ckpt")):
        raise ValueError(f"{args.outdir} already holds checkpoints; pass --resume to continue or choose another --outdir")
    print(f"training {family} model from {args.config} into {args.outdir}", file=sys.stderr)
    train_fn(cfg, args.outdir, resume=args.resume)
    one_file = args.outdir / "model.safetensors"  # GAN / VAE / DDPM runs; LDM runs write a folder
    print(one_file if one_file.is_file() else args.outdir / "model")


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a grid from a GAN, VAE or pixel DDPM (model file or run folder)")
    p.add_argument("model", type=Path, help="a model .safetensors file or a training run folder")
    p.add_argument("--n", type=int, default=16, help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=Path("grid.png"), help="grid image (default: %(default)s)")
    p.add_argument("--class", dest="class_name", help="class name (conditional models; default: cycle through all)")
    p.add_argument("--width", type=int, help="image width (DDPM: any multiple of its size step, larger than trained too)")
    p.add_argument("--height", type=int, help="image height")
    p.add_argument("--sampler", help="DDPM only: DDPM (ancestral), DDIM (default) or another sampler name")
    p.add_argument("--steps", type=int, help="DDPM only: sampling steps (default: all for DDPM, 50 otherwise)")
    p.add_argument("--eta", type=float, help="DDPM only: DDIM's eta (0: deterministic)")
    p.add_argument("--guidance-scale", type=float, help="DDPM only: classifier-free guidance for a class")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> None:
    import torch

    from t2i.metadata import build_infotext, write_png
    from t2i.outputs import make_grid
    from t2i.pipelines.families import load_family_model, sample_family

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_family_model(args.model, args.device)
    images = sample_family(loaded, args.n, args.seed, args.class_name, args.width, args.height,
                           sampler=args.sampler, steps=args.steps, eta=args.eta, guidance_scale=args.guidance_scale)
    info = build_infotext(args.class_name or "", "", {
        "Steps": args.steps, "Sampler": args.sampler, "CFG scale": args.guidance_scale, "Seed": args.seed,
        "Size": images[0].size, "Model": loaded.name, "Family": loaded.family, "Eta": args.eta})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    print(write_png(make_grid(images), args.output, info))


def _interpolate_parser(sub) -> None:
    p = sub.add_parser("interpolate", help="a strip of frames between two images through a VAE's latent space")
    p.add_argument("model", type=Path, help="a VAE .safetensors file or its training run folder")
    p.add_argument("image_a", type=Path)
    p.add_argument("image_b", type=Path)
    p.add_argument("--n", type=int, default=8, help="frames, both ends included (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=Path("strip.png"), help="(default: %(default)s)")
    p.set_defaults(run=_run_interpolate)


def _run_interpolate(args) -> None:
    from PIL import Image, UnidentifiedImageError

    from t2i.metadata import write_png
    from t2i.outputs import make_grid
    from t2i.pipelines.families import interpolate_family, load_family_model

    images = []
    for path in (args.image_a, args.image_b):
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from err
    loaded = load_family_model(args.model)
    frames = interpolate_family(loaded, images[0], images[1], args.n)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    info = f"t2i interpolate: {args.image_a.name} -> {args.image_b.name}, {args.n} frames, model {loaded.name}"
    print(write_png(make_grid(frames, cols=len(frames)), args.output, info))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i", description="Text-to-image: train and generate, offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_parser(sub)
    _png_info_parser(sub)
    _data_parser(sub)
    _train_parser(sub)
    add_image_commands(sub)  # img2img, inpaint, outpaint (cli_images.py)
    _sample_parser(sub)
    _interpolate_parser(sub)
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


if __name__ == "__main__":
    sys.exit(main())
