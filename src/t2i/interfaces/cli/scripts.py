"""`t2i xyz`, `t2i prompt-matrix` and `t2i loopback`: the web UI's scripts on the command line,
run by the Session like every other command (the memory and speed flags apply to them too).
Flags come from the script options and the generation params (the schema)."""
from __future__ import annotations

from pathlib import Path

from t2i.errors import ParamError
from t2i.interfaces.cli.common import (OutputWriter, add_load_arguments, add_output_arguments,
                                       add_styles_file_argument, imply_enable_hr, make_session, open_image)
from t2i.pipelines.generation_params import Img2ImgParams, Txt2ImgParams
from t2i.pipelines.params import add_cli_arguments, flag_of, from_cli
from t2i.pipelines.script_options import (Img2ImgAltOptions, LoopbackOptions, PromptMatrixOptions, SDUpscaleOptions,
                                          XYZOptions)

# scripts that start from one image and run img2img (their flags: Img2ImgParams)
IMAGE_SCRIPTS = (LoopbackOptions, SDUpscaleOptions, Img2ImgAltOptions)


def _field_names(cls) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def _add_generation_arguments(p) -> None:
    """txt2img's flags, plus img2img's own ones (used with --image)."""
    add_cli_arguments(p, Txt2ImgParams, skip=("prompt",))
    add_cli_arguments(p, Img2ImgParams, skip=tuple(_field_names(Txt2ImgParams)))
    p.add_argument("--image", type=Path, help="start from this image (img2img; then --denoising-strength is "
                   "img2img's) instead of from text")


def _generation_params(args):
    """Txt2ImgParams, or Img2ImgParams with --image; a flag of the other pipeline is an error."""
    import dataclasses

    txt, img = _field_names(Txt2ImgParams), _field_names(Img2ImgParams)
    cls, other, other_cls = (Txt2ImgParams, img - txt, Img2ImgParams) if args.image is None else \
        (Img2ImgParams, txt - img, Txt2ImgParams)
    given = sorted(n for n in other if getattr(args, n, None) is not None)
    if given:
        field = next(f for f in dataclasses.fields(other_cls) if f.name == given[0])
        need = "needs --image" if args.image is None else "is for text-to-image runs, not with --image"
        raise ParamError(f"{flag_of(field)} {need}")
    if args.image is None:
        imply_enable_hr(args)
    return from_cli(cls, args, prompt=args.prompt)


def _add_script_arguments(p, name: str, options: type, run, params: type | None = None) -> None:
    """What every script command takes after its positionals: the output flags, the script's own
    options, the generation parameters (default: txt2img's, with img2img's through --image), the
    styles file and the load flags."""
    add_output_arguments(p, name)
    add_cli_arguments(p, options)
    if params is None:
        _add_generation_arguments(p)
    else:
        add_cli_arguments(p, params, skip=("prompt",))
    add_styles_file_argument(p)
    add_load_arguments(p)
    p.set_defaults(run=run, options_cls=options)


def add_xyz_command(sub) -> None:
    p = sub.add_parser("xyz", help="X/Y/Z plot: a labelled grid over up to three parameters",
                       description="One image per combination of the --x, --y and --z values, in a grid with "
                                   "labelled axes. Example: t2i xyz 'a red circle' --x 'Steps: 5,10,20' "
                                   "--y 'Sampler: Euler a, DDIM'. Values: comma-separated (CSV quotes for "
                                   "commas), ranges 1-5, 1-10 (+2), 10-20 [3].")
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _add_script_arguments(p, "xyz", XYZOptions, run_script)


def add_prompt_matrix_command(sub) -> None:
    p = sub.add_parser("prompt-matrix", help="every combination of a prompt's |-separated parts, in a grid",
                       description="'a circle|red|small' makes 'a circle', 'a circle, red', 'a circle, small' and "
                                   "'a circle, red, small', in a grid labelled with the parts.")
    p.add_argument("prompt", help="the prompt, parts separated by |")
    _add_script_arguments(p, "prompt-matrix", PromptMatrixOptions, run_script)


def add_loopback_command(sub) -> None:
    p = sub.add_parser("loopback", help="img2img repeated, each loop on the previous output",
                       description="Run img2img --loops times, feeding each output back in; the denoising "
                                   "strength changes by --denoising-change-factor after each loop (or goes to "
                                   "--final-denoising-strength). Saves every loop's image and a strip of them.")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _add_script_arguments(p, "loopback", LoopbackOptions, run_script, params=Img2ImgParams)


def add_sd_upscale_command(sub) -> None:
    p = sub.add_parser("sd-upscale", help="upscale, then redraw the image with img2img tile by tile",
                       description="The web UI's SD upscale: IMAGE upscaled by --scale-factor with --sd-upscaler "
                                   "(Lanczos, Nearest or an upscaler file in --upscaler-dir), then img2img over "
                                   "tiles of --width x --height (default: the model's resolution) overlapping by "
                                   "--tile-overlap, blended. Use a low --denoising-strength: every tile is drawn with the "
                                   "whole prompt, so higher strengths draw the prompt's objects into tiles (on the "
                                   "bundled model 0.1 keeps every shapes attribute, 0.2 often adds objects).")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the prompt")
    _add_script_arguments(p, "sd-upscale", SDUpscaleOptions, run_script, params=Img2ImgParams)


def add_img2img_alt_command(sub) -> None:
    p = sub.add_parser("img2img-alt", help="img2img alternative test: invert the image to noise, sample a new "
                                           "prompt from it",
                       description="The web UI's img2img alternative test: IMAGE inverted to noise with reverse "
                                   "Euler under --original-prompt, then sampled (Euler) with PROMPT: the layout "
                                   "stays, what the prompts differ in changes. With the same prompt and --cfg-scale "
                                   "1 (= --decode-cfg-scale) the image comes back close to the input.")
    p.add_argument("image", type=Path)
    p.add_argument("prompt", nargs="?", default="", help="the new prompt")
    _add_script_arguments(p, "img2img-alt", Img2ImgAltOptions, run_script, params=Img2ImgParams)


def run_script(args) -> None:
    from t2i.pipelines.loopback import check_options
    from t2i.pipelines.schema import validate_strict
    from t2i.pipelines.xyz_axes import parse_axis

    options = from_cli(args.options_cls, args)
    validate_strict(options)
    if args.options_cls in IMAGE_SCRIPTS:
        if args.options_cls is LoopbackOptions:
            check_options(options)
        params = from_cli(Img2ImgParams, args, prompt=args.prompt)
    else:
        params = _generation_params(args)
    validate_strict(params)
    if isinstance(options, XYZOptions):
        for spec in (options.x, options.y, options.z):  # bad axes fail before the model loads
            parse_axis(spec, type(params))
    image = open_image(args.image) if args.image is not None else None
    writer = OutputWriter(args.outdir, args.image_format)
    make_session(args).run(params, images=image, script=options, on_output=writer)
