"""Hires fix: the second half of a txt2img run with `enable_hr`, as the web UI does it.

The first pass samples at width x height, where the model composes well; its result is upscaled
(in latent space, or decoded and resized as an image) to the target size and refined by an
img2img pass with its own steps (`hr_second_pass_steps`, 0 = the first pass's) and
`denoising_strength`. The second pass's noise comes from the same seeds and variation seeds, at
the target size. The infotext keeps the first pass's `Size` and adds the Hires keys.

Imported by txt2img, so it imports nothing from it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from t2i.diffusion.noise import variation_noise
from t2i.diffusion.partial import (
    denoise_partial,
    is_inpainting_unet,
    repaint_all_conditioning,
)
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import noise_step_options
from t2i.pipelines.imageops import decode, encode, images_to_tensor, resize_image
from t2i.pipelines.params import ParamError

# Latent upscalers: the web UI's names -> (torch interpolation mode, antialias).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Image upscalers: the first pass is decoded, resized with this PIL filter and encoded again.
IMAGE_UPSCALERS = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
from t2i.pipelines.generation_params import HR_UPSCALERS  # noqa: E402  (the schema's names, checked below)

assert HR_UPSCALERS == (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)
MAX_HIRES_SIDE = 8192


def hires_size(params, factor: int) -> tuple[int, int]:
    """(width, height) of the second pass, each rounded down to a multiple of `factor`.

    hr_resize_x/y win over hr_scale; with one of them 0 the other side follows the first pass's
    aspect ratio; with both, the upscale covers that size and the overflow is cropped (centred).
    """
    x, y = params.hr_resize_x, params.hr_resize_y
    if x == 0 and y == 0:
        width, height = int(params.width * params.hr_scale), int(params.height * params.hr_scale)
    elif y == 0:
        width, height = x, round(x * params.height / params.width)
    elif x == 0:
        width, height = round(y * params.width / params.height), y
    else:
        width, height = x, y
    return max(factor, width // factor * factor), max(factor, height // factor * factor)


def check_hires(params, factor: int, loaded=None) -> None:
    """ParamError for hires settings that cannot run (the schema checks the ranges); an upscaler
    that is not built in must be a file in the upscaler folders of `loaded` (model_upscalers)."""
    if params.hr_upscaler not in HR_UPSCALERS:
        from t2i.pipelines.model_upscalers import library_of

        library = library_of(loaded) if loaded is not None else None
        files = library.names() if library is not None else {}
        if params.hr_upscaler not in files:
            folders = ", ".join(library.folders) if library is not None else "none"
            raise ParamError(f"hr_upscaler must be one of {', '.join(HR_UPSCALERS)} or an upscaler in the upscaler "
                             f"folders ({folders}: {', '.join(files) or 'none found'}); got {params.hr_upscaler!r}")
    width, height = hires_size(params, factor)
    if max(width, height) > MAX_HIRES_SIDE:
        raise ParamError(f"hires fix would make a {width}x{height} image; the limit is {MAX_HIRES_SIDE} a side: "
                         f"lower hr_scale or hr_resize_x/y")


def hires_infotext(params) -> dict:
    """The infotext keys of the hires pass (web UI names)."""
    resized = params.hr_resize_x > 0 or params.hr_resize_y > 0
    return {
        "Denoising strength": params.denoising_strength,
        "Hires upscale": None if resized else params.hr_scale,
        "Hires resize": f"{params.hr_resize_x}x{params.hr_resize_y}" if resized else None,
        "Hires steps": params.hr_second_pass_steps or params.steps,
        "Hires upscaler": params.hr_upscaler,
    }


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], upscaler: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, *size): interpolate to cover `size`, then crop the centre."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    h, w = latents.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    cover = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    kwargs = {"align_corners": False, "antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(latents.float(), size=cover, mode=mode, **kwargs)
    top, left = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
    return out[..., top:top + size[0], left:left + size[1]]


def _upscale_image(loaded, image: Image.Image, upscaler: str, width: int, height: int) -> Image.Image:
    """A decoded first pass at width x height: a PIL resize, or a model upscaler (by name, from the
    upscaler folders) to cover the size, then cropped to it."""
    if upscaler in IMAGE_UPSCALERS:
        return resize_image(image, "Crop and resize", width, height, IMAGE_UPSCALERS[upscaler])
    from t2i.pipelines.model_upscalers import library_of

    scale = max(width / image.width, height / image.height)
    big = library_of(loaded).upscale(image, upscaler, scale)
    return resize_image(big, "Crop and resize", width, height, Image.Resampling.LANCZOS)


def hires_fix(loaded, params, latents: torch.Tensor, seeds: list[int], subseeds: list[int], cond, uncond,
              callback=None) -> list[Image.Image]:
    """Upscale the first pass's latents (B, C, h, w) and refine them: the final images."""
    model = loaded.model
    factor = model.vae_scale_factor
    width, height = hires_size(params, factor)
    size = (height // factor, width // factor)
    if params.hr_upscaler in LATENT_UPSCALERS:
        init = upscale_latents(latents, size, params.hr_upscaler)
        if params.denoising_strength == 0:
            return decode(model, init)
    else:
        upscaled = [_upscale_image(loaded, im, params.hr_upscaler, width, height) for im in decode(model, latents)]
        if params.denoising_strength == 0:
            return upscaled  # exactly the upscaled first pass
        init = encode(model, images_to_tensor(upscaled))
    noise, generators = variation_noise(seeds, (model.latent_channels, *size), subseeds=subseeds,
                                        subseed_strength=params.subseed_strength)
    scheduler = make_scheduler(params.sampler, params.scheduler, model.scheduler_config())
    # an inpainting UNet repaints everything here too, as the web UI conditions it
    extra = repaint_all_conditioning(model, len(seeds), height, width) if is_inpainting_unet(model.unet) else None
    refined = denoise_partial(
        model.unet, scheduler, init, noise, cond, uncond, cfg_scale=params.cfg_scale, extra_channels=extra,
        steps=params.hr_second_pass_steps or params.steps, strength=params.denoising_strength,
        generators=generators, eta=params.eta, callback=callback, device=loaded.runtime.device,
        step_options=noise_step_options(params),
    )
    return decode(model, refined)
