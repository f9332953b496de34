"""Inpainting: repaint the white area of a mask, the web UI's way.

    result = inpaint(loaded, InpaintParams(prompt="a red circle", seed=1), image, mask)

- The mask (white = repaint; transparency = keep) is inverted if asked, then blurred
  (`mask_blur`, a Gaussian sigma in pixels).
- Whole picture (default): image and mask are fit to width x height (default: the image's size)
  with the resize mode, and the result has that size.
- Only masked (`inpaint_full_res`): the mask's bounding box plus `inpaint_full_res_padding`,
  grown to the aspect of width x height (default: the model's resolution), is cropped, scaled to
  width x height, painted, scaled back and pasted into the original; the result has the
  original's size. Small areas get the model's full resolution this way.
- Masked content: "fill" paints the area with its surroundings' colours before encoding,
  "original" keeps the image, "latent noise" / "latent nothing" replace its latents by noise /
  zeros.
- Ordinary models keep the unmasked latents by blending at every step; 9-channel inpainting
  UNets (`unet.config.in_channels == 9`) see the mask and the masked image instead.
- Finally the original is pasted over the result through the doubled blurred mask (as the web
  UI does), so pixels outside the blurred mask are exactly the input's.
- Strength 0 returns the input (resized in whole-picture mode) without sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image

from t2i.pipelines.generation_params import InpaintParams
from t2i.pipelines.imageops import (
    expand_to_aspect,
    fill_masked,
    mask_box,
    overlay_mask,
    prepare_mask,
    resize_image,
)
from t2i.pipelines.img2img import (
    as_image_list,
    img2img_infotext,
    make_result,
    resolve_img2img_params,
    sample_images,
)
from t2i.pipelines.params import ParamError
from t2i.pipelines.progress import GenerationControl, ProgressCallback
from t2i.pipelines.txt2img import (
    MAX_SEED,
    GenerationResult,
    StepCallback,
    resolve_params,
)


@dataclass
class _Piece:
    """One input prepared for sampling, and how to put its result back."""

    init: Image.Image  # RGB at width x height, what sampling starts from
    mask: Image.Image  # L at width x height
    base: Image.Image  # what the result is pasted over (the original, or its resized version)
    overlay: Image.Image  # L at base's size: how much of the new image shows
    box: tuple[int, int, int, int] | None  # only masked: where the painted crop goes in base


def inpaint_infotext(params: InpaintParams) -> dict:
    only_masked = params.inpaint_full_res
    info = img2img_infotext(params)
    if only_masked:
        info["Resize mode"] = None  # not used: the crop is scaled to width x height
    return {
        **info,
        "Mask blur": params.mask_blur,
        "Mask mode": "Inpaint not masked" if params.inpainting_mask_invert else None,
        "Masked content": params.inpainting_fill,
        "Inpaint area": "Only masked" if only_masked else None,
        "Masked area padding": params.inpaint_full_res_padding if only_masked else None,
    }


def resolve_inpaint_params(params: InpaintParams, loaded, size: tuple[int, int]) -> InpaintParams:
    if params.inpaint_full_res:  # the crop is painted at the model's own size unless told otherwise
        resolution = loaded.model.config.resolution
        return resolve_params(replace(params, width=params.width or resolution,
                                      height=params.height or resolution), loaded)
    return resolve_img2img_params(params, loaded, size)


def _prepare(image: Image.Image, mask: Image.Image, params: InpaintParams, index: int) -> _Piece:
    original = image.convert("RGB")
    mask = prepare_mask(mask, original.size, invert=params.inpainting_mask_invert, blur=params.mask_blur)
    box = mask_box(mask, params.inpaint_full_res_padding)
    if box is None:
        raise ParamError(f"mask {index} is empty (all black{' after inverting' if params.inpainting_mask_invert else ''}): "
                         f"nothing to repaint; paint the area to repaint white")
    width, height = params.width, params.height
    if params.inpaint_full_res:
        box = expand_to_aspect(box, width, height, *original.size)
        # fit the crop inside width x height; `_finish` inverts this with "Crop and resize"
        init = resize_image(original.crop(box), "Resize and fill", width, height)
        crop_mask = resize_image(mask.crop(box), "Resize and fill", width, height)
        return _Piece(init, crop_mask, original, overlay_mask(mask), box)
    init = resize_image(original, params.resize_mode, width, height)
    mask = resize_image(mask, params.resize_mode, width, height)
    return _Piece(init, mask, init, overlay_mask(mask), None)


def _finish(painted: Image.Image, piece: _Piece) -> Image.Image:
    """Put the painted image back: scale and paste the crop (only masked), then show the base
    through the overlay mask's complement."""
    if piece.box is not None:
        x1, y1, x2, y2 = piece.box
        canvas = piece.base.copy()
        canvas.paste(resize_image(painted, "Crop and resize", x2 - x1, y2 - y1), (x1, y1))
        painted = canvas
    return Image.composite(painted, piece.base, piece.overlay)


def inpaint(loaded, params: InpaintParams, images, masks, callback: StepCallback | None = None, *,
            progress: ProgressCallback | None = None, control: GenerationControl | None = None) -> GenerationResult:
    """Repaint the masked area of `images` (one PIL image or a list); `masks` is one mask for
    every image or one per image. Run image i starts from images[i % len(images)]. `progress`
    and `control`: per-step progress events and interrupt / skip (t2i.pipelines.progress)."""
    return inpaint_with_info(loaded, params, images, masks, callback, progress=progress, control=control)


def inpaint_with_info(loaded, params: InpaintParams, images, masks, callback: StepCallback | None = None,
                      extra_info: dict | None = None, *, progress: ProgressCallback | None = None,
                      control: GenerationControl | None = None) -> GenerationResult:
    """`inpaint` with extra infotext keys (outpainting's)."""
    images = as_image_list(images)
    masks = as_image_list(masks, "mask")
    if len(masks) == 1:
        masks = masks * len(images)
    if len(masks) != len(images):
        raise ValueError(f"got {len(masks)} masks for {len(images)} images; give one mask, or one per image")
    params = resolve_inpaint_params(params, loaded, images[0].size)
    pieces = [_prepare(im, m, params, i) for i, (im, m) in enumerate(zip(images, masks))]
    inits = [p.init for p in pieces]
    if params.inpainting_fill == "fill" and params.denoising_strength > 0:
        inits = [fill_masked(p.init, p.mask) for p in pieces]
    latent_fill = params.inpainting_fill if params.inpainting_fill.startswith("latent") else "original"
    painted, seeds, subseeds = sample_images(loaded, params, inits, [p.mask for p in pieces], fill=latent_fill,
                                             callback=callback, progress=progress, control=control)
    # run image i goes back into pieces[i % len]; i comes from the seed (seed + i), since a
    # skipped batch leaves a gap in `painted`
    results = [_finish(im, pieces[(seed - params.seed) % (MAX_SEED + 1) % len(pieces)])
               for im, seed in zip(painted, seeds)]
    return make_result(loaded, params, results, seeds, subseeds, {**inpaint_infotext(params), **(extra_info or {})})
