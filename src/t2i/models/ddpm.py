"""Denoising diffusion in pixel space (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"),
unconditional, class-conditional (diffusers `UNet2DModel`) or text-conditional (diffusers
`UNet2DConditionModel` cross-attending to a CLIP text encoder, as latent diffusion does, but on pixels).

    ddpm = PixelDDPM(DDPMConfig(resolution=64, beta_schedule="cosine"))
    loss = ddpm(x0, t, noise, labels)               # eps-prediction MSE; x0 (B, 3, H, W) in [-1, 1]
    images = sample(ddpm, n=16, seed=0, sampler="DDIM", steps=50, eta=0.0)
    wide = sample(ddpm, n=4, seed=0, width=128, height=64)   # larger than trained: convolutional
    texty = sample(text_ddpm, n=4, seed=0, prompt="a red circle", guidance_scale=3.0)

Forward process in closed form: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. The UNet learns
eps. Sampling runs a diffusers scheduler built on this model's betas (`trained_betas`): DDPM
ancestral sampling, DDIM (Song et al. 2021) with eta, or any sampler name t2i knows.

Class conditioning: a class embedding added to the time embedding (`num_class_embeds`), with one
extra "no class" embedding (index K) that training uses for a random fraction of images, so that
sampling can use classifier-free guidance (Ho & Salimans 2022) or draw unconditionally.

Text conditioning (`conditioning: text`): the caption's CLIP hidden states (t2i.models.text, the
spine's tokenizer and text model, trained together with the UNet) enter every attention level by
cross-attention. Training replaces a share of captions by "" (caption dropout), so the empty
prompt is the unconditional model that guidance extrapolates from. Sampling goes through the
spine's prompt handling (t2i.diffusion.conditioning: weights, BREAK, [a:b:when], AND, negative
prompts) and denoising loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from t2i.config import (Beta, BlockDepth, ClassNames, Groups, Levels, LevelFlags, Resolution, Timesteps, Width,
                        between, check_model_size)
from t2i.diffusion.conditioning import PromptEncoder
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import cfg_combine, denoise, draw_noise, make_generators, sample_scheduler
from t2i.models.common import FamilyFileModel, check_seed_count, resolve_class, to_pil_images
from t2i.models.sizes import cross_transformer, self_attention, unet_params
from t2i.models.text import TextEncoderConfig, build_text_encoder, load_tokenizer, tokenize

FAMILY = "ddpm"
SCHEDULES = ("linear", "cosine")
CONDITIONINGS = ("none", "class", "text")


@dataclass
class DDPMConfig:
    resolution: Resolution = 64  # trained size; sampling takes any multiple of 2^(levels - 1)
    block_out_channels: Levels = (32, 64, 128, 128)  # one UNet level each
    # attention per level (costly at full size): self-attention; for text models self- and cross-attention
    attention: LevelFlags = (False, False, True, True)
    layers_per_block: BlockDepth = 1
    attention_head_dim: Width = 32  # channels per head (diffusers' meaning for UNet2DModel)
    norm_num_groups: Groups = 16  # GroupNorm groups; must divide every width
    num_train_timesteps: Timesteps = 1000
    beta_schedule: Literal["linear", "cosine"] = "linear"  # Ho et al. 2020, or Nichol & Dhariwal 2021
    beta_start: Beta = 1e-4  # linear schedule ends, as in Ho et al. 2020
    beta_end: Beta = 0.02
    cosine_s: Annotated[float, between(0.0, 1.0)] = 0.008  # cosine offset: keeps beta_0 from being vanishingly small
    # none | class (class_names, set from the data by the recipe with data.classes: true) | text (captions)
    conditioning: Literal["none", "class", "text"] = "none"
    class_names: ClassNames = ()  # class-conditional: index = class id
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # conditioning: text only

    def __post_init__(self):
        self.block_out_channels, self.attention = tuple(self.block_out_channels), tuple(self.attention)
        self.class_names = tuple(self.class_names)
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {SCHEDULES}, got {self.beta_schedule!r}")
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.class_names and self.conditioning == "none":
            self.conditioning = "class"  # class names make a class-conditional model (data.classes: true)
        if self.class_names and self.conditioning == "text":
            raise ValueError("a text-conditional model learns from captions, not classes; set data.classes: false")
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("attention needs one flag per entry of block_out_channels")
        if self.resolution % self.size_multiple:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {self.size_multiple}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every width "
                             f"{self.block_out_channels}")
        attended = [c for c, a in zip(self.block_out_channels, self.attention) if a] + [self.block_out_channels[-1]]
        if any(c % self.attention_head_dim for c in attended):  # the last level: the middle block's attention
            raise ValueError(f"attention_head_dim {self.attention_head_dim} must divide the width of every attention "
                             f"level and the last level {self.block_out_channels}")
        check_model_size("DDPM", self.approx_params())

    def approx_params(self) -> int:
        text = self.conditioning == "text"
        attn = cross_transformer(self.text.hidden_size) if text else self_attention
        unet = unet_params(self.block_out_channels, self.layers_per_block, self.attention, 3, attn)
        classes = (self.num_classes + 1) * 4 * self.block_out_channels[0]
        return unet + classes + (self.text.approx_params() if text else 0)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)  # the UNet's last level does not downsample

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020, Section 4: betas rising linearly from 1e-4 to 0.02 over T = 1000 steps."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", eq. 17:
    abar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2, beta_t = 1 - abar(t)/abar(t-1),
    clipped to max_beta so that the last steps stay invertible."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def make_betas(cfg: DDPMConfig) -> torch.Tensor:
    if cfg.beta_schedule == "cosine":
        return cosine_betas(cfg.num_train_timesteps, cfg.cosine_s)
    return linear_betas(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end)


def build_unet(cfg: DDPMConfig):
    if cfg.conditioning == "text":
        return build_text_unet(cfg)
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=cfg.resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        class_embed_type=None,  # a plain embedding table added to the time embedding
        num_class_embeds=cfg.num_classes + 1 if cfg.num_classes else None,  # + the "no class" index
        num_train_timesteps=cfg.num_train_timesteps,
    )


def build_text_unet(cfg: DDPMConfig):
    """The Stable Diffusion UNet on RGB pixels: cross-attention blocks where `attention` is set."""
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=cfg.resolution,
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.text.hidden_size,
        # diffusers reads this argument of UNet2DConditionModel as heads per level: keep
        # attention_head_dim channels per head, as UNet2DModel does
        attention_head_dim=tuple(max(1, c // cfg.attention_head_dim) for c in cfg.block_out_channels),
        norm_num_groups=cfg.norm_num_groups,
    )


class PixelDDPM(FamilyFileModel, nn.Module):
    kind, config_class = FAMILY, DDPMConfig
    freeze_on_load = False  # loaded models of this family have always kept requires_grad

    def __init__(self, config: DDPMConfig):
        super().__init__()
        if config.conditioning == "class" and not config.class_names:
            raise ValueError("a class-conditional model needs class_names; train it with data.classes: true")
        self.config = config
        self.unet = build_unet(config)
        if config.conditioning == "text":
            self.text_encoder = build_text_encoder(config.text)
        self._tokenizer = None  # text models: the CLIP tokenizer, read on first use
        self.betas = make_betas(config)  # float64, (T,)
        # float32 cumulative product of float32 betas: the same numbers diffusers' schedulers use
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - self.betas.float(), 0), persistent=False)

    @property
    def null_class(self) -> int:
        """The "no class" label of a conditional model (for guidance and unconditional draws)."""
        return self.config.num_classes

    @property
    def tokenizer(self):
        if self.config.conditioning != "text":
            raise ValueError("this DDPM is not text-conditional; it has no tokenizer")
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(max_length=self.config.text.max_length)
        return self._tokenizer

    def token_ids(self, captions: list[str]) -> torch.Tensor:
        """(B, text.max_length) CLIP token ids, EOS-padded and truncated (text models)."""
        return tokenize(self.tokenizer, list(captions))

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, D) text encoder hidden states, what the UNet cross-attends to."""
        return self.text_encoder(token_ids.to(self.alphas_cumprod.device)).last_hidden_state

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Closed-form forward noising q(x_t | x_0) (Ho et al. 2020, eq. 4): (B, 3, H, W)."""
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """cond: class labels (B,) for class models, text hidden states (B, L, D) for text models;
        None: the unconditional model ("no class", or the empty caption)."""
        kind = self.config.conditioning
        if kind == "text":
            if cond is None:
                cond = self.encode_text(self.token_ids([""] * x_t.shape[0]))
            return self.unet(x_t, t, encoder_hidden_states=cond).sample
        if kind == "class" and cond is None:
            cond = torch.full((x_t.shape[0],), self.null_class, device=x_t.device)
        return self.unet(x_t, t, class_labels=cond if kind == "class" else None).sample

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """The simplified eps-prediction loss L_simple (Ho et al. 2020, eq. 14), a scalar.
        t (B,) and noise (B, 3, H, W) come from the caller (training randomness per step).
        cond: class labels (B,), or for text models caption token ids (B, L) (see `token_ids`)."""
        noise = noise.to(x0)
        if self.config.conditioning == "text" and cond is not None:
            cond = self.encode_text(cond)
        return (self.predict_eps(self.q_sample(x0, t, noise), t, cond) - noise).pow(2).mean()

    def scheduler_config(self) -> dict:
        """A diffusers scheduler config on this model's betas (any scheduler that takes
        `trained_betas` reads it; `beta_schedule` etc. are there for code that requires them)."""
        cfg = self.config
        return {
            "num_train_timesteps": cfg.num_train_timesteps,
            "trained_betas": self.betas.tolist(),
            "beta_schedule": "linear",  # ignored: trained_betas wins
            "beta_start": cfg.beta_start,
            "beta_end": cfg.beta_end,
            "prediction_type": "epsilon",
            "clip_sample": True,  # pixel space: predicted x0 clipped to [-1, 1], as in Ho et al.'s sampler
            "clip_sample_range": 1.0,
            "set_alpha_to_one": False,
            "steps_offset": 0,
            "timestep_spacing": "trailing",  # sampling starts at the last training step
        }


def make_sampler(model: PixelDDPM, sampler: str):
    """"DDPM": ancestral sampling (diffusers DDPMScheduler); "DDIM" (eta sets its noise) or any
    other sampler name of t2i.diffusion.samplers, on the model's betas."""
    if sampler.strip().lower() == "ddpm":
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "trained_betas", "prediction_type", "clip_sample",
                "clip_sample_range", "timestep_spacing", "steps_offset")
        return DDPMScheduler(**{k: model.scheduler_config()[k] for k in keys})
    return make_scheduler(sampler, None, model.scheduler_config())


