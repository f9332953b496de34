"""`t2i sample` and `t2i interpolate`: the classic families (GAN, VAE, pixel DDPM, VQGAN + AR).

Thin: flags -> t2i.pipelines.families; cli/__init__.py registers them.
"""
from __future__ import annotations

from pathlib import Path

from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.params import add_cli_arguments, from_cli
from t2i.pipelines.sample_params import SampleParams


def add_sample_command(sub) -> None:
    p = sub.add_parser("sample", help="sample a grid from a GAN, VAE, pixel DDPM, VQGAN + AR transformer or "
                       "class/unconditional/retrieval LDM",
                       description="Sample a grid from a model file or a training run folder (a run still "
                                   "training gives its latest checkpoint's EMA weights).")
    p.add_argument("model", type=str, help="a model .safetensors file or a training run folder")
    p.add_argument("-o", "--output", type=Path, default=Path("grid.png"), help="grid image (default: %(default)s)")
    p.add_argument("--complete", type=Path, metavar="IMAGE",
                   help="AR: image completion, keep IMAGE's top half (its codes) and sample the bottom half")
    add_cli_arguments(p, SampleParams)
    add_cli_arguments(p, LoadSettings, skip=tuple(n for n in _field_names(LoadSettings)
                                                  if n not in ("first_stage", "device", "threads")))
    p.set_defaults(run=_run_sample)


def _field_names(cls) -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(cls)]


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _run_sample(args) -> None:
    from t2i.interfaces.cli.common import make_session
    from t2i.metadata import write_image
    from t2i.pipelines.schema import validate_strict

    params = from_cli(SampleParams, args)
    validate_strict(params)
    image = _open_rgb(args.complete) if args.complete is not None else None  # fail before loading
    session = make_session(args, model=args.model)
    result = session.run(params, images=image, image_names=[args.complete.name] if image is not None else None)
    grid = result.outputs[0]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    print(write_image(grid.image, args.output, grid.infotext))


def add_interpolate_command(sub) -> None:
    _interpolate_parser(sub)


def _interpolate_parser(sub) -> None:
    p = sub.add_parser("interpolate", help="a strip of frames between two images through a VAE's latent space")
    p.add_argument("model", type=Path, help="a VAE .safetensors file or its training run folder")
    p.add_argument("image_a", type=Path)
    p.add_argument("image_b", type=Path)
    p.add_argument("--n", type=int, default=8, help="frames, both ends included (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=Path("strip.png"), help="(default: %(default)s)")
    p.set_defaults(run=_run_interpolate)


def _run_interpolate(args) -> None:
    from t2i.metadata import write_png
    from t2i.outputs import make_grid
    from t2i.pipelines.families import interpolate_family, load_family_model

    images = [_open_rgb(path) for path in (args.image_a, args.image_b)]
    loaded = load_family_model(args.model)
    frames = interpolate_family(loaded, images[0], images[1], args.n)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    info = f"t2i interpolate: {args.image_a.name} -> {args.image_b.name}, {args.n} frames, model {loaded.name}"
    print(write_png(make_grid(frames, cols=len(frames)), args.output, info))
