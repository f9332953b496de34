"""CLIP-guided diffusion (Crowson's "CLIP guided diffusion", the classifier-guidance idea of
Dhariwal & Nichol 2021 with CLIP as the classifier): the latent diffusion model samples with an
EMPTY prompt, its unconditional model (t2i's LDMs are trained with caption dropout), and at every
model evaluation the noise prediction is pushed along the gradient of CLIP's cosine similarity
between the prompt and the image decoded from the predicted x0. The prompt reaches the image only
through CLIP; the diffusion model keeps the image on its own distribution.

    text = scorer.embed_texts(["a red circle"])[0]
    latents, history = clip_guided_diffusion(model, lambda seed: view_similarity(scorer, text, seed),
                                             (4, 16, 16), seed=0, steps=20, scale=0.3)

(view_similarity: t2i.pipelines.clip_guided, the random-crop views that the optimize method uses.)

The guidance, with a_t = alpha_bar_t, x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) and
sim = the mean cosine similarity of CLIP(random views of decode(x0)) with CLIP(prompt):

    g = d sim / d x_t                      (diffusion: through the UNet, the VAE decoder and CLIP, all frozen)
    g = d sim / d x0                       (diffusion-x0: no backward pass through the UNet; cheaper)
    eps' = eps - scale * sqrt(1 - a_t) * g / rms(g)

The gradient is normalised to unit RMS: its raw size swings by 10x and more between steps (it is
largest where the image is being decided, tiny at the first steps), so a raw scale strong enough
to set the background early tears the image into texture later (measured: BENCHMARKS.md, "CLIP-
guided generation"). Normalised, `scale` is the guidance's share of the (unit RMS) noise
prediction, and the sqrt(1 - a_t) factor fades it out as the noise goes. Both only change
the model's output, so it works with any epsilon (or v) sampler of t2i.diffusion: DDIM, Euler,
Euler a, DPM++; every scheduler's `scale_model_input` hands the model x_t in this VP form. At
scale 0 the loop is exactly plain empty-prompt sampling.
"""
from __future__ import annotations

import math

import torch

from t2i.diffusion.samplers import make_scheduler, resolve_sampler
from t2i.diffusion.sampling import (
    CFGDenoiser,
    draw_noise,
    make_generators,
    sample_scheduler,
)
from t2i.errors import ParamError

DEFAULT_STEPS = 20
DEFAULT_SAMPLER = "DDIM"
GRADIENTS = ("full", "x0")
DEFAULT_SCALE = 0.3  # measured on the bundled model and CLIP: BENCHMARKS.md, "CLIP-guided generation"


def empty_context(model) -> torch.Tensor:
    """(1, T, D): the model's unconditional context (empty prompt, null class or null neighbours)."""
    conditioning = getattr(model.config, "conditioning", "text")
    if conditioning == "text":
        with torch.no_grad():
            return model.encode_prompts([""])
    if conditioning in ("class", "none"):
        with torch.no_grad():
            return model.class_context(None, 1)
    if conditioning == "retrieval":
        with torch.no_grad():
            return model.retrieval_context(None, 1)
    raise ParamError(f"CLIP-guided diffusion needs a text, class, unconditional or retrieval LDM; this one is "
                     f"conditioned on {conditioning!r} (use --clip-guidance-method optimize)")


def _alpha_bar(scheduler, t: torch.Tensor) -> float:
    """alpha_bar at timestep t; linear between training steps for the fractional timesteps of
    Karras-style schedules."""
    table = scheduler.alphas_cumprod
    tf = min(max(float(t), 0.0), len(table) - 1.0)
    lo = math.floor(tf)
    hi = min(lo + 1, len(table) - 1)
    w = tf - lo
    return float(table[lo]) * (1 - w) + float(table[hi]) * w