def _check_size(cfg: DDPMConfig, width: int | None, height: int | None) -> tuple[int, int]:
    width, height = width or cfg.resolution, height or cfg.resolution
    m = cfg.size_multiple
    if width % m or height % m or width < m or height < m:
        raise ValueError(f"width and height must be multiples of {m} for this UNet, got {width}x{height}")
    return width, height


def _check_condition(cfg: DDPMConfig, class_name, prompt, negative_prompt: str, guidance_scale: float) -> None:
    kind = cfg.conditioning
    if guidance_scale != 1.0 and kind == "none":
        raise ValueError("guidance_scale needs a class- or text-conditional model; leave it at 1 for this one")
    if kind != "text" and (prompt is not None or negative_prompt):
        what = "classes (give a class)" if kind == "class" else "no condition"
        raise ValueError(f"this DDPM is not text-conditional: it takes {what}, not a prompt")
    if kind == "text" and class_name is not None:
        raise ValueError("this DDPM is text-conditional: give a prompt, not a class")


def _prompts(prompt: str | list[str] | None, n: int) -> list[str]:
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""] * n
    if len(prompt) != n:
        raise ValueError(f"give one prompt for every image or a list of {n}, got {len(prompt)} prompts")
    return list(prompt)


def _label_denoiser(model: PixelDDPM, y: torch.Tensor | None, guidance_scale: float):
    """eps(x, t) of an unconditional or class-conditional model, with guidance towards class y."""
    def denoiser(x, t):
        if y is None or guidance_scale == 1.0:
            return model.predict_eps(x, t, y).float()
        null = torch.full_like(y, model.null_class)
        uncond, cond = model.predict_eps(torch.cat([x, x]), t, torch.cat([null, y])).float().chunk(2)
        return cfg_combine(uncond, cond, guidance_scale)

    return denoiser


