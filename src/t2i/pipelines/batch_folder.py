"""Batch img2img: every image of a folder through img2img (or inpainting, with a mask folder), the
web UI's img2img "Batch" tab.

    report = img2img_folder(loaded, Img2ImgParams(prompt="a blue square", seed=1), "in/", "out/")

Files are taken in name order; what is not an image is skipped with a warning. Width and height
default to each input's own size. Outputs are PNGs named after their input: `photo.jpg` gives
`photo.png`, further images of the same input (batch size / count > 1) `photo-1.png`, ...; a name
already taken gets the next free number, so nothing is overwritten.

With a mask folder, each image is inpainted with the mask of the same stem (`photo.png` for
`photo.jpg`), or with the folder's only mask if it holds just one; an image without a mask is
skipped with a warning. Img2ImgParams are then taken as InpaintParams with default mask settings.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from t2i.metadata import write_png
from t2i.pipelines.inpaint import InpaintParams
from t2i.pipelines.params import ParamError
from t2i.pipelines.schema import validate_strict as validate
from t2i.pipelines.scripting import check_params, run_pipeline
from t2i.pipelines.txt2img import StepCallback


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def _open(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def _files(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file())


def free_output_path(folder: Path, stem: str, taken: set[Path]) -> Path:
    """`stem.png`, else `stem-1.png`, `stem-2.png`, ...: the first name neither on disk nor in `taken`."""
    number = 0
    while True:
        path = folder / (f"{stem}.png" if number == 0 else f"{stem}-{number}.png")
        if path not in taken and not path.exists():
            return path
        number += 1


def as_inpaint_params(params):
    """Inpaint params with the same values (mask settings at their defaults for Img2ImgParams)."""
    if isinstance(params, InpaintParams):
        return params
    return InpaintParams(**{f.name: getattr(params, f.name) for f in dataclasses.fields(params)})


class _MaskFinder:
    def __init__(self, folder: Path):
        self.masks = [p for p in _files(folder, "mask folder") if _open(p) is not None]
        if not self.masks:
            raise FileNotFoundError(f"mask folder {folder} holds no images")

    def find(self, image_path: Path) -> Path | None:
        if len(self.masks) == 1:
            return self.masks[0]
        return next((m for m in self.masks if m.stem == image_path.stem), None)


def img2img_folder(loaded, params, input_dir: str | Path, output_dir: str | Path, *, mask_dir: str | Path | None = None,
                   callback: StepCallback | None = None, log: Callable[[str], None] | None = None) -> BatchReport:
    """Process every image of `input_dir` into `output_dir`; `log` gets a line per skipped file."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = _files(input_dir, "input folder")
    masks = _MaskFinder(Path(mask_dir)) if mask_dir is not None else None
    if masks is not None:
        params = as_inpaint_params(params)
    validate(params)
    output_dir.mkdir(parents=True, exist_ok=True)
    report, taken, checked = BatchReport(), set(), False

    def skip(path: Path, why: str) -> None:
        report.skipped.append((path, why))
        if log:
            log(f"warning: skipping {path}: {why}")

    for path in files:
        image = _open(path)
        if image is None:
            skip(path, "not an image")
            continue
        mask = None
        if masks is not None:
            mask_path = masks.find(path)
            if mask_path is None:
                skip(path, f"no mask named {path.stem}.* in {mask_dir}")
                continue
            mask = _open(mask_path)
        if not checked:  # bad params fail once, before any work, instead of once per image
            check_params(loaded, params, [image])
            checked = True
        try:
            check_params(loaded, params, [image])  # this input's size (a watermark needs 256 px, ...)
            # run_pipeline finishes the images: safety checker, face restoration, watermark
            result = run_pipeline(loaded, params, [image], None if mask is None else [mask], callback)
        except ParamError as err:  # an input this image's run cannot take (an empty mask, ...)
            skip(path, str(err))
            continue
        for out, info in zip(result.images, result.infotexts):
            target = free_output_path(output_dir, path.stem, taken)
            taken.add(target)
            report.written.append(write_png(out, target, info))
    return report
