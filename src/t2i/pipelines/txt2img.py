"""txt2img: prompt -> images, with the web UI's parameters, seeds and infotext."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Callable

import torch
from PIL import Image

from t2i.diffusion.samplers import SAMPLER_NAMES, SCHEDULE_TYPES, make_scheduler, resolve_sampler
from t2i.diffusion.sampling import denoise, draw_noise, make_generators
from t2i.metadata import build_infotext
from t2i.pipelines.params import ParamError, param, validate

MAX_SEED = 2**32 - 1


@dataclass
class Txt2ImgParams:
    prompt: str = param("", "what the image should show", cli=False)
    negative_prompt: str = param("", "what the image should not show")
    steps: int = param(20, "denoising steps", minimum=1, maximum=1000)
    cfg_scale: float = param(7.0, "classifier-free guidance scale (1 = no guidance)", minimum=0.0, maximum=100.0)
    sampler: str = param("DPM++ 2M", "sampler name, e.g. " + ", ".join(SAMPLER_NAMES[:6]) + ", ... "
                         "(combined names such as 'DPM++ 2M Karras' work)")
    scheduler: str = param("Automatic", "schedule type: " + ", ".join(SCHEDULE_TYPES))
    eta: float = param(0.0, "noise added per step by DDIM-style samplers (0 = deterministic)", minimum=0.0, maximum=1.0)
    seed: int = param(-1, "seed of the first image; image i uses seed + i; -1 = random", minimum=-1, maximum=MAX_SEED)
    width: int | None = param(None, "width in pixels (default: the model's training resolution)", minimum=8, maximum=8192)
    height: int | None = param(None, "height in pixels (default: the model's training resolution)", minimum=8, maximum=8192)
    batch_size: int = param(1, "images generated together in one batch", minimum=1, maximum=256)
    n_iter: int = param(1, "number of batches", minimum=1, maximum=10_000)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    params: Txt2ImgParams  # as run: seed resolved, sampler canonical, size filled in


StepCallback = Callable[[int, int, torch.Tensor], object]


def resolve_params(params: Txt2ImgParams, loaded) -> Txt2ImgParams:
    """Check everything and fill in the defaults that depend on the model; raise ParamError."""
    validate(params)
    try:
        sampler, schedule = resolve_sampler(params.sampler, params.scheduler)
    except ValueError as err:
        raise ParamError(str(err)) from err
    model = loaded.model
    factor = model.vae_scale_factor
    width = params.width or model.config.resolution
    height = params.height or model.config.resolution
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            raise ParamError(f"{name} must be a multiple of {factor} for this model, got {value} "
                             f"(try {max(factor, round(value / factor) * factor)})")
    seed = params.seed if params.seed != -1 else secrets.randbelow(MAX_SEED + 1)
    return replace(params, sampler=sampler, scheduler=schedule, width=width, height=height, seed=seed)


def infotext_for(params: Txt2ImgParams, seed: int, loaded, version: str) -> str:
    return build_infotext(params.prompt, params.negative_prompt, {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "Schedule type": None if params.scheduler == "Automatic" else params.scheduler,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": loaded.hash,
        "Model": loaded.name,
        "Eta": params.eta or None,
        "Version": f"t2i {version}",
    })


def latents_to_images(model, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    param = next(vae.parameters())
    with torch.no_grad():
        pixels = model.decode_latents(latents.to(param.device, param.dtype)).float()
    pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p) for p in pixels]


def txt2img(loaded, params: Txt2ImgParams, callback: StepCallback | None = None) -> GenerationResult:
    """Generate `n_iter` batches of `batch_size` images. Image i has seed `params.seed + i`, drawn
    on the CPU with its own generator, so it equals a single run with that seed."""
    from t2i.checkpoints.diffusers_folder import _t2i_version

    params = resolve_params(params, loaded)
    model, device = loaded.model, loaded.runtime.device
    version = _t2i_version()
    with torch.no_grad():
        cond = model.encode_prompts([params.prompt])  # (1, T, D): encoded once for every batch
        uncond = model.encode_prompts([params.negative_prompt]) if params.cfg_scale != 1 else None
    shape = (model.latent_channels, params.height // model.vae_scale_factor, params.width // model.vae_scale_factor)
    images, seeds = [], []
    for batch in range(params.n_iter):
        batch_seeds = [(params.seed + batch * params.batch_size + i) % (MAX_SEED + 1) for i in range(params.batch_size)]
        scheduler = make_scheduler(params.sampler, params.scheduler, model.scheduler_config())
        generators = make_generators(batch_seeds)
        noise = draw_noise(generators, shape)  # the same generators then give the sampler's noise
        latents = denoise(model.unet, scheduler, noise, cond, uncond, steps=params.steps, cfg_scale=params.cfg_scale,
                          generators=generators, eta=params.eta, callback=callback, device=device)
        images += latents_to_images(model, latents)
        seeds += batch_seeds
    infotexts = [infotext_for(params, s, loaded, version) for s in seeds]
    return GenerationResult(images, seeds, infotexts, params)
