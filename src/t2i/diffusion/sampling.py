"""The denoising loop around a diffusers scheduler, with classifier-free guidance as a wrapper.

Reproducibility (DESIGN rule 7): every image has its own CPU `torch.Generator`, seeded with its
seed. It draws the image's initial noise and then, continuing the same stream as the web UI does,
every bit of per-step noise an ancestral/SDE scheduler needs (diffusers' `randn_tensor` accepts
one generator per batch element). So image i of a batch equals a single run with seeds[i],
whatever the batch size.

    gens = make_generators(seeds)
    noise = draw_noise(gens, (4, 64, 64))                       # (B, C, H, W) on the CPU
    latents = denoise(unet, scheduler, noise, cond, uncond, steps=20, cfg_scale=7.0, generators=gens)
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor

# callback(step_index, total_steps, latents) -> "interrupt" to stop early, anything else to go on
StepCallback = Callable[[int, int, Tensor], object]
# model(x, t) -> the scheduler's model output (eps or v), float32, same shape as x. A denoiser
# whose conditioning changes over the steps also has `begin_step(i, total)`, which the loop calls
# before each model evaluation (see t2i.diffusion.conditioning.PromptDenoiser).
Denoiser = Callable[[Tensor, Tensor], Tensor]


def make_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, int, int], dtype=torch.float32) -> Tensor:
    """(B, C, H, W) standard normal noise, image i drawn from generators[i] (which advance).

    Drawn in float32 on the CPU and then cast, so the noise does not depend on dtype or device."""
    if len(shape) != 3:
        raise ValueError(f"shape must be (C, H, W) for one image, got {tuple(shape)}")
    return torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]).to(dtype)


def initial_noise(seeds: list[int], shape: tuple[int, int, int], dtype=torch.float32) -> Tensor:
    """(B, C, H, W) initial noise: image i equals a single run with seed seeds[i]."""
    return draw_noise(make_generators(seeds), shape, dtype)


def cfg_combine(uncond_out: Tensor, cond_out: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"):
    extrapolate from the unconditional prediction towards the conditional one."""
    return uncond_out + scale * (cond_out - uncond_out)


