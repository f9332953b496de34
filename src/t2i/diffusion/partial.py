"""Sampling that starts from an image part of the way through the schedule (SDEdit, Meng et al.
2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential Equations"), with
optional latent blending for inpainting and channel conditioning for inpainting UNets.

img2img with strength s and n steps, as the web UI does it: the full n-step schedule is set,
then sampling starts at index n - round(s * n), after the image latents were noised to that
step's noise level. So round(s * n) steps run (at least one for any s > 0), and the noise level
matches what an n-step txt2img run would have at that point. s = 1 starts from pure noise
exactly as txt2img does, so it ignores the image.

Inpainting with an ordinary model (Lugmayr et al. 2022, "RePaint", the blending part): after
every step the region to keep is replaced by the image latents noised to the next step's level
(with the same noise as the start), and by the clean image latents at the end.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from t2i.diffusion.sampling import CFGDenoiser, Denoiser, StepCallback, _step_kwargs


def steps_to_run(steps: int, strength: float) -> int:
    """round(strength * steps), at least 1 for any strength > 0 (0 for strength 0)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"denoising strength must be in [0, 1], got {strength}")
    if strength == 0:
        return 0
    return min(steps, max(1, round(strength * steps)))


def partial_schedule(scheduler, steps: int, strength: float, device) -> tuple[Tensor, int]:
    """Set the full `steps` schedule and point the scheduler at the img2img start.

    Returns (the timesteps that will run, the start index into scheduler.timesteps). Second-order
    schedulers (Heun, DPM2) hold 2 entries a step, hence the `order` factor, as diffusers does."""
    scheduler.set_timesteps(steps, device=device)
    start = (steps - steps_to_run(steps, strength)) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):  # index-based schedulers: begin at `start`, not at t's first match
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:], start


