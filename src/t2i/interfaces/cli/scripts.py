"""`t2i xyz`, `t2i prompt-matrix`, `t2i loopback`, plus the styles flags (`--style`,
`--styles-file`) and batch img2img (`t2i img2img --input-dir`): the web UI's scripts on the
command line. Flags come from the pipelines' and the scripts' parameter dataclasses (one schema,
see t2i.pipelines.params); cli.py registers the commands with `add_script_commands`.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from t2i.pipelines.params import add_cli_arguments

# ---------------------------------------------------------------------------- styles


def add_style_arguments(p) -> None:
    p.add_argument("--style", dest="styles", action="append", metavar="NAME",
                   help="apply a style from the styles file (repeat for several, applied in order)")
    p.add_argument("--styles-file", type=Path, help="styles CSV (name,prompt,negative_prompt; "
                   "default: styles.csv in the current directory, if there is one)")


def cli_styles(args):
    """(style names, styles table or None) from --style and --styles-file; errors for unknown names."""
    from t2i.pipelines.styles import default_styles_file, load_styles, select_styles

    names = list(getattr(args, "styles", None) or [])
    path = getattr(args, "styles_file", None) or default_styles_file()
    table = load_styles(path) if path is not None else None
    select_styles(table, names)  # unknown names fail before any work
    return names, table


def apply_cli_styles(args, params):
    from t2i.pipelines.styles import apply_styles

    return apply_styles(params, *cli_styles(args))


# ---------------------------------------------------------------------------- helpers


def _flag(cls, name: str) -> str:
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    return meta.get("flag") or "--" + name.replace("_", "-")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _add_generation_arguments(p) -> None:
    """txt2img's flags, plus img2img's own ones (used with --image)."""
    from t2i.pipelines.img2img import Img2ImgParams
    from t2i.pipelines.txt2img import Txt2ImgParams

    add_cli_arguments(p, Txt2ImgParams, skip=("prompt",))
    add_cli_arguments(p, Img2ImgParams, skip=tuple(_field_names(Txt2ImgParams)))
    p.add_argument("--image", type=Path, help="start from this image (img2img; then --denoising-strength is "
                   "img2img's) instead of from text")


def _generation_params(args):
    """Txt2ImgParams, or Img2ImgParams with --image; a flag of the other pipeline is an error.
    Styles are not applied: the scripts apply them to each run's prompt, as the web UI does."""
    from t2i.interfaces.cli.images import imply_enable_hr
    from t2i.pipelines.img2img import Img2ImgParams
    from t2i.pipelines.params import from_cli
    from t2i.pipelines.txt2img import Txt2ImgParams

    txt, img = _field_names(Txt2ImgParams), _field_names(Img2ImgParams)
    cls, other, other_cls = (Txt2ImgParams, img - txt, Img2ImgParams) if args.image is None else \
        (Img2ImgParams, txt - img, Txt2ImgParams)
    given = sorted(n for n in other if getattr(args, n, None) is not None)
    if given:
        need = "needs --image" if args.image is None else "is for text-to-image runs, not with --image"
        raise ValueError(f"{_flag(other_cls, given[0])} {need}")
    if args.image is None:
        imply_enable_hr(args)
    return from_cli(cls, args, prompt=args.prompt)


