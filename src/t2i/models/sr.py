"""Super-resolution latent diffusion: a UNet denoises the latent of a high-resolution image,
conditioned on the low-resolution image (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", Section 4.4; the Stable Diffusion x4 upscaler follows the same plan).

    sr = SuperResolution(SRConfig(resolution=64, scale=2))
    loss = sr(latents, low, t, noise, noise_level, low_noise)  # eps- or v-prediction MSE
    images = upscale_tensor(sr, low, seeds=[0], steps=50, sampler="DDIM", noise_level=20)

Design:
- First stage: a KL autoencoder (diffusers `AutoencoderKL`, built from the same `VAEConfig` as the
  latent diffusion models), by default the bundled shapes model's f4 VAE. It is frozen and saved
  inside the SR model's file, so a model file is self-contained. It is convolutional: a VAE trained
  at 64x64 encodes and decodes 128x128 too.
- Conditioning by concatenation at latent resolution: the low-res image (h = H / scale) is folded
  into the latent grid (H / f) by space-to-depth (pixel unshuffle by f / scale), so no pixel is lost
  and no resize is guessed: scale 2 with an f4 VAE gives 3 * 2 * 2 = 12 extra input channels, scale 4
  gives the 3 RGB channels as they are. The scale must divide the VAE factor.
- Noise augmentation (Ho et al. 2021, "Cascaded Diffusion Models"; the SD x4 upscaler's
  `noise_level`): training noises the low-res image to a random level s in [0, max_noise_level] of
  the forward schedule and tells the UNet s through a second timestep embedding (diffusers'
  `class_embed_type="timestep"`, added to the time embedding). At sampling a small s makes the model
  trust its input less, which helps for real inputs that were not made by the training degradation.
- v-prediction (Salimans & Ho 2022; the SD x4 upscaler's choice too), not eps: an eps model's x0
  estimate is (z_t - sqrt(1 - abar) eps) / sqrt(abar), so at high t its error is multiplied by up to
  1 / sqrt(abar_T) ~ 160 (linear schedule), and the eps loss weights x0 errors there by the tiny
  SNR. An eps SR model trained 2,425 steps on shapes (issue 3) had barely learned to use the low-res
  input at t >= 700 (x0 estimates 9-14 dB, hardly better than with another image's input) and
  sampled textures (10 dB PSNR); a v model of the same size reads the input at every t (26 dB x0 estimates after 150 steps).
  `prediction_type: epsilon` still works (training and sampling both follow the setting).
- Larger than trained: the UNet is convolutional (its attention is global self-attention, any
  size), so any low-res size works; `upscale_tensor` pads the input to the UNet's size multiple
  (replicating the border) and crops the result back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import (BlockDepth, Groups, Levels, LevelFlags, Resolution, Width, above, between,
                        check_model_size)
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import draw_noise, make_generators, sample_scheduler
from t2i.models.common import FamilyFileModel
from t2i.models.ldm import LDMConfig, NoiseScheduleConfig, VAEConfig, VAELatents, build_vae
from t2i.models.sizes import autoencoder_params, self_attention, unet_params

FAMILY = "sr"


@dataclass
class SRConfig:
    resolution: Resolution = 64  # trained high-res size; sampling takes any size (padded to the size multiple)
    scale: Annotated[int, between(1, 256)] = 2  # high-res / low-res; must divide the VAE's downsampling factor
    vae: VAEConfig = field(default_factory=VAEConfig)  # the first stage's shape (default: the bundled f4 VAE)
    # latents * scaling_factor have unit variance; the recipe sets it from the data
    scaling_factor: Annotated[float, above(0)] = 1.0
    block_out_channels: Levels = (32, 64, 128)  # one UNet level each, at latent resolution
    attention: LevelFlags = (False, True, True)  # self-attention per level
    layers_per_block: BlockDepth = 2
    attention_head_dim: Width = 32  # channels per head
    norm_num_groups: Groups = 16
    # the latent's forward process; v-prediction by default (see the module docstring)
    schedule: NoiseScheduleConfig = field(default_factory=lambda: NoiseScheduleConfig(prediction_type="v_prediction"))
    # noise augmentation draws levels 0..max of the same schedule (SD x4: 350)
    max_noise_level: Annotated[int, between(0, 100_000)] = 350

    def __post_init__(self):
        self.block_out_channels, self.attention = tuple(self.block_out_channels), tuple(self.attention)
        f = self.vae.downsample_factor
        if self.scale < 1 or f % self.scale:
            raise ValueError(f"scale {self.scale} must divide the VAE's downsampling factor {f} "
                             f"(an f{f} VAE supports scales {[s for s in range(1, f + 1) if f % s == 0]})")
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError("attention needs one flag per entry of block_out_channels")
        if self.resolution % (f * self.size_multiple):
            raise ValueError(f"resolution {self.resolution} must be a multiple of {f * self.size_multiple} "
                             f"(VAE factor {f} x UNet size multiple {self.size_multiple})")
        if not 0 <= self.max_noise_level < self.schedule.num_train_timesteps:
            raise ValueError(f"max_noise_level must be in 0..{self.schedule.num_train_timesteps - 1}")
        if self.schedule.beta_schedule not in ("linear", "scaled_linear"):
            raise ValueError("schedule.beta_schedule must be linear or scaled_linear for SR models")
        if self.schedule.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"schedule.prediction_type must be epsilon or v_prediction, "
                             f"got {self.schedule.prediction_type!r}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every width "
                             f"{self.block_out_channels}")
        attended = [c for c, a in zip(self.block_out_channels, self.attention) if a] + [self.block_out_channels[-1]]
        if any(c % self.attention_head_dim for c in attended):  # the last level: the middle block's attention
            raise ValueError(f"attention_head_dim {self.attention_head_dim} must divide the width of every attention "
                             f"level and the last level {self.block_out_channels}")
        check_model_size("super-resolution", self.approx_params())

    def approx_params(self) -> int:
        v = self.vae
        unet = unet_params(self.block_out_channels, self.layers_per_block, self.attention,
                           v.latent_channels + self.condition_channels, self_attention)
        return unet + autoencoder_params(v.block_out_channels, v.layers_per_block, v.latent_channels)

    @property
    def size_multiple(self) -> int:
        """Latent sizes must be multiples of this: the UNet's last level does not downsample."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def unshuffle(self) -> int:
        """Space-to-depth factor that brings the low-res image onto the latent grid."""
        return self.vae.downsample_factor // self.scale

    @property
    def condition_channels(self) -> int:
        return 3 * self.unshuffle ** 2


