"""`t2i img2img` (also `--input-dir` for a folder), `t2i inpaint` and `t2i outpaint`: parse ->
Session.run -> each image written as it is done. Flags come from the pipelines' params (the schema)."""
from __future__ import annotations

from pathlib import Path

from t2i.errors import ParamError
from t2i.interfaces.cli.common import (OutputWriter, add_load_arguments, add_output_arguments,
                                       add_styles_file_argument, make_session, note, open_image, seed_summary)
from t2i.pipelines.generation_params import Img2ImgParams, InpaintParams, OutpaintParams
from t2i.pipelines.params import add_cli_arguments, from_cli


def _common(p, command: str, params_cls) -> None:
    add_output_arguments(p, command)
    add_cli_arguments(p, params_cls, skip=("prompt",))
    add_styles_file_argument(p)
    add_load_arguments(p)


def add_img2img_command(sub) -> None:
    p = sub.add_parser("img2img", help="change an image with a prompt (img2img)",
                       description="Generate images starting from IMAGE. --denoising-strength 0 returns it "
                                   "unchanged, 1 ignores it; round(strength x steps) steps run. Width and height "
                                   "default to IMAGE's size. With --input-dir, every image of a folder.")
    p.add_argument("image", type=Path, nargs="?", help="the input image (none with --input-dir)")
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    p.add_argument("--input-dir", type=Path, help="process every image of this folder (then give only the "
                   "prompt, no IMAGE); outputs are named after the inputs")
    p.add_argument("--mask-dir", type=Path, help="with --input-dir: inpaint each image with the mask of the "
                   "same name (or the folder's only mask)")
    _common(p, "img2img", Img2ImgParams)
    p.set_defaults(run=run_image_command, params_cls=Img2ImgParams)


def add_inpaint_command(sub) -> None:
    p = sub.add_parser("inpaint", help="repaint the white area of a mask",
                       description="Repaint the area of IMAGE that MASK marks white (same size as IMAGE; "
                                   "transparent = keep). Width and height default to IMAGE's size, with "
                                   "--only-masked to the model's resolution (the size the crop is painted at).")
    p.add_argument("image", type=Path)
    p.add_argument("mask", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _common(p, "inpaint", InpaintParams)
    p.set_defaults(run=run_image_command, params_cls=InpaintParams)


def add_outpaint_command(sub) -> None:
    p = sub.add_parser("outpaint", help="extend an image's canvas and paint the new area",
                       description="Add --pixels on the --directions sides of IMAGE and paint them; the "
                                   "result has the extended canvas's size.")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _common(p, "outpaint", OutpaintParams)
    p.set_defaults(run=run_image_command, params_cls=OutpaintParams)


def run_image_command(args) -> None:
    from t2i.interfaces.cli.progress import ProgressBar
    from t2i.pipelines.schema import validate_strict

    if getattr(args, "input_dir", None) is not None:
        return run_img2img_folder(args)
    if args.image is None:
        raise ParamError("give an IMAGE, or --input-dir for a folder of images")
    params = from_cli(args.params_cls, args, prompt=args.prompt)
    validate_strict(params)  # fail on bad parameters before loading anything
    image = open_image(args.image)
    mask = open_image(args.mask) if args.params_cls is InpaintParams else None
    writer = OutputWriter(args.outdir, args.image_format)
    session = make_session(args)
    with ProgressBar() as bar:  # per-step tqdm bar with the run's ETA, on a terminal
        result = session.run(params, images=image, mask=mask, progress=bar, on_output=writer)
    note(seed_summary(result, args.prompt))


def _largest_input_size(params, folder: Path) -> tuple[int, int]:
    """The largest image a folder run works at, for planning the memory options: width x height
    where both are given, else the largest input (read from the file headers only)."""
    from PIL import Image, UnidentifiedImageError

    if params.width and params.height:
        return params.width, params.height
    best = (params.width or 0, params.height or 0)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            with Image.open(path) as im:
                size = (params.width or im.width, params.height or im.height)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
            continue  # img2img_folder skips it with a note
        if size[0] * size[1] > best[0] * best[1]:
            best = size
    return best


def run_img2img_folder(args) -> None:
    """`t2i img2img --input-dir IN [PROMPT]`: the one positional given is the prompt."""
    from t2i.pipelines.batch_folder import img2img_folder
    from t2i.pipelines.session_runs import model_in_use, with_styles

    prompt = args.prompt
    if args.image is not None:
        if prompt:
            raise ParamError("with --input-dir give only the prompt, not an IMAGE")
        prompt = str(args.image)
    params = from_cli(args.params_cls, args, prompt=prompt)
    for folder, what in ((args.input_dir, "--input-dir"), (args.mask_dir, "--mask-dir")):
        if folder is not None and not folder.is_dir():  # before the model loads
            raise FileNotFoundError(f"{what} {folder} is not a folder")
    session = make_session(args)
    params = with_styles(session, params)
    entry = session.model()
    with model_in_use(session, entry, session.settings, *_largest_input_size(params, args.input_dir)):
        report = img2img_folder(entry.loaded, params, args.input_dir, args.outdir, mask_dir=args.mask_dir, log=note)
    for path in report.written:
        print(path)
    note(f"{len(report.written)} image(s) written, {len(report.skipped)} file(s) skipped")