def _denoise_text(model: PixelDDPM, encoder, prompts: list[str], negative_prompt: str, guidance_scale: float,
                  scheduler, noise: torch.Tensor, **loop) -> torch.Tensor:
    """The spine's text-conditioned loop: prompt syntax, negative prompt, classifier-free guidance."""
    cond = encoder.conditioning(prompts[0] if len(set(prompts)) == 1 else prompts)
    needs_uncond = guidance_scale != 1.0 or cond.needs_uncond
    uncond = encoder.conditioning(negative_prompt, negative=True) if needs_uncond else None
    return denoise(model.unet, scheduler, noise, cond, uncond, cfg_scale=guidance_scale, **loop)


@torch.no_grad()
def sample(model: PixelDDPM, n: int, seed: int, class_name: str | int | None = None, *,
           prompt: str | list[str] | None = None, negative_prompt: str = "",
           sampler: str = "DDIM", steps: int | None = None, eta: float = 0.0, guidance_scale: float = 1.0,
           width: int | None = None, height: int | None = None, batch_size: int = 16, callback=None) -> list:
    """n images; image i starts from noise drawn with seed + i and its generator draws every later
    noise too, so it equals a single run with that seed. steps None: all T steps for DDPM, 50
    otherwise. guidance_scale > 1 (conditional models): classifier-free guidance towards the class
    or prompt. prompt (text models): one for every image or a list of n, in the web UI's prompt
    syntax; "" (or None) is the unconditional model. width/height: any multiples of the UNet's size
    multiple, larger than trained included."""
    cfg = model.config
    width, height = _check_size(cfg, width, height)
    _check_condition(cfg, class_name, prompt, negative_prompt, guidance_scale)
    seeds = check_seed_count(n, seed)
    text = cfg.conditioning == "text"
    labels = None if text else resolve_class(cfg.class_names, class_name, n)
    prompts = _prompts(prompt, n) if text else None
    if steps is None:
        steps = cfg.num_train_timesteps if sampler.strip().lower() == "ddpm" else 50
    device = next(model.parameters()).device
    model.eval()
    encoder = None
    if text:
        encoder = PromptEncoder.from_model(model)
    images = []
    for i in range(0, n, batch_size):
        gens = make_generators(seeds[i:i + batch_size])
        noise = draw_noise(gens, (3, height, width))  # (b, 3, H, W), CPU float32
        loop = dict(steps=steps, generators=gens, eta=eta, callback=callback, device=device)
        scheduler = make_sampler(model, sampler)
        if text:
            x = _denoise_text(model, encoder, prompts[i:i + batch_size], negative_prompt, guidance_scale,
                              scheduler, noise, **loop)
        else:
            y = labels[i:i + batch_size].to(device) if labels is not None else None
            x = sample_scheduler(_label_denoiser(model, y, guidance_scale), scheduler, noise, **loop)
        images += to_pil_images(x)
    return images