class CLIPGuidedDenoiser:
    """A denoiser `(x_t, t) -> model output` that adds the CLIP guidance to `base`'s output."""

    def __init__(self, base, scheduler, decode, similarity, scale: float, prediction_type: str = "epsilon",
                 gradient: str = "full"):
        # similarity(images in [0, 1] (1, 3, H, W)) -> scalar mean cosine similarity of the views
        self.base, self.scheduler, self.decode, self.similarity = base, scheduler, decode, similarity
        self.scale, self.prediction_type, self.gradient = float(scale), prediction_type, gradient
        self.history: list[float] = []  # the views' mean cosine similarity at each evaluation
        self.device = getattr(base, "device", None)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.scale == 0:  # plain sampling, nothing computed twice
            return self.base(x, t)
        a = _alpha_bar(self.scheduler, t)
        sa, s1 = math.sqrt(a), math.sqrt(1 - a)
        if self.gradient == "x0":
            out = self.base(x, t)
            x0 = (x.float() - s1 * self._eps(out, x, sa, s1)) / sa
            with torch.enable_grad():
                x0 = x0.detach().requires_grad_(True)
                # no clamp to [-1, 1]: it would zero the gradient of every saturated pixel
                sim = self.similarity((self.decode(x0).float() + 1) / 2)
                grad, = torch.autograd.grad(sim, x0)
        else:
            with torch.enable_grad():
                x_in = x.detach().float().requires_grad_(True)
                out = self.base(x_in, t)
                x0 = (x_in - s1 * self._eps(out, x_in, sa, s1)) / sa
                sim = self.similarity((self.decode(x0).float() + 1) / 2)
                grad, = torch.autograd.grad(sim, x_in)
        self.history.append(float(sim.detach()))
        delta = -self.scale * s1 * grad / grad.square().mean().sqrt().clamp_min(1e-12)
        # the same change of eps expressed in the model's own output (v = (eps - sqrt(1 - a) x_t) / sqrt(a))
        return (out.detach() + (delta if self.prediction_type == "epsilon" else delta / sa)).float()

    def _eps(self, out: torch.Tensor, x: torch.Tensor, sa: float, s1: float) -> torch.Tensor:
        """eps from the model output: eps itself, or from v (v = sqrt(a) eps - sqrt(1 - a) x0)."""
        return out if self.prediction_type == "epsilon" else sa * out + s1 * x


def clip_guided_diffusion(model, similarity_for, shape: tuple[int, int, int], seed: int, *, steps: int, scale: float,
                          sampler: str = DEFAULT_SAMPLER, eta: float = 0.0, decode=None, gradient: str = "full"):
    """One image's final latents (1, C, H, W) float32 and the similarity history.

    `similarity_for(seed)` -> a function images -> scalar similarity (its views' randomness seeded
    per image); `decode`: scaled latents -> images in [-1, 1] (default: the model's VAE decoder);
    `gradient`: full (through the UNet) or x0 (at the predicted x0 only)."""
    if gradient not in GRADIENTS:
        raise ParamError(f"the CLIP guidance gradient must be one of {', '.join(GRADIENTS)}, got {gradient!r}")
    if steps < 1:
        raise ParamError(f"CLIP-guided diffusion needs at least 1 step, got {steps}")
    if scale < 0:
        raise ParamError(f"--clip-guidance-scale must be >= 0, got {scale}")
    try:
        sampler_name, schedule = resolve_sampler(sampler)
        scheduler = make_scheduler(sampler_name, schedule, model.scheduler_config())
    except ValueError as exc:
        raise ParamError(str(exc)) from None
    decode = decode or model.decode_latents
    generators = make_generators([seed])
    noise = draw_noise(generators, shape)
    base = CFGDenoiser(model.unet, empty_context(model), None, 1.0, batch_size=1)
    prediction = model.scheduler_config().get("prediction_type", "epsilon")
    guided = CLIPGuidedDenoiser(base, scheduler, decode, similarity_for(seed), scale, prediction, gradient)
    latents = sample_scheduler(guided, scheduler, noise, steps=steps, generators=generators, eta=eta,
                               device=base.device)
    return latents, guided.history
