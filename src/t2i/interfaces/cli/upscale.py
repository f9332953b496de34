"""`t2i upscale`: a super-resolution model or a classic resize over one or more images.

    t2i upscale small.png --model runs/shapes-sr -o big.png
    t2i upscale a.png b.png --model runs/shapes-sr -o upscaled/ --seed 1 --steps 30 --sampler "DPM++ 2M"
    t2i upscale a.png --upscaler lanczos --scale 4 -o a4.png

Thin: flags come from t2i.pipelines.upscale.UpscaleParams (one schema); cli/__init__.py registers the
command. Every input is read and the model loaded before anything is written, and
each PNG is written atomically, so a bad input leaves no partial output.
"""
from __future__ import annotations

import sys
from pathlib import Path

import dataclasses

from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.params import add_cli_arguments, from_cli
from t2i.pipelines.upscale import UpscaleParams

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# the LoadSettings fields `t2i upscale` takes (no VAE, LoRAs or memory flags here)
UPSCALE_LOAD_FLAGS = ("device", "threads", "upscaler_dirs", "upscaler_tile", "upscaler_tile_overlap", "face_restorer")


def add_upscale_command(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images with a super-resolution model or a classic resize",
                       description="Upscale IMAGE(s) with a super-resolution latent diffusion model (--model, "
                                   "e.g. a `t2i train configs/shapes-sr.yaml` run), with --upscaler NAME an "
                                   "upscaler weights file NAME.pth/.safetensors in --upscaler-dir (ESRGAN, "
                                   "Real-ESRGAN, SwinIR, HAT, DAT, ...: spandrel), or with --upscaler "
                                   "lanczos|nearest|bicubic a classic resize. PNG output with infotext.")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="input image(s)")
    p.add_argument("--model", help="a super-resolution run folder or model .safetensors file")
    p.add_argument("-o", "--output", type=Path, default=Path("outputs/upscale"),
                   help="an output .png file (one input) or a folder, where IMAGE becomes "
                        "<stem>-x<scale>.png (default: %(default)s)")
    add_cli_arguments(p, UpscaleParams)
    add_cli_arguments(p, LoadSettings, skip=tuple(f.name for f in dataclasses.fields(LoadSettings)
                                                  if f.name not in UPSCALE_LOAD_FLAGS))
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
    from t2i.interfaces.cli.common import make_session, open_image
    from t2i.metadata import write_image
    from t2i.pipelines.upscale import resolve_upscale_params

    from t2i.pipelines.model_upscalers import UpscalerLibrary

    params = from_cli(UpscaleParams, args)
    if args.model is None:  # fails early without a model, unless a classic upscaler or an upscaler file
        resolve_upscale_params(params, None, UpscalerLibrary(tuple(args.upscaler_dirs or ())))
    targets = output_paths(args.images, args.output, params.scale)
    images = [open_image(p) for p in args.images]  # all inputs readable before any work
    result = make_session(args, model=args.model).run(params, images=images)
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    for out, target in zip(result.outputs, targets):
        print(write_image(out.image, target, out.infotext))
    seeds = f" seed {result.seeds[0]}" if result.seeds and result.seeds[0] is not None else ""
    print(f"{len(result.outputs)} image(s) upscaled x{result.params.scale} ({result.params.upscaler}){seeds}",
          file=sys.stderr)
