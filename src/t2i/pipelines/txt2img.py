"""txt2img: prompt -> images, with the web UI's parameters, seeds and infotext."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from PIL import Image

from t2i.diffusion.conditioning import PromptEncoder
from t2i.diffusion.deepcache import deep_cache
from t2i.diffusion.noise import variation_noise
from t2i.diffusion.partial import txt2img_unet
from t2i.diffusion.samplers import (
    make_scheduler,
    resolve_sampler,
    step_accepts,
)
from t2i.diffusion.sampling import denoise, noise_step_options
from t2i.errors import version as t2i_version
from t2i.extra_networks.library import activate_extra_networks, network_infotext, vae_infotext
from t2i.metadata import build_infotext
from t2i.models.tiling import circular_padding
from t2i.pipelines.fast import apply_fast
from t2i.pipelines.generation_params import MAX_SEED, GenerationParams, Txt2ImgParams
from t2i.pipelines.hires import check_hires, hires_fix, hires_infotext
from t2i.pipelines.layout import check_layout_map_use, layout_conditioning, parse_layout
from t2i.pipelines.params import ParamError
from t2i.pipelines.progress import GenerationControl, ProgressCallback, ProgressTracker
from t2i.pipelines.schema import validate_strict as validate


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    params: GenerationParams  # as run: seed resolved, sampler canonical, size filled in
    subseeds: list[int] = field(default_factory=list)  # variation seed of each image


StepCallback = Callable[[int, int, torch.Tensor], object]


def resolve_params(params: GenerationParams, loaded) -> GenerationParams:
    """Check everything and fill in the defaults that depend on the model; raise ParamError."""
    validate(params)
    params = apply_fast(params, loaded)  # --fast: the LCM-LoRA and its sampler, steps and CFG scale
    try:
        sampler, schedule = resolve_sampler(params.sampler, params.scheduler)
    except ValueError as err:
        raise ParamError(str(err)) from err
    model = loaded.model
    layout_model = getattr(model.config, "conditioning", "text") == "layout"
    if getattr(params, "layout", "") and not layout_model:
        raise ParamError("--layout needs a layout-to-image model (model.conditioning: layout, e.g. trained with "
                         "configs/shapes-ldm-layout.yaml); this model is conditioned on text only")
    if getattr(params, "layout", ""):
        parse_layout(params.layout)  # malformed: a ParamError before any work
    check_layout_map_use(model, params)
    factor = model.vae_scale_factor
    width = params.width or model.config.resolution
    height = params.height or model.config.resolution
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            raise ParamError(f"{name} must be a multiple of {factor} for this model, got {value} "
                             f"(try {max(factor, round(value / factor) * factor)})")
    resize = (params.seed_resize_from_w, params.seed_resize_from_h)
    if any(v > 0 for v in resize) and not all(v >= factor for v in resize):
        raise ParamError(f"seed_resize_from_w and seed_resize_from_h go together: give both (each >= {factor}), "
                         f"or neither; got {resize[0]}x{resize[1]}")
    layers = getattr(getattr(model.text_encoder, "config", None), "num_hidden_layers", None)
    if layers is not None and params.clip_skip > layers:
        raise ParamError(f"clip_skip must be at most {layers} for this model (its text encoder has {layers} "
                         f"layers), got {params.clip_skip}")
    seed = params.seed if params.seed != -1 else secrets.randbelow(MAX_SEED + 1)
    subseed = params.subseed if params.subseed != -1 else secrets.randbelow(MAX_SEED + 1)
    resolved = replace(params, sampler=sampler, scheduler=schedule, width=width, height=height, seed=seed,
                       subseed=subseed)
    if getattr(resolved, "enable_hr", False):
        check_hires(resolved, factor, loaded)
    return resolved


def seeds_of_batch(params: GenerationParams, batch: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of batch `batch`: image i of the whole run has seed + i, subseed + i."""
    first = batch * params.batch_size
    step = 0 if getattr(params, "fixed_code", False) else 1  # fixed code: one seed (starting latent) for all
    seeds = [(params.seed + (first + i) * step) % (MAX_SEED + 1) for i in range(params.batch_size)]
    subseeds = [(params.subseed + first + i) % (MAX_SEED + 1) for i in range(params.batch_size)]
    return seeds, subseeds