def schedule_alphas_cumprod(schedule: NoiseScheduleConfig) -> torch.Tensor:
    """abar_t as diffusers' DDPM-family schedulers compute it (float32 betas, cumulative product)."""
    s = schedule
    if s.beta_schedule == "scaled_linear":
        betas = torch.linspace(s.beta_start ** 0.5, s.beta_end ** 0.5, s.num_train_timesteps, dtype=torch.float32) ** 2
    else:
        betas = torch.linspace(s.beta_start, s.beta_end, s.num_train_timesteps, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, 0)


def build_sr_unet(cfg: SRConfig):
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=cfg.resolution // cfg.vae.downsample_factor,
        in_channels=cfg.vae.latent_channels + cfg.condition_channels,  # noisy latent + low-res image
        out_channels=cfg.vae.latent_channels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        class_embed_type="timestep",  # the noise-augmentation level, embedded like a timestep
        num_train_timesteps=cfg.schedule.num_train_timesteps,
    )


class SuperResolution(FamilyFileModel, VAELatents, nn.Module):
    """Frozen KL first stage (`vae`) + conditional UNet (`unet`); only the UNet trains. Saved as
    one file, the VAE included (FamilyFileModel.save / .load)."""

    kind, config_class = FAMILY, SRConfig

    def __init__(self, config: SRConfig):
        super().__init__()
        self.config = config
        self.vae = build_vae(LDMConfig(resolution=config.resolution, vae=config.vae))
        self.vae.requires_grad_(False)
        self.unet = build_sr_unet(config)
        self.register_buffer("alphas_cumprod", schedule_alphas_cumprod(config.schedule), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def vae_scale_factor(self) -> int:
        return self.config.vae.downsample_factor

    def condition(self, low: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Low-res images (B, 3, h, w) in [-1, 1] -> noise-augmented, folded onto the latent grid
        (B, 3 r^2, h / r, w / r) with r = f / scale."""
        abar = self.alphas_cumprod[noise_level].view(-1, 1, 1, 1)
        noisy = abar.sqrt() * low + (1 - abar).sqrt() * noise
        r = self.config.unshuffle
        return F.pixel_unshuffle(noisy, r) if r > 1 else noisy

    def predict(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                noise_level: torch.Tensor) -> torch.Tensor:
        """z_t (B, C, H/f, W/f) and the folded condition (B, 3 r^2, H/f, W/f) -> the UNet's output
        (B, C, H/f, W/f): eps or v, as `config.schedule.prediction_type` says."""
        return self.unet(torch.cat([z_t, cond.to(z_t)], dim=1), t, class_labels=noise_level).sample

    def forward(self, latents: torch.Tensor, low: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                noise_level: torch.Tensor, low_noise: torch.Tensor) -> torch.Tensor:
        """MSE of the prediction, a scalar: eps (Ho et al. 2020, L_simple) or v = sqrt(abar) eps -
        sqrt(1 - abar) x0 (Salimans & Ho 2022), as the schedule's prediction_type says; the
        sampler's scheduler reads the same setting. latents: scaled latents of the high-res images
        (B, C, H/f, W/f); low (B, 3, H/s, W/s) in [-1, 1]; t, noise_level (B,); noise like latents;
        low_noise like low. Randomness comes from the caller."""
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        cond = self.condition(low, noise_level, low_noise)
        if self.config.schedule.prediction_type == "epsilon":
            target = noise
        else:  # v: its x0 estimate is not divided by sqrt(abar), so it stays usable at low SNR
            target = abar.sqrt() * noise - (1 - abar).sqrt() * latents
        return (self.predict(z_t, t, cond, noise_level) - target).pow(2).mean()

    def scheduler_config(self) -> dict:
        return self.config.schedule.to_diffusers()


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate the right and bottom border up to a multiple of `multiple` (B, C, h', w')."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


@torch.no_grad()
def upscale_tensor(model: SuperResolution, low: torch.Tensor, seeds: list[int], *, steps: int = 50,
                   sampler: str = "DDIM", noise_level: int = 20, eta: float = 0.0, callback=None) -> torch.Tensor:
    """Low-res images (B, 3, h, w) in [-1, 1] -> high-res (B, 3, h * scale, w * scale) in [-1, 1].

    Image i starts from latent noise drawn on the CPU from seeds[i] (and its generator draws the
    augmentation noise and any later sampler noise), so it equals a single run with that seed.
    Any h, w: the input is padded to the UNet's size multiple and the output cropped back."""
    cfg = model.config
    if low.ndim != 4 or low.shape[1] != 3:
        raise ValueError(f"expected low-res images (B, 3, h, w), got shape {tuple(low.shape)}")
    if len(seeds) != low.shape[0]:
        raise ValueError(f"give one seed per image: {len(seeds)} seeds for {low.shape[0]} images")
    if not 0 <= noise_level <= cfg.max_noise_level:
        raise ValueError(f"noise_level must be in 0..{cfg.max_noise_level} for this model, got {noise_level}")
    h, w = low.shape[-2:]
    f, s = cfg.vae.downsample_factor, cfg.scale
    padded = _pad_to(low.float(), cfg.size_multiple * f // s)  # latent size a multiple of the UNet's
    lh, lw = padded.shape[-2] * s // f, padded.shape[-1] * s // f
    gens = make_generators(seeds)
    noise = draw_noise(gens, (cfg.vae.latent_channels, lh, lw))  # (B, C, H/f, W/f), CPU float32
    aug_noise = draw_noise(gens, tuple(padded.shape[1:]))
    device = model.device
    level = torch.full((low.shape[0],), noise_level, dtype=torch.long, device=device)
    cond = model.condition(padded.to(device), level, aug_noise.to(device))

    def denoiser(z, t):
        t = t.expand(z.shape[0]) if torch.is_tensor(t) and t.ndim == 0 else t
        return model.predict(z, t, cond, level).float()

    scheduler = make_scheduler(sampler, None, model.scheduler_config())
    latents = sample_scheduler(denoiser, scheduler, noise, steps=steps, generators=gens, eta=eta,
                               callback=callback, device=device)
    images = model.decode_latents(latents).float().clamp(-1, 1)
    return images[..., : h * s, : w * s]