def _device_dtype(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


class CFGDenoiser:
    """A conditional UNet as a denoiser `model(x, t) -> output` with classifier-free guidance.

    One batched UNet call per step on [uncond, cond] when guidance is on (cfg_scale != 1 and an
    uncond is given), on cond alone otherwise. The text context is moved and cast once, here.
    Extend `combine` (or wrap this class) for AND-composition or negative weights.
    """

    def __init__(self, unet, cond: Tensor, uncond: Tensor | None, cfg_scale: float, batch_size: int):
        self.unet = unet
        self.device, self.dtype = _device_dtype(unet)
        self.cfg_scale = float(cfg_scale)
        self.guided = uncond is not None and self.cfg_scale != 1.0
        cond = _batched(cond, batch_size, "cond")
        context = torch.cat([_batched(uncond, batch_size, "uncond"), cond]) if self.guided else cond
        self.context = context.to(self.device, self.dtype)  # (2B or B, T, D)

    def combine(self, uncond_out: Tensor, cond_out: Tensor) -> Tensor:
        return cfg_combine(uncond_out, cond_out, self.cfg_scale)

    def unet_kwargs(self, x: Tensor) -> dict:
        """Extra UNet keyword arguments for the batch `x` (SDXL's added conditions); none here."""
        return {}

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        x_in = x.to(self.device, self.dtype)
        if self.guided:
            x_in = torch.cat([x_in, x_in])  # (2B, C, H, W)
        out = self.unet(x_in, t.to(self.device), encoder_hidden_states=self.context, **self.unet_kwargs(x_in)).sample
        out = out.to(x.device, torch.float32)
        if not self.guided:
            return out
        uncond_out, cond_out = out.chunk(2)
        return self.combine(uncond_out, cond_out)


def _batched(context: Tensor, batch_size: int, what: str) -> Tensor:
    """(B, T, D) text context; a batch of 1 is repeated for every image."""
    if context.ndim != 3:
        raise ValueError(f"{what} must be (B, T, D) text encoder hidden states, got shape {tuple(context.shape)}")
    if context.shape[0] == batch_size:
        return context
    if context.shape[0] == 1:
        return context.expand(batch_size, -1, -1)
    raise ValueError(f"{what} has batch {context.shape[0]} but the noise has {batch_size} images; give 1 or {batch_size}")


def noise_step_options(settings) -> dict:
    """The web UI's sigma noise settings of `settings` (a pipeline's params: s_churn, s_tmin,
    s_tmax, s_noise) as `scheduler.step` kwargs; the loop passes each only to a scheduler that
    takes it (diffusers' Euler). s_tmax 0 means no limit, as in the web UI."""
    return {"s_churn": settings.s_churn, "s_tmin": settings.s_tmin, "s_tmax": settings.s_tmax or float("inf"),
            "s_noise": settings.s_noise}


def _step_kwargs(scheduler, generators: list[torch.Generator] | None, eta: float,
                 step_options: dict | None = None) -> dict:
    """Extra `scheduler.step` kwargs, computed once: generators, eta and each of `step_options`
    (e.g. Euler's s_churn, s_tmin, s_tmax, s_noise) only where the scheduler accepts them."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {"return_dict": False}
    if generators is not None and "generator" in params:
        kwargs["generator"] = list(generators)
    if "eta" in params:
        kwargs["eta"] = float(eta)
    kwargs.update({k: v for k, v in (step_options or {}).items() if k in params})
    return kwargs


@torch.no_grad()
def sample_scheduler(
    model: Denoiser,
    scheduler,
    noise: Tensor,
    *,
    steps: int,
    generators: list[torch.Generator] | None = None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    step_options: dict | None = None,
) -> Tensor:
    """Run `scheduler` for `steps` steps from unit-variance `noise` (B, C, H, W) over any denoiser
    `model(x_scaled, t)`; returns float32 latents (B, C, H, W) on `device`.

    `callback(i, total, latents)` runs after each of the `total = len(scheduler.timesteps)` model
    evaluations (2 per step for Heun and DPM2); returning "interrupt" stops and returns the
    current latents. `step_options`: extra `scheduler.step` kwargs, passed where accepted.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if generators is not None and len(generators) != noise.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {noise.shape[0]} images; give one per image")
    device = torch.device(device) if device is not None else noise.device
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    total = len(timesteps)
    step_kwargs = _step_kwargs(scheduler, generators, eta, step_options)
    latents = noise.to(device, torch.float32) * scheduler.init_noise_sigma  # scheduler math stays float32
    begin_step = getattr(model, "begin_step", None)  # optional: per-step conditioning (prompt schedules)
    for i, t in enumerate(timesteps):
        if begin_step is not None:
            begin_step(i, total)
        model_output = model(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(model_output, t, latents, **step_kwargs)[0]
        if callback is not None and callback(i, total, latents) == "interrupt":
            break
    return latents


def denoise(
    unet,
    scheduler,
    noise: Tensor,
    cond: Tensor,
    uncond: Tensor | None,
    *,
    steps: int,
    cfg_scale: float,
    generators: list[torch.Generator] | None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    step_options: dict | None = None,
) -> Tensor:
    """Text-conditioned sampling: latents (B, C, H, W) float32 from `noise` (B, C, H, W).

    unet: a diffusers UNet2DConditionModel (any module with its call signature), on any
        device/dtype; its inputs are cast to its device and dtype, its outputs back to float32.
    cond, uncond: (B or 1, T, D) text encoder states; uncond None or cfg_scale == 1 skips guidance.
        Or `t2i.diffusion.conditioning.PromptConditioning`s (prompt syntax: weights, schedules,
        AND), which build their own guidance wrapper.
    generators: one CPU generator per image for stochastic schedulers (see `make_generators`).
    eta: DDIM's eta; passed only to schedulers whose step takes it.
    step_options: other `scheduler.step` kwargs (s_churn, s_tmin, s_tmax, s_noise for Euler),
        passed only to schedulers whose step takes them.
    device: where the latents and scheduler math live; defaults to the UNet's device.
    """
    if noise.ndim != 4:
        raise ValueError(f"noise must be (B, C, H, W), got shape {tuple(noise.shape)}")
    if isinstance(cond, Tensor):
        model = CFGDenoiser(unet, cond, uncond, cfg_scale, batch_size=noise.shape[0])
    else:  # a per-step conditioning provider (PromptConditioning) picks its own guidance wrapper
        model = cond.denoiser(unet, uncond, cfg_scale, batch_size=noise.shape[0])
    return sample_scheduler(
        model, scheduler, noise, steps=steps, generators=generators, eta=eta, callback=callback,
        device=device if device is not None else model.device, step_options=step_options,
    )