def seeded_noise(params: GenerationParams, seeds: list[int], subseeds: list[int], shape: tuple[int, int, int],
                 factor: int):
    """(noise (B, C, h, w), generators) for a batch, with the variation settings of `params`."""
    resize = None
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        resize = (shape[0], params.seed_resize_from_h // factor, params.seed_resize_from_w // factor)
    return variation_noise(seeds, shape, subseeds=subseeds, subseed_strength=params.subseed_strength,
                           resize_from=resize)


def run_batches(params: GenerationParams, tracker: ProgressTracker, one_batch) -> tuple[list, list[int], list[int]]:
    """The batch loop of txt2img and img2img: `n_iter` batches until interrupted.
    `one_batch(batch, seeds, subseeds)` returns the batch's images, or None when it was skipped
    (a batch skipped later is dropped too). Returns (images, seeds, subseeds) of the batches kept."""
    images, seeds, subseeds = [], [], []
    for batch in range(params.n_iter):
        if tracker.interrupted:
            break
        tracker.begin_batch()
        batch_seeds, batch_subseeds = seeds_of_batch(params, batch)
        batch_images = one_batch(batch, batch_seeds, batch_subseeds)
        if batch_images is None or tracker.batch_skipped:  # skipped: drop the batch, go on with the next
            continue
        images += batch_images
        seeds += batch_seeds
        subseeds += batch_subseeds
    return images, seeds, subseeds


# GenerationParams field -> (the web UI's infotext key, default): written only when the value is
# not the default and the sampler takes it, as the web UI does (eta is DDIM's here).
SAMPLER_SETTINGS = {"eta": ("Eta DDIM", 0.0), "s_churn": ("Sigma churn", 0.0), "s_tmin": ("Sigma tmin", 0.0),
                    "s_tmax": ("Sigma tmax", 0.0), "s_noise": ("Sigma noise", 1.0)}


def sampler_infotext(params: GenerationParams) -> dict:
    """Infotext keys of the sampler settings that change this image."""
    return {key: getattr(params, name) for name, (key, default) in SAMPLER_SETTINGS.items()
            if getattr(params, name) != default and step_accepts(params.sampler, name)}


def infotext_for(params: GenerationParams, seed: int, loaded, version: str, subseed: int | None = None,
                 extra: dict | None = None) -> str:
    """One image's infotext; `extra` adds pipeline keys (Denoising strength, Mask blur, ...)."""
    variation = params.subseed_strength > 0
    resized = params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0
    return build_infotext(params.prompt, params.negative_prompt, {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": None if params.scheduler == "Automatic" else params.scheduler,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": loaded.hash,
        "Model": loaded.name,
        **vae_infotext(loaded),  # a separate VAE file (--vae)
        "Variation seed": (params.subseed if subseed is None else subseed) if variation else None,
        "Variation seed strength": params.subseed_strength if variation else None,
        "Seed resize from": f"{params.seed_resize_from_w}x{params.seed_resize_from_h}" if resized else None,
        "Clip skip": params.clip_skip,  # written only when > 1
        "Tiling": True if params.tiling else None,
        "Fixed code": True if getattr(params, "fixed_code", False) else None,
        "Fast": True if getattr(params, "fast", False) else None,
        "Layout": getattr(params, "layout", "") or None,
        **sampler_infotext(params),
        **(extra or {}),
        **network_infotext(loaded, params),  # Lora hashes, TI hashes
        "Version": f"t2i {version}",
    })


def latents_to_images(model, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    param = next(vae.parameters())
    with torch.no_grad():
        pixels = model.decode_latents(latents.to(param.device, param.dtype)).float()
    pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def txt2img(loaded, params: Txt2ImgParams, callback: StepCallback | None = None, *,
            progress: ProgressCallback | None = None, control: GenerationControl | None = None) -> GenerationResult:
    """Generate `n_iter` batches of `batch_size` images. Image i has seed `params.seed + i`, drawn
    on the CPU with its own generator, so it equals a single run with that seed.

    progress: gets a `Progress` (step, total, ETA, latents, preview) after every model evaluation;
    control: a `GenerationControl` to interrupt the run or skip a batch (t2i.pipelines.progress)."""
    params = resolve_params(params, loaded)
    # Tiling: circular padding in the UNet and VAE for this generation only, restored afterwards;
    # LoRAs (<lora:...> tags, params.loras) merged for it and restored too.
    with circular_padding(loaded.model.unet, loaded.model.vae, enabled=params.tiling), \
            activate_extra_networks(loaded, params) as networks:
        return _txt2img(loaded, params, callback, networks.embeddings, progress=progress, control=control)


def _txt2img(loaded, params: Txt2ImgParams, callback: StepCallback | None, embeddings=None, *,
             progress: ProgressCallback | None = None, control: GenerationControl | None = None) -> GenerationResult:
    """txt2img with resolved params; `embeddings`: the textual inversions its prompts name."""
    model, device = loaded.model, loaded.runtime.device
    version = t2i_version()
    with torch.no_grad():
        # Prompt syntax (weights, long prompts, BREAK, [a:b:when], [a|b], AND); each text is
        # encoded once for every batch, a plain prompt before sampling.
        objects = None
        if getattr(model.config, "conditioning", "text") == "layout":  # prompt + object tokens, plain text
            cond, uncond, objects = layout_conditioning(model, params.prompt, params.negative_prompt, params.layout)
        else:
            encoder = PromptEncoder.from_model(model, clip_skip=params.clip_skip, embeddings=embeddings)
            cond = encoder.conditioning(params.prompt)
            uncond = (encoder.conditioning(params.negative_prompt, negative=True)
                      if params.cfg_scale != 1 or cond.needs_uncond else None)
    shape = (model.latent_channels, params.height // model.vae_scale_factor, params.width // model.vae_scale_factor)
    if objects is not None:  # layout-map models also take the boxes as input channels
        unet = model.layout_unet(objects, params.batch_size)
    else:
        unet = txt2img_unet(model, params.batch_size, params.height, params.width)  # inpainting UNets: all repainted
    hires = getattr(params, "enable_hr", False)
    # progress counts one sampling pass per batch, two with the hires fix
    tracker = ProgressTracker(model, params.n_iter, 2 if hires else 1, callback=callback, progress=progress,
                              control=control)

    def one_batch(batch: int, batch_seeds: list[int], batch_subseeds: list[int]) -> list | None:
        scheduler = make_scheduler(params.sampler, params.scheduler, model.scheduler_config())
        # the same generators then give the sampler's noise
        noise, generators = seeded_noise(params, batch_seeds, batch_subseeds, shape, model.vae_scale_factor)
        with deep_cache(unet, getattr(params, "deepcache_interval", 1)) as step_unet:  # a fresh cache per batch
            latents = denoise(step_unet, scheduler, noise, cond, uncond, steps=params.steps,
                              cfg_scale=params.cfg_scale, generators=generators, eta=params.eta,
                              callback=tracker.job_callback(batch, "txt2img"),
                              device=device, step_options=noise_step_options(params))
        if tracker.batch_skipped:
            return None
        if hires and not tracker.interrupted:  # interrupted: the first pass's latents as they are
            step_callback = tracker.job_callback(batch, "hires", pass_index=1)
            return hires_fix(loaded, params, latents, batch_seeds, batch_subseeds, cond, uncond, step_callback)
        return latents_to_images(model, latents)

    images, seeds, subseeds = run_batches(params, tracker, one_batch)
    extra = hires_infotext(params) if getattr(params, "enable_hr", False) else None
    if getattr(params, "deepcache_interval", 1) > 1:
        extra = {**(extra or {}), "DeepCache interval": params.deepcache_interval}
    infotexts = [infotext_for(params, s, loaded, version, sub, extra) for s, sub in zip(seeds, subseeds)]
    return GenerationResult(images, seeds, infotexts, params, subseeds)