class ConcatChannels(nn.Module):
    """A 9-channel inpainting UNet seen as a 4-channel one: the sampled latents get the fixed
    conditioning channels (mask, masked-image latents) appended, in diffusers' order.

    A wrapper module, not a patch: it owns no weights and calls the UNet unchanged."""

    def __init__(self, unet: nn.Module, extra: Tensor):
        super().__init__()
        self.unet = unet
        self.extra = extra  # (B, 5, h, w): 1 mask channel + 4 masked-image latent channels
        self.config = unet.config
        self.rows: Tensor | None = None  # image of each UNet batch row, when the guidance says so

    def forward(self, x: Tensor, t: Tensor, encoder_hidden_states: Tensor, **kwargs):
        extra = self.extra.to(x.device, x.dtype)
        if self.rows is not None and len(self.rows) == x.shape[0]:
            extra = extra[self.rows.to(extra.device)]  # AND parts: rows are not simply [uncond, cond]
        elif x.shape[0] != extra.shape[0]:  # [uncond, cond] halves under classifier-free guidance
            extra = extra.repeat(x.shape[0] // extra.shape[0], 1, 1, 1)
        return self.unet(torch.cat([x, extra], dim=1), t, encoder_hidden_states=encoder_hidden_states, **kwargs)


@torch.no_grad()
def inpainting_conditioning(model, images: Tensor, repaint: Tensor) -> Tensor:
    """The extra input of a 9-channel inpainting UNet: (B, 5, h, w) = [mask, masked-image latents].

    images: (B, 3, H, W) in [-1, 1]; repaint: (B, 1, H, W) hard mask, 1 = repaint. The masked
    image is the image with the repainted area set to 0 (mid grey), as such UNets were trained."""
    param = next(model.vae.parameters())
    masked = (images * (1.0 - repaint)).to(param.device, param.dtype)
    latents = model.encode_images(masked, sample=False).float()  # the posterior's mode: no seed involved
    mask = torch.nn.functional.interpolate(repaint.float(), size=latents.shape[-2:], mode="nearest")
    return torch.cat([mask.to(latents.device), latents], dim=1)


INPAINTING_UNET_CHANNELS = 9  # latents + 1 mask channel + masked-image latents


def is_inpainting_unet(unet) -> bool:
    return getattr(getattr(unet, "config", None), "in_channels", None) == INPAINTING_UNET_CHANNELS


@torch.no_grad()
def repaint_all_conditioning(model, batch_size: int, height: int, width: int) -> Tensor:
    """(B, 5, h, w) inpainting conditioning with nothing to keep, for `height` x `width` images:
    a mask of ones and the latents of a mid-grey image, as the web UI gives inpainting models in
    txt2img (and the hires fix's second pass)."""
    grey = torch.zeros(1, 3, height, width)  # mid grey: 0.5 in [0, 1] is 0 in [-1, 1]
    extra = inpainting_conditioning(model, grey, torch.ones(1, 1, height, width))
    return extra.expand(batch_size, -1, -1, -1)


def txt2img_unet(model, batch_size: int, height: int, width: int) -> nn.Module:
    """The UNet that txt2img samples: the model's own, or a 9-channel inpainting UNet with its
    repaint-everything conditioning attached."""
    if not is_inpainting_unet(model.unet):
        return model.unet
    return ConcatChannels(model.unet, repaint_all_conditioning(model, batch_size, height, width))


@torch.no_grad()
def sample_partial(
    model: Denoiser,
    scheduler,
    init_latents: Tensor,
    noise: Tensor,
    *,
    steps: int,
    strength: float,
    generators: list[torch.Generator] | None = None,
    eta: float = 0.0,
    callback: StepCallback | None = None,
    device: torch.device | str | None = None,
    keep: Tensor | None = None,
    step_options: dict | None = None,
) -> Tensor:
    """Denoise `init_latents` (B, C, h, w) with `noise` (B, C, h, w) over round(strength * steps)
    steps of the `steps`-step schedule; returns float32 latents (B, C, h, w).

    keep: optional (B or 1, 1, h, w) mask in [0, 1], 1 = keep the init latents there (inpainting
        with an ordinary model; leave None for 9-channel UNets, which see the mask themselves).
    callback(i, total, latents) runs after each model evaluation; "interrupt" stops early.
    step_options: extra `scheduler.step` kwargs (s_churn, ...), passed where accepted.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if init_latents.shape != noise.shape:
        raise ValueError(f"init latents {tuple(init_latents.shape)} and noise {tuple(noise.shape)} differ in shape")
    if generators is not None and len(generators) != noise.shape[0]:
        raise ValueError(f"got {len(generators)} generators for {noise.shape[0]} images; give one per image")
    device = torch.device(device) if device is not None else noise.device
    init = init_latents.to(device, torch.float32)
    noise = noise.to(device, torch.float32)
    if strength == 0:
        return init
    timesteps, start = partial_schedule(scheduler, steps, strength, device)
    if start == 0:
        latents = noise * scheduler.init_noise_sigma  # strength 1: pure noise, as txt2img starts
    else:
        latents = scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
    if keep is not None:
        keep = keep.to(device, torch.float32)
    step_kwargs = _step_kwargs(scheduler, generators, eta, step_options)
    total = len(timesteps)
    # Prompt schedules count from the run's first step over the whole schedule's length, as the
    # web UI does for img2img (so [a:b:0.5] at strength 0.5 never reaches b).
    begin_step = getattr(model, "begin_step", None)
    for i, t in enumerate(timesteps):
        if begin_step is not None:
            begin_step(i, len(scheduler.timesteps))
        model_output = model(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(model_output, t, latents, **step_kwargs)[0]
        if keep is not None and i + 1 < total:
            # the known region, noised to the level of the next model input (same noise as the start)
            known = scheduler.add_noise(init, noise, timesteps[i + 1:i + 2].repeat(init.shape[0]))
            latents = keep * known + (1.0 - keep) * latents
        if callback is not None and callback(i, total, latents) == "interrupt":
            break
    if keep is not None:
        latents = keep * init + (1.0 - keep) * latents
    return latents


def denoise_partial(unet, scheduler, init_latents: Tensor, noise: Tensor, cond, uncond, *,
                    cfg_scale: float, extra_channels: Tensor | None = None, **kwargs) -> Tensor:
    """`sample_partial` over a text-conditioned UNet with classifier-free guidance.

    cond, uncond: (B or 1, T, D) text encoder states, or PromptConditionings (prompt syntax), as
        `sampling.denoise` takes them.
    extra_channels: (B, 5, h, w) inpainting conditioning for 9-channel UNets (see
        `inpainting_conditioning`); other kwargs as `sample_partial`."""
    if extra_channels is not None:
        unet = ConcatChannels(unet, extra_channels)
    if isinstance(cond, Tensor):
        model = CFGDenoiser(unet, cond, uncond, cfg_scale, batch_size=noise.shape[0])
    else:  # a per-step conditioning provider picks its own guidance wrapper
        model = cond.denoiser(unet, uncond, cfg_scale, batch_size=noise.shape[0])
    if extra_channels is not None:
        unet.rows = getattr(model, "rows", None)
    kwargs.setdefault("device", model.device)
    return sample_partial(model, scheduler, init_latents, noise, **kwargs)
