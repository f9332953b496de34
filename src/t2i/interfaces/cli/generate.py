"""`t2i generate` (txt2img) and `t2i png-info`."""
from __future__ import annotations

import sys
from pathlib import Path

from t2i.errors import ParamError
from t2i.interfaces.cli.common import (OutputWriter, add_compvis_aliases, add_load_arguments, add_output_arguments,
                                       add_styles_file_argument, imply_enable_hr, make_session, note, seed_summary)
from t2i.interfaces.cli.processes import ProcessShare, image_numbers, join, wait_for_everyone
from t2i.outputs import first_free_counter
from t2i.pipelines.generation_params import Txt2ImgParams
from t2i.pipelines.params import add_cli_arguments, from_cli
from t2i.pipelines.session_types import Output


def add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt (txt2img)",
                       description="Generate images from a text prompt. Without --model (or with --model default), "
                                   "the bundled model (trained on the built-in `shapes` dataset) is used.")
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (or use --from-file)")
    p.add_argument("--from-file", type=Path, help="a text file with one prompt per line (under `accelerate launch "
                   "... -m t2i.interfaces.cli generate`, the processes share the prompts out)")
    p.add_argument("--grid", action="store_true", help="also save a grid of each prompt's images")
    p.add_argument("--infotext", type=Path, metavar="FILE",
                   help="reproduce an image: every parameter (prompt included) from the infotext of FILE (a "
                        "PNG/JPEG/WEBP made by t2i or the web UI, or a text file); flags given override it")
    add_output_arguments(p, "txt2img")
    add_cli_arguments(p, Txt2ImgParams, skip=("prompt",))
    add_compvis_aliases(p)
    add_styles_file_argument(p)
    add_load_arguments(p)
    p.set_defaults(run=run_generate)


def read_prompts(args) -> list[str]:
    if args.from_file is not None:
        if args.prompt is not None:
            raise ParamError("give either a prompt or --from-file, not both")
        try:
            lines = args.from_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            hint = "; save it as UTF-8 text" if isinstance(err, UnicodeDecodeError) else ""
            raise ParamError(f"cannot read prompts from {args.from_file}: {err}{hint}") from err
        prompts = [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise ParamError(f"{args.from_file} holds no prompts (one per line expected)")
        for number, line in enumerate(lines, 1):
            if line.strip().startswith("--"):  # the web UI script's per-line options: not read here
                raise ParamError(f"{args.from_file} line {number} holds options ({line.strip()[:40]!r}): --from-file "
                                 f"reads one plain prompt per line; give options such as --steps as flags of "
                                 f"`t2i generate`, or use --infotext FILE per image")
        return prompts
    return [args.prompt if args.prompt is not None else ""]


def _infotext_settings(args):
    """The parameters in the --infotext file (None without it); notes the keys t2i cannot apply."""
    if args.infotext is None:
        return None
    from t2i.pipelines.infotext import infotext_from_file, read_settings

    settings = read_settings(infotext_from_file(args.infotext))
    if settings.ignored:
        note(f"note: {args.infotext} sets {', '.join(settings.ignored)}, which t2i does not apply")
    return settings


def run_generate(args) -> None:
    from t2i.outputs import make_grid
    from t2i.pipelines.infotext import model_mismatch
    from t2i.pipelines.postprocess import finish_grid
    from t2i.pipelines.schema import validate_strict

    settings = _infotext_settings(args)  # None without --infotext
    base = settings.params if settings is not None else None
    reuse_prompt = base is not None and args.prompt is None and args.from_file is None
    prompts = [base.prompt] if reuse_prompt else read_prompts(args)
    imply_enable_hr(args)  # --hr-scale and friends switch the hires fix on
    requests = [from_cli(Txt2ImgParams, args, base, prompt=prompt) for prompt in prompts]
    for params in requests:
        validate_strict(params)  # every prompt's params fail before the model loads
    writer = OutputWriter(args.outdir, args.image_format)
    share = ProcessShare.from_env()  # `accelerate launch`: this process takes every N-th prompt
    mine = share.mine(len(requests))
    join(share, args)
    if share.several:  # numbered as one process would number them (processes/image_numbers)
        first_counter = first_free_counter(args.outdir)
        wait_for_everyone(share)  # every process has read the folder before any writes to it
        images = requests[0].batch_size * requests[0].n_iter
        per_prompt = (0 if args.skip_save else images) + (1 if args.grid and images > 1 else 0)
    if not mine:
        return
    session = make_session(args)
    entry = session.model()
    warning = model_mismatch(settings, entry.loaded) if settings is not None else None
    if warning:
        note(warning)
    from t2i.interfaces.cli.progress import ProgressBar

    with ProgressBar() as bar:  # per-step tqdm bar with the run's ETA, on a terminal
        for index in mine:
            params = requests[index]
            if share.several:
                writer.numbers = image_numbers(first_counter, index, per_prompt)
            result = session.run(params, progress=bar, on_output=None if args.skip_save else writer)
            bar.close()
            if args.grid and len(result.images) > 1:
                first = result.outputs[0]
                grid = finish_grid(params, make_grid(result.images))  # finished images; the grid gets the watermark
                writer(Output(grid, first.infotext, first.seed, first.prompt, "grid-", "grid"))
            note(seed_summary(result, params.prompt))


def add_png_info_command(sub) -> None:
    p = sub.add_parser("png-info", help="print the generation parameters stored in an image")
    p.add_argument("file", type=Path)
    p.set_defaults(run=run_png_info)


def run_png_info(args) -> None:
    from PIL import UnidentifiedImageError

    from t2i.metadata import printable_infotext, read_infotext

    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file} does not exist")
    try:
        text = read_infotext(args.file)
    except (OSError, UnidentifiedImageError) as err:
        raise ParamError(f"{args.file} is not a readable image: {err}") from err
    if text is None:
        raise ParamError(f"{args.file} holds no generation parameters")
    sys.stdout.write(printable_infotext(text) + "\n")
