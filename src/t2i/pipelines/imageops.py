"""Image helpers of the image-to-image pipelines: the web UI's resize modes, masks, the "fill"
masked-content mode, the only-masked crop box, and PIL <-> latent conversion.

Masks are single-channel PIL images, white (255) = repaint, black (0) = keep.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps

from t2i.pipelines.generation_params import RESIZE_MODES  # noqa: F401  (re-exported: the schema owns the names)

_LANCZOS = Image.Resampling.LANCZOS


# ---------------------------------------------------------------------------- resize modes


def resize_image(image: Image.Image, mode: str, width: int, height: int,
                 resample: Image.Resampling = _LANCZOS) -> Image.Image:
    """Resize to width x height the web UI's way (Lanczos unless `resample` says otherwise).

    Just resize: stretch to the size, aspect ignored. Crop and resize: scale to cover the size,
    centred, overflow cropped. Resize and fill: scale to fit inside, centred, the empty bands
    filled by stretching the image's outermost rows (or columns) outwards.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    if image.size == (width, height):
        return image.copy()
    if mode == "Just resize":
        return image.resize((width, height), resample)
    src_w, src_h = image.size
    cover = mode == "Crop and resize"
    # scale so that the image covers (crop) or fits inside (fill) the target
    scale = max(width / src_w, height / src_h) if cover else min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    resized = image.resize((new_w, new_h), resample)
    canvas = Image.new(image.mode, (width, height))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    canvas.paste(resized, (left, top))
    if cover:
        return canvas
    if top > 0:  # bands above and below
        canvas.paste(resized.crop((0, 0, new_w, 1)).resize((new_w, top)), (left, 0))
        bottom = height - top - new_h
        if bottom > 0:
            canvas.paste(resized.crop((0, new_h - 1, new_w, new_h)).resize((new_w, bottom)), (left, top + new_h))
    if left > 0:  # bands left and right
        canvas.paste(resized.crop((0, 0, 1, new_h)).resize((left, new_h)), (0, top))
        right = width - left - new_w
        if right > 0:
            canvas.paste(resized.crop((new_w - 1, 0, new_w, new_h)).resize((right, new_h)), (left + new_w, top))
    return canvas


def snap_size(value: int, factor: int) -> int:
    """`value` rounded down to a multiple of `factor` (at least `factor`)."""
    return max(factor, value // factor * factor)


# ---------------------------------------------------------------------------- masks


def prepare_mask(mask: Image.Image, size: tuple[int, int], *, invert: bool = False, blur: int = 0) -> Image.Image:
    """The mask as 8-bit L, inverted and Gaussian-blurred (sigma = `blur` pixels) as asked.

    Transparency counts as black (keep): an RGBA mask's grey value is multiplied by its alpha,
    so a white brush stroke on a transparent layer works as well as white on black."""
    if mask.size != size:
        raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}: "
                         f"give a mask of the image's size")
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        rgba = mask.convert("RGBA")
        grey = np.asarray(rgba.convert("L"), dtype=np.uint16) * np.asarray(rgba.getchannel("A"), dtype=np.uint16)
        mask = Image.fromarray((grey // 255).astype(np.uint8), "L")
    else:
        mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def overlay_mask(mask: Image.Image) -> Image.Image:
    """How much of the generated image to show when pasting over the original: the blurred mask
    doubled and clipped, as the web UI does, so the whole inside of the blur is new pixels and
    only its outer half blends; pixels the mask leaves at 0 stay the original's, exactly."""
    return mask.point(lambda v: min(255, 2 * v))


def mask_box(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2, y2) of the mask's non-zero pixels grown by `padding` on each
    side and clipped to the image; None for an empty mask."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    x1, y1, x2, y2 = bbox
    return max(0, x1 - padding), max(0, y1 - padding), min(mask.width, x2 + padding), min(mask.height, y2 + padding)


def expand_to_aspect(box: tuple[int, int, int, int], width: int, height: int,
                     image_w: int, image_h: int) -> tuple[int, int, int, int]:
    """Grow `box` around its centre towards the aspect ratio width:height, shifted to stay inside
    the image and clipped to it, so that scaling the crop to width x height distorts little."""
    x1, y1, x2, y2 = box
    box_w, box_h = x2 - x1, y2 - y1
    if box_w / box_h < width / height:
        x1, x2 = _grow(x1, x2, round(box_h * width / height), image_w)
    else:
        y1, y2 = _grow(y1, y2, round(box_w * height / width), image_h)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    size = min(size, limit)
    lo = lo - (size - (hi - lo)) // 2
    lo = min(max(lo, 0), limit - size)
    return lo, lo + size


def latent_mask(mask: Image.Image, factor: int) -> torch.Tensor:
    """(1, 1, H/f, W/f) repaint mask at latent resolution: the mask averaged over each latent
    pixel's f x f patch, then rounded to 0/1 as the web UI does."""
    pixels = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    return F.avg_pool2d(pixels, factor).round()


def hard_mask(mask: Image.Image) -> torch.Tensor:
    """(1, 1, H, W) 0/1 repaint mask at pixel resolution."""
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None].round()


# ---------------------------------------------------------------------------- fill


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The "fill" masked-content mode: the area to repaint painted with the colours around it.

    Push-pull interpolation (Gortler et al. 1996, "The Lumigraph", section 3.4): average the
    known pixels down a pyramid, then fill each level's unknown pixels from the coarser level
    upsampled, so holes get a smooth blend of their surroundings' colours."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    known = 1.0 - hard_mask(mask)
    if known.sum() == 0:  # nothing to take colours from: mid grey
        filled = torch.full_like(pixels, 0.5)
    else:
        filled = _push_pull(pixels, known)
    out = (filled[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(out, "RGB")


def _push_pull(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if bool(w.min() > 0) or min(x.shape[-2:]) <= 1:
        return x
    weight = F.avg_pool2d(w, 2, ceil_mode=True)
    coarse = F.avg_pool2d(x * w, 2, ceil_mode=True) / weight.clamp_min(1e-8)  # mean of known pixels
    coarse = _push_pull(coarse, (weight > 0).float())
    up = F.interpolate(coarse, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return w * x + (1.0 - w) * up


# ---------------------------------------------------------------------------- tensors and latents


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1] from same-sized RGB images."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """RGB images from (B, 3, H, W) in [-1, 1]."""
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def _vae_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    param = next(model.vae.parameters())
    return param.device, param.dtype


@torch.no_grad()
def encode(model, images: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) float32 scaled latents of (B, 3, H, W) images in [-1, 1].

    The posterior's mode, not a sample: deterministic, so an image's latents never depend on a
    seed or on the other images of its batch."""
    device, dtype = _vae_device_dtype(model)
    return model.encode_images(images.to(device, dtype), sample=False).float()


@torch.no_grad()
def decode(model, latents: torch.Tensor) -> list[Image.Image]:
    device, dtype = _vae_device_dtype(model)
    return tensor_to_images(model.decode_latents(latents.to(device, dtype)))
