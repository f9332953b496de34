"""Outpainting: extend the canvas by N pixels on chosen sides and paint the new area (the web
UI's "poor man's outpainting": build a bigger canvas and a mask, then inpaint).

    result = outpaint(loaded, OutpaintParams(prompt="a field", pixels=64, directions="left,right"), image)

The new bands start as the image's edge rows/columns stretched outwards, and the default masked
content "fill" repaints them from the colours around them. The mask covers the new area plus
`mask_blur` pixels of the original, so the seam is repainted too. On an extended axis the canvas
grows to the next multiple of the model's VAE factor (the extra pixels go to the right / bottom
side, or the only side extended); the result has the canvas's size.
"""
from __future__ import annotations

from dataclasses import replace

from PIL import Image, ImageDraw

from t2i.pipelines.generation_params import DIRECTIONS, OutpaintParams
from t2i.pipelines.img2img import as_image_list
from t2i.pipelines.inpaint import inpaint_with_info
from t2i.pipelines.params import ParamError
from t2i.pipelines.progress import GenerationControl, ProgressCallback
from t2i.pipelines.txt2img import GenerationResult, StepCallback


def parse_directions(text: str) -> tuple[str, ...]:
    """'left, up' -> ('left', 'up'); ParamError for unknown or no sides."""
    sides = [s.strip().lower() for s in text.split(",") if s.strip()]
    unknown = [s for s in sides if s not in DIRECTIONS]
    if unknown or not sides:
        raise ParamError(f"directions must be a comma-separated subset of {', '.join(DIRECTIONS)}; got {text!r}")
    return tuple(d for d in DIRECTIONS if d in sides)


def extents(size: tuple[int, int], pixels: int, sides: tuple[str, ...], factor: int) -> dict[str, int]:
    """Pixels to add on each side, grown so an extended axis ends on a multiple of `factor`."""
    add = {side: pixels if side in sides else 0 for side in DIRECTIONS}
    for length, (first, last) in ((size[0], ("left", "right")), (size[1], ("up", "down"))):
        if add[first] or add[last]:
            short = -(length + add[first] + add[last]) % factor
            add[last if add[last] else first] += short
    return add


def extend_canvas(image: Image.Image, add: dict[str, int]) -> Image.Image:
    """The image on a bigger canvas, the new bands filled by stretching its edge pixels."""
    width, height = image.size
    left, top = add["left"], add["up"]
    canvas = Image.new("RGB", (width + left + add["right"], height + top + add["down"]))
    canvas.paste(image, (left, top))
    if left:
        canvas.paste(image.crop((0, 0, 1, height)).resize((left, height)), (0, top))
    if add["right"]:
        canvas.paste(image.crop((width - 1, 0, width, height)).resize((add["right"], height)), (left + width, top))
    full_width = canvas.width
    if top:  # after the side bands, so the corners continue them
        canvas.paste(canvas.crop((0, top, full_width, top + 1)).resize((full_width, top)), (0, 0))
    if add["down"]:
        row = top + height - 1
        canvas.paste(canvas.crop((0, row, full_width, row + 1)).resize((full_width, add["down"])), (0, top + height))
    return canvas


def outpaint_mask(size: tuple[int, int], add: dict[str, int], overlap: int) -> Image.Image:
    """White over the new area and `overlap` pixels into the image on each extended side."""
    width, height = size
    mask = Image.new("L", (width + add["left"] + add["right"], height + add["up"] + add["down"]), 255)
    keep = (
        add["left"] + (overlap if add["left"] else 0),
        add["up"] + (overlap if add["up"] else 0),
        add["left"] + width - (overlap if add["right"] else 0),
        add["up"] + height - (overlap if add["down"] else 0),
    )
    if keep[2] > keep[0] and keep[3] > keep[1]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    return mask


def outpaint(loaded, params: OutpaintParams, images, callback: StepCallback | None = None, *,
             progress: ProgressCallback | None = None, control: GenerationControl | None = None) -> GenerationResult:
    """Extend `images` (one PIL image or a list of same-sized images) and paint the new area.
    `progress` and `control`: per-step progress events and interrupt / skip (t2i.pipelines.progress)."""
    images = [im.convert("RGB") for im in as_image_list(images)]
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"outpainting a list needs images of one size, got {sorted(sizes)}")
    sides = parse_directions(params.directions)
    add = extents(images[0].size, params.pixels, sides, loaded.model.vae_scale_factor)
    canvases = [extend_canvas(im, add) for im in images]
    mask = outpaint_mask(images[0].size, add, params.mask_blur)
    if params.inpainting_mask_invert:
        raise ParamError("outpainting makes its own mask (the new area); inverting it would repaint the image "
                         "and keep the empty bands: leave inpainting_mask_invert off")
    params = replace(params, directions=",".join(sides))
    info = {"Outpaint pixels": params.pixels, "Outpaint directions": params.directions}
    return inpaint_with_info(loaded, params, canvases, mask, callback, extra_info=info, progress=progress,
                             control=control)
