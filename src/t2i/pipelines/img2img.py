"""img2img: an image and a prompt -> images, with the web UI's denoising strength and resize modes.

    result = img2img(loaded, Img2ImgParams(prompt="a red circle", denoising_strength=0.5, seed=1), image)

Denoising strength s with n steps runs round(s * n) steps (at least 1 for s > 0) of the n-step
schedule, starting from the image latents noised to that point (see t2i.diffusion.partial).
s = 0 returns the input image itself, resized to width x height: no VAE round trip, so it is
exactly the input when the size matches. s = 1 starts from pure noise and equals txt2img with the
same seed. Image i of a batch has seed + i and equals a single run with that seed; with several
input images, image i starts from input i mod their number.

Width and height default to the input's size rounded down to a multiple of the model's VAE
factor. The image's latents are the VAE posterior's mode, so they do not depend on the seed.

`sample_images` is the sampling core that inpainting and outpainting share.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from PIL import Image

from t2i.diffusion.conditioning import PromptEncoder
from t2i.diffusion.partial import (
    INPAINTING_UNET_CHANNELS,
    denoise_partial,
    inpainting_conditioning,
)
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import noise_step_options
from t2i.errors import version as t2i_version
from t2i.extra_networks.library import activate_extra_networks
from t2i.models.tiling import circular_padding
from t2i.pipelines.generation_params import Img2ImgParams
from t2i.pipelines.imageops import (
    RESIZE_MODES,
    decode,
    encode,
    hard_mask,
    images_to_tensor,
    latent_mask,
    resize_image,
    snap_size,
)
from t2i.pipelines.layout import check_layout_map_use
from t2i.pipelines.progress import GenerationControl, ProgressCallback, ProgressTracker
from t2i.pipelines.txt2img import (
    GenerationParams,
    GenerationResult,
    StepCallback,
    infotext_for,
    resolve_params,
    run_batches,
    seeded_noise,
    seeds_of_batch,
)

LATENT_FILLS = ("latent noise", "latent nothing")


def as_image_list(images, what: str = "image") -> list[Image.Image]:
    """One PIL image or a non-empty list of them, as a list; ValueError otherwise."""
    items = [images] if isinstance(images, Image.Image) else list(images) if isinstance(images, (list, tuple)) else None
    if not items or not all(isinstance(im, Image.Image) for im in items):
        raise ValueError(f"expected a PIL {what} or a non-empty list of PIL {what}s, got {type(images).__name__}")
    return items


def resolve_img2img_params(params: GenerationParams, loaded, size: tuple[int, int]) -> GenerationParams:
    """`resolve_params`, with width and height defaulting to `size` (rounded down to a multiple of
    the model's VAE factor) instead of the model's resolution."""
    check_layout_map_use(loaded.model, params, "img2img or inpainting")
    factor = loaded.model.vae_scale_factor
    width = params.width or snap_size(size[0], factor)
    height = params.height or snap_size(size[1], factor)
    return resolve_params(replace(params, width=width, height=height), loaded)


def img2img_infotext(params: Img2ImgParams) -> dict:
    return {
        "Denoising strength": params.denoising_strength,
        "Resize mode": None if params.resize_mode == RESIZE_MODES[0] else params.resize_mode,
    }


def encode_conditioning(model, params: GenerationParams, embeddings=None):
    """(cond, uncond) for the prompt syntax, as txt2img builds them; uncond None without guidance.
    `embeddings`: the textual inversions the prompts name (t2i.extra_networks)."""
    with torch.no_grad():
        encoder = PromptEncoder.from_model(model, clip_skip=params.clip_skip, embeddings=embeddings)
        cond = encoder.conditioning(params.prompt)
        uncond = (encoder.conditioning(params.negative_prompt, negative=True)
                  if params.cfg_scale != 1 or cond.needs_uncond else None)
    return cond, uncond


def make_result(loaded, params: GenerationParams, images: list[Image.Image], seeds: list[int],
                subseeds: list[int], extra: dict) -> GenerationResult:
    version = t2i_version()
    infotexts = [infotext_for(params, s, loaded, version, sub, extra) for s, sub in zip(seeds, subseeds)]
    return GenerationResult(images, seeds, infotexts, params, subseeds)


def img2img(loaded, params: Img2ImgParams, images, callback: StepCallback | None = None, *,
            progress: ProgressCallback | None = None, control: GenerationControl | None = None) -> GenerationResult:
    """Generate `n_iter` batches of `batch_size` images from `images` (one PIL image or a list,
    image i of the run starting from images[i % len(images)]). `progress` and `control`: per-step
    progress events and interrupt / skip, as txt2img (t2i.pipelines.progress)."""
    images = as_image_list(images)
    params = resolve_img2img_params(params, loaded, images[0].size)
    prepared = [resize_image(im.convert("RGB"), params.resize_mode, params.width, params.height) for im in images]
    out, seeds, subseeds = sample_images(loaded, params, prepared, callback=callback, progress=progress, control=control)
    return make_result(loaded, params, out, seeds, subseeds, img2img_infotext(params))


def _unet_channels(model) -> int:
    channels = getattr(model.unet.config, "in_channels", model.latent_channels)
    if channels not in (model.latent_channels, INPAINTING_UNET_CHANNELS):
        raise ValueError(f"the UNet takes {channels} input channels; t2i supports {model.latent_channels} "
                         f"(ordinary) and {INPAINTING_UNET_CHANNELS} (inpainting) channel UNets")
    return channels


def sample_images(loaded, params: GenerationParams, init_images: list[Image.Image],
                  masks: list[Image.Image] | None = None, *, fill: str = "original",
                  callback: StepCallback | None = None, progress: ProgressCallback | None = None,
                  control: GenerationControl | None = None) -> tuple[list[Image.Image], list[int], list[int]]:
    """`_sample_images` with tiling (circular padding in the UNet and VAE) and the prompt's
    extra networks (LoRAs merged, embeddings found; t2i.extra_networks) while it runs."""
    with circular_padding(loaded.model.unet, loaded.model.vae, enabled=params.tiling), \
            activate_extra_networks(loaded, params) as networks:
        return _sample_images(loaded, params, init_images, masks, fill=fill, callback=callback,
                              embeddings=networks.embeddings, progress=progress, control=control)


def _sample_images(loaded, params: GenerationParams, init_images: list[Image.Image],
                   masks: list[Image.Image] | None = None, *, fill: str = "original",
                   callback: StepCallback | None = None, embeddings=None, progress: ProgressCallback | None = None,
                   control: GenerationControl | None = None) -> tuple[list[Image.Image], list[int], list[int]]:
    """The sampling core of img2img and inpainting: (images, seeds, subseeds).

    init_images: RGB images at params.width x params.height; run image i starts from
        init_images[i % len(init_images)], with masks[i % len] (L, white = repaint) if given.
    fill: "latent noise" / "latent nothing" replace the masked latents by the noise / zeros
        (the pixel-space "fill" mode happens before, in the caller).
    Ordinary UNets keep the unmasked latents by blending at every step; 9-channel inpainting
    UNets get [mask, masked-image latents] as extra input channels instead (a whole-image mask
    without `masks`, as the web UI does for their img2img).
    A skipped batch (`control.skip()`) is left out of all three lists; an interrupted run ends
    with the batch under way, decoded as far as it got.
    """
    model = loaded.model
    factor = model.vae_scale_factor
    if masks is not None and len(masks) != len(init_images):
        raise ValueError(f"got {len(masks)} masks for {len(init_images)} images; give one per image")
    for im in [*init_images, *(masks or [])]:
        if im.size != (params.width, params.height):
            raise ValueError(f"an input is {im.size[0]}x{im.size[1]}, expected {params.width}x{params.height}")
    if params.denoising_strength == 0:  # nothing to denoise: the inputs themselves
        results = [init_images[i % len(init_images)].copy() for i in range(params.n_iter * params.batch_size)]
        seeds, subseeds = zip(*(seeds_of_batch(params, b) for b in range(params.n_iter)))
        return results, sum(seeds, []), sum(subseeds, [])

    channels = _unet_channels(model)
    cond, uncond = encode_conditioning(model, params, embeddings)
    pixels = images_to_tensor(init_images)  # (N, 3, H, W) in [-1, 1]
    # one image at a time, so an image's latents never depend on what else is in the batch
    latents = torch.cat([encode(model, pixels[i:i + 1]) for i in range(len(init_images))])  # (N, C, h, w)
    repaint = torch.cat([latent_mask(m, factor) for m in masks]) if masks is not None else None  # (N, 1, h, w)
    extra = None
    if channels == INPAINTING_UNET_CHANNELS:
        hard = (torch.cat([hard_mask(m) for m in masks]) if masks is not None
                else torch.ones(len(init_images), 1, params.height, params.width))
        extra = torch.cat([inpainting_conditioning(model, pixels[i:i + 1], hard[i:i + 1])
                           for i in range(len(init_images))])  # (N, 5, h, w)
    shape = (model.latent_channels, params.height // factor, params.width // factor)
    tracker = ProgressTracker(model, params.n_iter, callback=callback, progress=progress, control=control)

    def one_batch(batch: int, batch_seeds: list[int], batch_subseeds: list[int]) -> list | None:
        index = [(batch * params.batch_size + i) % len(init_images) for i in range(params.batch_size)]
        noise, generators = seeded_noise(params, batch_seeds, batch_subseeds, shape, factor)
        init, keep = latents[index], None
        if repaint is not None:
            m = repaint[index]
            if fill == "latent noise":
                init = init * (1 - m) + noise * m
            elif fill == "latent nothing":
                init = init * (1 - m)
            keep = 1 - m if extra is None else None
        scheduler = make_scheduler(params.sampler, params.scheduler, model.scheduler_config())
        out = denoise_partial(
            model.unet, scheduler, init, noise, cond, uncond, cfg_scale=params.cfg_scale,
            extra_channels=extra[index] if extra is not None else None, keep=keep, steps=params.steps,
            strength=params.denoising_strength, generators=generators, eta=params.eta,
            callback=tracker.job_callback(batch, "img2img"), device=loaded.runtime.device,
            step_options=noise_step_options(params),
        )
        return None if tracker.batch_skipped else decode(model, out)

    return run_batches(params, tracker, one_batch)

