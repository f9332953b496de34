"""What the generating commands share: the load flags (from LoadSettings, the schema), the
output flags, one Session per process, and writing a run's outputs as they come.

A command is: parse -> `Session.run(params, on_output=writer)` -> each image written the moment it
is done (so Ctrl-C keeps the finished ones), with the model's one-line summary on stderr.
This module imports no torch: `t2i --help` and argument errors stay fast.
"""
from __future__ import annotations

import sys
from pathlib import Path

from t2i.errors import ParamError
from t2i.metadata import image_format, write_image
from t2i.outputs import image_path, next_image_path
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.params import add_cli_arguments, from_cli

IMAGE_FORMATS = ("png", "jpg", "webp")
# load flags a command takes: the generating commands all but first_stage; sample and upscale fewer
DIFFUSION_SKIP = ("first_stage",)


def write_line(text: str, stream=None) -> None:
    """`text` and its newline in one write: processes that share a pipe (`accelerate launch`, which
    makes the streams unbuffered) then never splice one's line into another's, as print's two
    writes (text, then the newline) can."""
    stream = stream or sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def note(line: str) -> None:
    write_line(line, sys.stderr)


def add_load_arguments(p, skip: tuple[str, ...] = DIFFUSION_SKIP) -> None:
    """--model, --vae, --lora-dir, --embeddings-dir, --precision, --device, --threads and the memory
    and speed flags, each declared once in LoadSettings."""
    add_cli_arguments(p.add_argument_group("model, device, memory and speed"), LoadSettings, skip=skip)


def add_output_arguments(p, command: str) -> None:
    p.add_argument("--outdir", type=Path, default=Path(f"outputs/{command}"),
                   help="where images go (default: %(default)s)")
    p.add_argument("--format", dest="image_format", choices=IMAGE_FORMATS, default="png",
                   help="image format; the infotext goes in a PNG text chunk or the JPEG/WEBP EXIF UserComment "
                        "(default: %(default)s)")


def load_settings(args, **overrides) -> LoadSettings:
    return from_cli(LoadSettings, args, **overrides)


def make_session(args, **overrides):
    """The process's Session, with the load settings of the flags; torch loads here."""
    from t2i.checkpoints.prefetch import prefetch
    from t2i.checkpoints.preload import start_preload
    from t2i.pipelines.schema import validate_strict

    settings = load_settings(args, **overrides)
    validate_strict(settings)  # --threads -1, --precision typo, ...: one clear line before torch loads
    settings.tiny_decoder  # noqa: B018  (a bad --vae-decoder fails before loading anything)
    prefetch(settings.model_path, settings.vae)  # the disk reads the weights while torch imports
    # and another thread casts a single file's weights into their final dtype meanwhile
    start_preload(settings.model_path, settings.precision, settings.device, settings.threads)
    from t2i.pipelines.session import Session

    return Session(settings, styles_file=getattr(args, "styles_file", None), notes=note)


class OutputWriter:
    """`on_output` for Session.run: writes each output as soon as it is done and prints its path."""

    def __init__(self, outdir: Path, fmt: str = "png"):
        self.outdir = Path(outdir)
        if self.outdir.exists() and not self.outdir.is_dir():  # before any work, not after the first image
            raise ParamError(f"--outdir {self.outdir} is a file, not a folder; give a folder for the images")
        self.ext = image_format(fmt)
        self.written: list[Path] = []
        # the counters of the next outputs, when the caller numbers them (several processes
        # share one folder: t2i.interfaces.cli.processes); None: the next free counter
        self.numbers = None

    def __call__(self, output) -> None:
        seed = output.seed if output.seed is not None else 0
        if self.numbers is not None:
            self.outdir.mkdir(parents=True, exist_ok=True)
            path = image_path(self.outdir, next(self.numbers), seed, output.prompt, self.ext)
        else:
            path = next_image_path(self.outdir, seed, output.prompt, self.ext)
        path = path.with_name(output.prefix + path.name)
        write_line(str(write_image(output.image, path, output.infotext)))
        self.written.append(path)


def open_image(path: Path):
    """A PIL image read fully from `path`; clear errors for missing or unreadable files."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ParamError(f"cannot read image {path}: {err}") from err


def seed_summary(result, prompt: str) -> str:
    seeds = result.seeds
    if not seeds:
        return f"no images for {prompt!r} (interrupted)"
    span = f"{seeds[0]}{'..' + str(seeds[-1]) if len(seeds) > 1 else ''}"
    return f"seed {span}: {len(seeds)} image(s) for {prompt!r}"


# Hires flags of `t2i generate` that switch the hires fix on by being given.
HIRES_FLAGS = ("hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y")


def imply_enable_hr(args) -> None:
    """`t2i generate --hr-scale 2` means hires fix on, unless --no-enable-hr says otherwise."""
    if getattr(args, "enable_hr", None) is None and any(getattr(args, f, None) is not None for f in HIRES_FLAGS):
        args.enable_hr = True


def add_styles_file_argument(p) -> None:
    p.add_argument("--styles-file", type=Path, help="styles CSV (name,prompt,negative_prompt; default: styles.csv "
                   "in the current directory, if there is one)")


def add_compvis_aliases(p) -> None:
    """The CompVis scripts' spellings where they differ from t2i's (txt2img.py's flags)."""
    group = p.add_argument_group("CompVis script spellings")
    group.add_argument("--n_samples", dest="batch_size", type=int, default=None, metavar="N",
                       help="= --batch-size (images per batch)")
    group.add_argument("--n_iter", dest="n_iter", type=int, default=None, metavar="N", help="= --n-iter (batches)")
    group.add_argument("--fixed_code", dest="fixed_code", action="store_const", const=True, default=None,
                       help="= --fixed-code (one starting latent for every image of the run)")
    group.add_argument("--skip_grid", dest="grid", action="store_false",
                       help="no grid (t2i's default; the CompVis script makes one unless told not to)")
    group.add_argument("--skip_save", dest="skip_save", action="store_true",
                       help="do not save the individual images (only the grid, with --grid)")
