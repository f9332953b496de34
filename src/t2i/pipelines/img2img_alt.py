"""img2img alternative test (the web UI's script): find the noise that Euler sampling would turn
into the input image under its original prompt, then sample from that noise with a new prompt.
The layout survives (it is in the noise); what the prompts differ in changes.

    result = img2img_alt(loaded, Img2ImgParams(prompt="a blue circle", steps=30, cfg_scale=1), image,
                         Img2ImgAltOptions(original_prompt="a red circle"))

Inversion is reverse Euler (Euler's step run backwards, sigma rising from 0 to sigma_max): at each
step the noise prediction at the higher sigma of the step, under the original prompt with
`decode_cfg_scale`, moves the latents up by that sigma difference. Sampling then runs Euler with the
new prompt and `cfg_scale` over the params' steps and schedule type. With the same prompt, the same
steps and scale, sampling retraces the inversion: the reconstruction is close to the input (the
error is Euler's, shrinking with more steps; benchmarks/img2img_alt_quality.py measures it).
`randomness` mixes fresh seeded noise into the inverted noise (0: none). The sampler is always
Euler (the inversion is Euler's); the infotext says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from PIL import Image

from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import denoise, draw_noise, make_generators
from t2i.errors import version as t2i_version
from t2i.pipelines.imageops import decode, encode, images_to_tensor, resize_image
from t2i.pipelines.img2img import encode_conditioning, resolve_img2img_params
from t2i.pipelines.params import ParamError
from t2i.pipelines.schema import validate_strict
from t2i.pipelines.script_options import Img2ImgAltOptions
from t2i.pipelines.txt2img import GenerationResult, infotext_for, seeds_of_batch


@dataclass
class _Sigmas:
    sigmas: torch.Tensor  # (n + 1,) descending, last 0
    timesteps: torch.Tensor  # (n,)
    prediction_type: str


def _schedule(model, schedule_type: str, steps: int) -> _Sigmas:
    scheduler = make_scheduler("Euler", schedule_type, model.scheduler_config())
    scheduler.set_timesteps(steps, device="cpu")
    return _Sigmas(scheduler.sigmas.float(), scheduler.timesteps, scheduler.config.prediction_type)


def _eps(denoiser, x: torch.Tensor, sigma: float, t, prediction_type: str) -> torch.Tensor:
    """The noise the model sees in latents `x` at noise level `sigma` (Euler's derivative)."""
    scale = (sigma ** 2 + 1) ** 0.5
    out = denoiser(x / scale, t)
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":  # denoised = x / (s^2 + 1) - v s / sqrt(s^2 + 1)
        denoised = x / (sigma ** 2 + 1) - out * sigma / scale
        return (x - denoised) / sigma
    raise ParamError(f"img2img alternative test supports epsilon and v-prediction models, not {prediction_type!r}")


@torch.no_grad()
def invert(loaded, latents: torch.Tensor, cond, uncond, cfg_scale: float, steps: int, schedule_type: str):
    """Reverse Euler: latents at sigma 0 -> the noise at sigma_max (B, C, h, w), unscaled."""
    model = loaded.model
    sched = _schedule(model, schedule_type, steps)
    if isinstance(cond, torch.Tensor):
        from t2i.diffusion.sampling import CFGDenoiser

        denoiser = CFGDenoiser(model.unet, cond, uncond, cfg_scale, latents.shape[0])
    else:
        denoiser = cond.denoiser(model.unet, uncond, cfg_scale, batch_size=latents.shape[0])
    begin_step = getattr(denoiser, "begin_step", None)
    x = latents.float()
    n = len(sched.timesteps)
    for k in range(n - 1, -1, -1):  # sampling step k goes sigmas[k] -> sigmas[k + 1]; here backwards
        if begin_step is not None:
            begin_step(k, n)
        low, high = float(sched.sigmas[k + 1]), float(sched.sigmas[k])
        x = x + _eps(denoiser, x, high, sched.timesteps[k], sched.prediction_type) * (high - low)
    return x, float(sched.sigmas[0])


def img2img_alt(loaded, params, image: Image.Image, options: Img2ImgAltOptions) -> GenerationResult:
    """n_iter x batch_size images from `image` (Img2ImgParams; denoising strength is not used: the
    whole schedule runs from the inverted noise)."""
    validate_strict(options)
    if not isinstance(image, Image.Image):
        raise ValueError(f"img2img alternative test starts from one PIL image, got {type(image).__name__}")
    params = resolve_img2img_params(replace(params, sampler="Euler"), loaded, image.size)
    model = loaded.model
    prepared = resize_image(image.convert("RGB"), params.resize_mode, params.width, params.height)
    original = replace(params, prompt=options.original_prompt, negative_prompt=options.original_negative_prompt,
                       cfg_scale=options.decode_cfg_scale)
    with torch.no_grad():
        latents = encode(model, images_to_tensor([prepared]))  # (1, C, h, w)
    cond0, uncond0 = encode_conditioning(model, original)
    inverted, sigma_max = invert(loaded, latents, cond0, uncond0, options.decode_cfg_scale,
                                 options.decode_steps or params.steps, params.scheduler)
    cond, uncond = encode_conditioning(model, params)
    images, seeds, subseeds = [], [], []
    for batch in range(params.n_iter):
        batch_seeds, batch_subseeds = seeds_of_batch(params, batch)
        generators = make_generators(batch_seeds)
        start = inverted.expand(len(batch_seeds), -1, -1, -1)
        if options.randomness > 0:  # fresh noise at sigma_max, mixed in
            fresh = draw_noise(generators, tuple(inverted.shape[1:])) * sigma_max
            start = (1 - options.randomness) * start + options.randomness * fresh
        scheduler = make_scheduler("Euler", params.scheduler, model.scheduler_config())
        scheduler.set_timesteps(params.steps, device="cpu")
        noise = start / scheduler.init_noise_sigma  # the loop multiplies it back
        out = denoise(model.unet, scheduler, noise, cond, uncond, steps=params.steps, cfg_scale=params.cfg_scale,
                      generators=generators, device=loaded.runtime.device)
        images += decode(model, out)
        seeds += batch_seeds
        subseeds += batch_subseeds
    extra = {"Original prompt": options.original_prompt or None,
             "Decode CFG scale": options.decode_cfg_scale, "Decode steps": options.decode_steps or params.steps,
             "Randomness": options.randomness or None}
    version = t2i_version()
    infotexts = [infotext_for(params, s, loaded, version, sub, extra) for s, sub in zip(seeds, subseeds)]
    return GenerationResult(images, seeds, infotexts, params, subseeds)
