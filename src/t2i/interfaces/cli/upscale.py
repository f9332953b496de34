"""`t2i upscale`: a super-resolution model or a classic resize over one or more images.

    t2i upscale small.png --model runs/shapes-sr -o big.png
    t2i upscale a.png b.png --model runs/shapes-sr -o upscaled/ --seed 1 --steps 30 --sampler "DPM++ 2M"
    t2i upscale a.png --upscaler lanczos --scale 4 -o a4.png

Thin: flags come from t2i.pipelines.upscale.UpscaleParams (one schema); cli.py registers the command
with `add_upscale_commands`. Every input is read and the model loaded before anything is written, and
each PNG is written atomically, so a bad input leaves no partial output.
"""
from __future__ import annotations

import sys
from pathlib import Path

from t2i.pipelines.params import add_cli_arguments

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_upscale_commands(sub) -> None:
    from t2i.pipelines.upscale import UpscaleParams

    p = sub.add_parser("upscale", help="upscale images with a super-resolution model or a classic resize",
                       description="Upscale IMAGE(s) with a super-resolution latent diffusion model (--model, "
                                   "e.g. a `t2i train configs/shapes-sr.yaml` run) or, with --upscaler "
                                   "lanczos|nearest|bicubic, a classic resize. PNG output with infotext.")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="input image(s)")
    p.add_argument("--model", type=Path, help="a super-resolution run folder or model .safetensors file")
    p.add_argument("-o", "--output", type=Path, default=Path("outputs/upscale"),
                   help="an output .png file (one input) or a folder, where IMAGE becomes "
                        "<stem>-x<scale>.png (default: %(default)s)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    add_cli_arguments(p, UpscaleParams)
    p.set_defaults(run=_run_upscale)


def output_paths(inputs: list[Path], output: Path, scale: int) -> list[Path]:
    """One output path per input: `output` itself for one input and an image suffix, else
    `output/<stem>-x<scale>.png`. ValueError for several inputs into one file or clashing names."""
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if len(inputs) > 1:
            raise ValueError(f"{len(inputs)} images cannot all go to the file {output}; give a folder with -o")
        return [output]
    paths = [output / f"{p.stem}-x{scale}.png" for p in inputs]
    if len(set(paths)) < len(paths):
        raise ValueError("two inputs have the same file name, so their outputs would collide; upscale them "
                         "into different folders")
    return paths


def _run_upscale(args) -> None:
    from t2i.interfaces.cli.images import _open_image
    from t2i.metadata import write_png
    from t2i.pipelines.params import from_cli
    from t2i.pipelines.upscale import UpscaleParams, load_sr_model, resolve_upscale_params, upscale

    params = from_cli(UpscaleParams, args)
    if args.model is None:
        resolve_upscale_params(params, None)  # fails early without a model, unless a classic upscaler
    targets = output_paths(args.images, args.output, params.scale)
    images = [_open_image(p) for p in args.images]  # all inputs readable before any work
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sr = load_sr_model(args.model, args.device) if args.model is not None else None
    result = upscale(images, params, sr)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    for image, info, target in zip(result.images, result.infotexts, targets):
        print(write_png(image, target, info))
    seeds = f" seed {result.seeds[0]}" if result.seeds else ""
    print(f"{len(result.images)} image(s) upscaled x{result.params.scale} ({result.params.upscaler}){seeds}",
          file=sys.stderr)