def _load(args, path=None, runtime=None, vae_size=None):
    """The model of --model (or `path`: the X/Y/Z plot's Checkpoint name axis), with the flags of
    `_common` applied; with `vae_size(loaded) -> (width, height)`, also the memory flags
    (--attention-slicing, --vae-tiling, --offload) planned for that largest VAE image."""
    from t2i.checkpoints.registry import load_model
    from t2i.interfaces.cli.extra_networks import configure_from_args
    from t2i.interfaces.cli.models import apply_memory_from_args, load_for_memory
    from t2i.runtime import Runtime

    if runtime is None:
        runtime = Runtime.auto(args.precision, args.device, args.threads)
        runtime.apply_threads()
    start = time.perf_counter()
    loaded = load_for_memory(args, runtime) if vae_size is not None and path is None else \
        load_model(path or args.model, runtime)
    configure_from_args(loaded, args)  # --vae, --lora-dir, --embeddings-dir (extra_networks.py)
    memory = ""
    if vae_size is not None:
        memory = ", " + apply_memory_from_args(args, loaded, runtime, *vae_size(loaded)).describe()
    print(f"model {loaded.name} ({loaded.hash}) on {loaded.runtime.describe()}{memory}, "
          f"loaded in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return loaded


def _save(outdir: Path, image, infotext: str, seed: int, prompt: str, prefix: str = "") -> None:
    from t2i.metadata import write_png
    from t2i.outputs import next_image_path

    path = next_image_path(outdir, seed, prompt)
    print(write_png(image, path.with_name(prefix + path.name), infotext))


def _input_image(args):
    from t2i.interfaces.cli.images import _open_image

    return None if args.image is None else [_open_image(args.image)]


# ---------------------------------------------------------------------------- commands


def _add_script_arguments(p, name: str, options: type, run, params: type | None = None) -> None:
    """What every script command takes after its positionals, in this order: the shared flags
    (model, output, ...), the script's own options, the generation parameters (`params` without
    its prompt; default: txt2img's, with img2img's through --image) and styles."""
    from t2i.interfaces.cli.images import _common

    _common(p, name)
    add_cli_arguments(p, options)
    if params is None:
        _add_generation_arguments(p)
    else:
        add_cli_arguments(p, params, skip=("prompt",))
    add_style_arguments(p)
    p.set_defaults(run=run)


def add_script_commands(sub) -> None:
    from t2i.pipelines.img2img import Img2ImgParams
    from t2i.pipelines.loopback import LoopbackOptions
    from t2i.pipelines.prompt_matrix import PromptMatrixOptions
    from t2i.pipelines.xyz_plot import XYZOptions

    p = sub.add_parser("xyz", help="X/Y/Z plot: a labelled grid over up to three parameters",
                       description="One image per combination of the --x, --y and --z values, in a grid with "
                                   "labelled axes. Example: t2i xyz 'a red circle' --x 'Steps: 5,10,20' "
                                   "--y 'Sampler: Euler a, DDIM'. Values: comma-separated (CSV quotes for "
                                   "commas), ranges 1-5, 1-10 (+2), 10-20 [3].")
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _add_script_arguments(p, "xyz", XYZOptions, _run_xyz)

    p = sub.add_parser("prompt-matrix", help="every combination of a prompt's |-separated parts, in a grid",
                       description="'a circle|red|small' makes 'a circle', 'a circle, red', 'a circle, small' and "
                                   "'a circle, red, small', in a grid labelled with the parts.")
    p.add_argument("prompt", help="the prompt, parts separated by |")
    _add_script_arguments(p, "prompt-matrix", PromptMatrixOptions, _run_prompt_matrix)

    p = sub.add_parser("loopback", help="img2img repeated, each loop on the previous output",
                       description="Run img2img --loops times, feeding each output back in; the denoising "
                                   "strength changes by --denoising-change-factor after each loop (or goes to "
                                   "--final-denoising-strength). Saves every loop's image and a strip of them.")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _add_script_arguments(p, "loopback", LoopbackOptions, _run_loopback, params=Img2ImgParams)


def _run_xyz(args) -> None:
    from t2i.pipelines.params import from_cli, validate
    from t2i.pipelines.xyz_axes import parse_axis
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    options = from_cli(XYZOptions, args)
    params = _generation_params(args)
    style_names, styles = cli_styles(args)
    validate(options)
    validate(params)
    for spec in (options.x, options.y, options.z):  # bad axes fail before the model loads
        parse_axis(spec, type(params))
    images = _input_image(args)
    loaded = _load(args)
    result = xyz_plot(loaded, params, options, images=images, styles=styles, style_names=style_names,
                      load_checkpoint=lambda path: _load(args, path, loaded.runtime),
                      progress=lambda done, total: print(f"cell {done}/{total}", file=sys.stderr))
    first = result.cells[0]
    _save(args.outdir, result.grid, result.infotext, first.seeds[0], first.params.prompt, "xyz_grid-")
    nz = len(result.sub_grids)
    if options.include_sub_grids and nz > 1:
        per_z = len(result.cells) // nz
        for iz, (grid, info) in enumerate(zip(result.sub_grids, result.sub_grid_infotexts)):
            cell = result.cells[iz * per_z]
            _save(args.outdir, grid, info, cell.seeds[0], cell.params.prompt, "xyz_grid-")
    if options.include_sub_images:
        for cell, image in zip(result.cells, result.cell_images):
            _save(args.outdir, image, cell.infotexts[0], cell.seeds[0], cell.params.prompt)


def _run_prompt_matrix(args) -> None:
    from t2i.pipelines.params import from_cli
    from t2i.pipelines.prompt_matrix import PromptMatrixOptions, prompt_matrix

    options = from_cli(PromptMatrixOptions, args)
    params = _generation_params(args)
    style_names, styles = cli_styles(args)
    images = _input_image(args)
    loaded = _load(args)
    result = prompt_matrix(loaded, params, options, images=images, styles=styles, style_names=style_names)
    first = result.results[0]
    _save(args.outdir, result.grid, result.infotext, first.seeds[0], first.params.prompt, "prompt_matrix-")
    for run in result.results:
        _save(args.outdir, run.images[0], run.infotexts[0], run.seeds[0], run.params.prompt)
    print(f"{len(result.prompts)} prompts", file=sys.stderr)


def _run_loopback(args) -> None:
    from t2i.interfaces.cli.images import _open_image
    from t2i.pipelines.img2img import Img2ImgParams
    from t2i.pipelines.loopback import LoopbackOptions, check_options, loopback
    from t2i.pipelines.params import from_cli, validate

    options = from_cli(LoopbackOptions, args)
    check_options(options)
    params = apply_cli_styles(args, from_cli(Img2ImgParams, args, prompt=args.prompt))
    validate(params)
    image = _open_image(args.image)
    loaded = _load(args)
    result = loopback(loaded, params, image, options)
    for frame, info, seed in zip(result.images, result.infotexts, result.seeds):
        _save(args.outdir, frame, info, seed, params.prompt)
    if len(result.images) > 1:
        _save(args.outdir, result.grid, result.infotexts[0], result.seeds[0], params.prompt, "loopback-")


# ---------------------------------------------------------------------------- batch img2img


def add_batch_arguments(p) -> None:
    p.add_argument("--input-dir", type=Path, help="process every image of this folder (then give only the "
                   "prompt, no IMAGE); outputs are named after the inputs")
    p.add_argument("--mask-dir", type=Path, help="with --input-dir: inpaint each image with the mask of the "
                   "same name (or the folder's only mask)")


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


def run_img2img_batch(args) -> None:
    """`t2i img2img --input-dir IN [PROMPT]`: the one positional given is the prompt."""
    from t2i.pipelines.batch_folder import img2img_folder
    from t2i.pipelines.params import from_cli

    prompt = args.prompt
    if args.image is not None:
        if prompt:
            raise ValueError("with --input-dir give only the prompt, not an IMAGE")
        prompt = str(args.image)
    params = apply_cli_styles(args, from_cli(args.params_cls, args, prompt=prompt))
    for folder, what in ((args.input_dir, "--input-dir"), (args.mask_dir, "--mask-dir")):
        if folder is not None and not folder.is_dir():  # before the model loads
            raise FileNotFoundError(f"{what} {folder} is not a folder")
    loaded = _load(args, vae_size=lambda loaded: _largest_input_size(params, args.input_dir))
    report = img2img_folder(loaded, params, args.input_dir, args.outdir, mask_dir=args.mask_dir,
                            log=lambda line: print(line, file=sys.stderr))
    for path in report.written:
        print(path)
    print(f"{len(report.written)} image(s) written, {len(report.skipped)} file(s) skipped", file=sys.stderr)
