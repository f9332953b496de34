"""`t2i img2img`, `t2i inpaint` and `t2i outpaint`: thin commands over the image pipelines.

Their flags come from the pipelines' parameter dataclasses (one schema, see
t2i.pipelines.params); cli.py registers them with `add_image_commands`.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from t2i.interfaces.cli.scripts import add_batch_arguments, add_style_arguments
from t2i.interfaces.cli.extra_networks import add_extra_network_arguments, configure_from_args
from t2i.interfaces.cli.models import add_memory_arguments
from t2i.pipelines.params import add_cli_arguments

# Hires flags of `t2i generate` that switch the hires fix on by being given.
HIRES_FLAGS = ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y")


def imply_enable_hr(args) -> None:
    """`t2i generate --hr-scale 2` means hires fix on, unless --no-enable-hr says otherwise."""
    if getattr(args, "enable_hr", None) is None and any(getattr(args, f, None) is not None for f in HIRES_FLAGS):
        args.enable_hr = True


def _common(p, command: str) -> None:
    p.add_argument("--model", type=Path, help="a t2i or diffusers model folder, or a Stable Diffusion "
                   ".safetensors/.ckpt file (default: the bundled shapes model)")
    p.add_argument("--outdir", type=Path, default=Path(f"outputs/{command}"), help="where images go (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "full"), default="auto",
                   help="auto: fastest correct precision for the device; full: float32 everywhere")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    add_extra_network_arguments(p)  # --vae, --lora-dir, --embeddings-dir
    add_memory_arguments(p.add_argument_group("memory (opt-in)"))  # --attention-slicing, --vae-tiling, --offload


def add_image_commands(sub) -> None:
    from t2i.pipelines.img2img import Img2ImgParams
    from t2i.pipelines.inpaint import InpaintParams
    from t2i.pipelines.outpaint import OutpaintParams

    p = sub.add_parser("img2img", help="change an image with a prompt (img2img)",
                       description="Generate images starting from IMAGE. --denoising-strength 0 returns it "
                                   "unchanged, 1 ignores it; round(strength x steps) steps run. Width and height "
                                   "default to IMAGE's size. With --input-dir, every image of a folder.")
    p.add_argument("image", type=Path, nargs="?", help="the input image (none with --input-dir)")
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _common(p, "img2img")
    add_cli_arguments(p, Img2ImgParams, skip=("prompt",))
    add_batch_arguments(p)  # --input-dir, --mask-dir (scripts.py)
    add_style_arguments(p)
    p.set_defaults(run=_run_image_command, params_cls=Img2ImgParams, pipeline="img2img")

    p = sub.add_parser("inpaint", help="repaint the white area of a mask",
                       description="Repaint the area of IMAGE that MASK marks white (same size as IMAGE; "
                                   "transparent = keep). Width and height default to IMAGE's size, with "
                                   "--only-masked to the model's resolution (the size the crop is painted at).")
    p.add_argument("image", type=Path)
    p.add_argument("mask", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _common(p, "inpaint")
    add_cli_arguments(p, InpaintParams, skip=("prompt",))
    add_style_arguments(p)
    p.set_defaults(run=_run_image_command, params_cls=InpaintParams, pipeline="inpaint")

    p = sub.add_parser("outpaint", help="extend an image's canvas and paint the new area",
                       description="Add --pixels on the --directions sides of IMAGE and paint them; the "
                                   "result has the extended canvas's size.")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _common(p, "outpaint")
    add_cli_arguments(p, OutpaintParams, skip=("prompt",))
    add_style_arguments(p)
    p.set_defaults(run=_run_image_command, params_cls=OutpaintParams, pipeline="outpaint")


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def vae_image_size(pipeline: str, params, loaded, image) -> tuple[int, int]:
    """The largest image the VAE encodes and decodes in one image command, for planning the
    memory options: img2img and whole-picture inpainting work at width x height (default: the
    input's size), only-masked inpainting at the crop's painting size (the full picture is
    pasted back in pixels), outpainting on the extended canvas."""
    from t2i.pipelines.img2img import resolve_img2img_params
    from t2i.pipelines.inpaint import resolve_inpaint_params
    from t2i.pipelines.outpaint import extents, parse_directions

    size = image.size
    if pipeline == "img2img":
        resolved = resolve_img2img_params(params, loaded, size)
    else:
        if pipeline == "outpaint":
            add = extents(size, params.pixels, parse_directions(params.directions), loaded.model.vae_scale_factor)
            size = (size[0] + add["left"] + add["right"], size[1] + add["up"] + add["down"])
        resolved = resolve_inpaint_params(params, loaded, size)
    return resolved.width, resolved.height


def _run_image_command(args) -> None:
    from t2i.interfaces.cli.models import apply_memory_from_args, load_for_memory
    from t2i.interfaces.cli.progress import ProgressBar
    from t2i.metadata import write_png
    from t2i.outputs import next_image_path
    from t2i.pipelines.inpaint import inpaint
    from t2i.pipelines.img2img import img2img
    from t2i.pipelines.outpaint import outpaint
    from t2i.pipelines.params import from_cli, validate
    from t2i.runtime import Runtime

    from t2i.interfaces.cli.scripts import apply_cli_styles, run_img2img_batch

    if getattr(args, "input_dir", None) is not None:
        return run_img2img_batch(args)
    if args.image is None:
        raise ValueError("give an IMAGE, or --input-dir for a folder of images")
    params = apply_cli_styles(args, from_cli(args.params_cls, args, prompt=args.prompt))
    validate(params)  # fail on bad parameters before loading anything
    image = _open_image(args.image)
    mask = _open_image(args.mask) if args.pipeline == "inpaint" else None
    runtime = Runtime.auto(args.precision, args.device, args.threads)
    runtime.apply_threads()
    start = time.perf_counter()
    loaded = load_for_memory(args, runtime)  # load_model; into main memory when --offload asks
    configure_from_args(loaded, args)  # --vae, --lora-dir, --embeddings-dir
    memory = apply_memory_from_args(args, loaded, runtime, *vae_image_size(args.pipeline, params, loaded, image))
    print(f"model {loaded.name} ({loaded.hash}) on {loaded.runtime.describe()}, {memory.describe()}, "
          f"loaded in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    with ProgressBar() as bar:  # per-step tqdm bar with the run's ETA, on a terminal
        if args.pipeline == "img2img":
            result = img2img(loaded, params, image, progress=bar)
        elif args.pipeline == "inpaint":
            result = inpaint(loaded, params, image, mask, progress=bar)
        else:
            result = outpaint(loaded, params, image, progress=bar)
    for out, seed, info in zip(result.images, result.seeds, result.infotexts):
        print(write_png(out, next_image_path(args.outdir, seed, args.prompt), info))
    print(f"seed {result.seeds[0]}{'..' + str(result.seeds[-1]) if len(result.seeds) > 1 else ''}: "
          f"{len(result.images)} image(s) for {args.prompt!r}", file=sys.stderr)
