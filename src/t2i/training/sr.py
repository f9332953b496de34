"""Recipe: super-resolution latent diffusion (t2i.models.sr) on high-res images, low-res made on the fly.

    t2i train configs/shapes-sr.yaml --outdir runs/shapes-sr        # 32 -> 64
    t2i train configs/shapes-sr-128.yaml --outdir runs/shapes-sr-128  # 64 -> 128
    t2i upscale small.png --model runs/shapes-sr -o big.png

The first stage (`first_stage`: "default" = the bundled model's VAE, or an autoencoder run / model
file / diffusers folder) is loaded, frozen and copied into the SR model; the model's `vae` shape comes
from it. Every training image is encoded once (posterior mean, cached in `latents.pt`), and
`model.scaling_factor` is set to 1 / std of those latents. Each step draws a batch, degrades the
high-res images (a random Gaussian blur, then area or bicubic downsampling, per image) and noises
the low-res ones to a random augmentation level in [0, max_noise_level]. All randomness comes from
the trainer's per-step generator, so a resumed run replays the same steps.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F

from t2i.checkpoints.family_file import load_family_file
from t2i.checkpoints.registry import bundled_model_dir
from t2i.config import BatchSize, Decay, Fraction, LearningRate, Seed, Steps, between
from t2i.data.cache import load_cache, save_cache
from t2i.data.labels import ImageDataConfig, to_model_range
from t2i.errors import ModelLoadError
from t2i.models.autoencoder import KLAutoencoder
from t2i.models.common import to_pil_images
from t2i.models.ldm import VAEConfig
from t2i.models.sr import FAMILY, SRConfig, SuperResolution, upscale_tensor
from t2i.training.runs import finish_run, run_config, save_run_config, start_run, write_sample_grid
from t2i.training.trainer import OptimConfig, Trainer


@dataclass
class SROptimConfig(OptimConfig):
    steps: Steps = 10_000
    batch_size: BatchSize = 64
    lr: LearningRate = 2e-4
    ema_decay: Decay = 0.999


@dataclass
class DegradeConfig:
    # Gaussian blur sigma drawn in [0, max] (high-res pixels) before downsampling
    blur_sigma_max: Annotated[float, between(0, 100)] = 0.6
    p_bicubic: Fraction = 0.5  # share of images downsampled bicubic (antialiased); the rest by area (box)


@dataclass
class SRTrainConfig:
    model: SRConfig = field(default_factory=SRConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: SROptimConfig = field(default_factory=SROptimConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    first_stage: str = "default"  # "default" (bundled VAE), an autoencoder run/file or a diffusers folder
    scale_latents: bool = True  # set model.scaling_factor to 1 / std of the training latents
    encode_batch_size: BatchSize = 64
    seed: Seed = 0
    # periodic grids (train.sample_every): DDIM 50 steps on the first training images
    sample_n: Annotated[int, between(1, 1024)] = 8


# ---------------------------------------------------------------------------- first stage


def load_first_stage(spec: str) -> tuple[dict[str, torch.Tensor], VAEConfig]:
    """(AutoencoderKL state dict, its VAEConfig) from `default`, a diffusers model/LDM run folder
    (its vae/), a KL autoencoder run folder or its autoencoder .safetensors file."""
    path = Path(spec)
    if spec == "default":
        return _diffusers_vae(bundled_model_dir() / "vae")
    if path.is_dir() and (path / "autoencoder.safetensors").is_file():
        path = path / "autoencoder.safetensors"
    if path.is_file():
        ae = load_family_file(KLAutoencoder, path)
        return ae.vae.state_dict(), ae.config.vae
    for folder in (path / "vae", path / "model" / "vae", path):
        if (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file():
            return _diffusers_vae(folder)
    raise ModelLoadError(f"first_stage {spec!r}: give `default`, a KL autoencoder run or .safetensors file, "
                         f"or a diffusers model folder with a vae/")


def _diffusers_vae(folder: Path) -> tuple[dict[str, torch.Tensor], VAEConfig]:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    c = vae.config
    if set(c.down_block_types) != {"DownEncoderBlock2D"} or c.in_channels != 3:
        raise ValueError(f"{folder}: only plain RGB AutoencoderKL first stages are supported")
    shape = VAEConfig(tuple(c.block_out_channels), c.layers_per_block, c.latent_channels, c.norm_num_groups)
    return vae.state_dict(), shape


# ---------------------------------------------------------------------------- data


def degrade(x: torch.Tensor, scale: int, cfg: DegradeConfig, generator: torch.Generator) -> torch.Tensor:
    """High-res (B, 3, H, W) in [-1, 1] -> low-res (B, 3, H / scale, W / scale): per image a Gaussian
    blur of random sigma, then area or antialiased bicubic downsampling (chosen at random). The
    whole batch is processed at once on x's device (one grouped convolution per direction, both
    downsamplings, then a per-image choice): a loop over images kept a GPU waiting on the CPU."""
    sigmas = torch.rand(len(x), generator=generator) * cfg.blur_sigma_max
    bicubic = torch.rand(len(x), generator=generator) < cfg.p_bicubic
    x = gaussian_blur(x, sigmas)
    size = (x.shape[-2] // scale, x.shape[-1] // scale)
    area = F.interpolate(x, size=size, mode="area")
    if not bicubic.any():
        return area.clamp(-1, 1)
    cubic = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return torch.where(bicubic.to(x.device).view(-1, 1, 1, 1), cubic, area).clamp(-1, 1)


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), reflect-padded, with one sigma or one per image (B,);
    an image whose sigma is < 0.1 is left as it is. Every image uses the radius of the largest
    sigma (2.5 sigma, at least 1), so the batch is one grouped convolution per direction."""
    b, c = x.shape[:2]
    sigmas = torch.as_tensor(sigma, dtype=torch.float32).expand(b)
    if not (sigmas >= 0.1).any():
        return x
    radius = max(1, math.ceil(2.5 * sigmas.max().item()))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (taps / sigmas.clamp_min(0.1)[:, None]) ** 2)  # (B, K)
    kernels = torch.where((sigmas < 0.1)[:, None], (taps == 0).float(), kernels)  # identity
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0).to(x)  # (B*C, K)
    y = F.pad(x.reshape(1, b * c, *x.shape[-2:]), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernels[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kernels[:, None, :, None], groups=b * c)
    return y.reshape(x.shape)


@torch.no_grad()
def encode_latents(model: SuperResolution, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Posterior means of (N, H, W, 3) uint8 images, unscaled (N, C, H/f, W/f), float32 on the CPU."""
    device = model.device
    model.vae.eval()
    return torch.cat([model.vae.encode(to_model_range(images[i:i + batch_size]).to(device)).latent_dist.mean.float().cpu()
                      for i in range(0, len(images), batch_size)])


def _cached_latents(model: SuperResolution, images: torch.Tensor, cfg: SRTrainConfig, outdir: Path) -> torch.Tensor:
    path = outdir / "latents.pt"
    key = {"first_stage": cfg.first_stage, "n": len(images), "resolution": cfg.model.resolution}
    cached = load_cache(path, lambda c: c["key"] == key)
    if cached is not None:
        return cached["latents"]
    latents = encode_latents(model, images, cfg.encode_batch_size)
    save_cache({"key": key, "latents": latents}, path)
    return latents


def sr_loss_fn(images: torch.Tensor, latents: torch.Tensor, model_cfg: SRConfig, cfg: SRTrainConfig):
    """images (N, H, W, 3) uint8 and their scaled latents (N, C, H/f, W/f) -> the trainer's loss_fn."""
    n, steps, levels = cfg.train.batch_size, model_cfg.schedule.num_train_timesteps, model_cfg.max_noise_level

    def loss_fn(modules, step, generator):
        model = modules[FAMILY]
        device = next(model.parameters()).device
        idx = torch.randint(0, len(images), (n,), generator=generator)
        high = to_model_range(images[idx]).to(device)
        low = degrade(high, model_cfg.scale, cfg.degrade, generator)  # (B, 3, h, w) on the device
        z = latents[idx]  # (B, C, H/f, W/f)
        t = torch.randint(0, steps, (n,), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        level = torch.randint(0, levels + 1, (n,), generator=generator)
        low_noise = torch.randn(low.shape, generator=generator)
        args = (z, low, t, noise, level, low_noise)
        return model(*(a.to(device) for a in args)), n

    return loss_fn


# ---------------------------------------------------------------------------- the run


def _model_config(cfg: SRTrainConfig, vae_shape: VAEConfig) -> SRConfig:
    declared = cfg.model.vae
    if declared != VAEConfig() and declared != vae_shape:
        raise ValueError(f"model.vae {declared} differs from the first stage's shape {vae_shape}; "
                         f"leave model.vae out (it is read from first_stage)")
    return dataclasses.replace(cfg.model, vae=vae_shape)


def train_sr(cfg: SRTrainConfig, outdir: str | Path, resume: bool = False,
             stop_after: int | None = None, budget=None) -> SuperResolution:
    """Train; writes `outdir/sr.ckpt` and, once finished, `outdir/model.safetensors` (EMA weights of
    the UNet, the frozen VAE inside). `stop_after` stops early (tests simulate a crash with it);
    `budget` (t2i.training.budget.CPUBudget) stops early too but still writes the model."""
    outdir, data, _ = start_run(cfg, outdir, FAMILY)
    vae_state, vae_shape = load_first_stage(cfg.first_stage)
    model_cfg = _model_config(cfg, vae_shape)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = SuperResolution(model_cfg)
    model.vae.load_state_dict(vae_state, strict=True)
    latents = _cached_latents(model, data.images, cfg, outdir)
    if cfg.scale_latents:
        model_cfg = dataclasses.replace(model_cfg, scaling_factor=1.0 / latents.std().item())
        model.config = model_cfg
    config = run_config(cfg, FAMILY, model_cfg)
    save_run_config(config, outdir)
    trainer = Trainer(FAMILY, {FAMILY: model}, cfg.train, outdir, cfg.seed, config)
    if resume:
        trainer.load()
    preview = to_model_range(data.images[:cfg.sample_n])

    def on_sample(step):
        low = degrade(preview, model_cfg.scale, DegradeConfig(blur_sigma_max=0.0, p_bicubic=0.0), torch.Generator())
        images = upscale_tensor(model, low.to(model.device), list(range(len(low))), steps=50)
        write_sample_grid(to_pil_images(torch.cat([images.cpu(), preview])), outdir, step)

    trainer.fit(sr_loss_fn(data.images, latents * model_cfg.scaling_factor, model_cfg, cfg),
                on_sample=on_sample, stop_after=stop_after, budget=budget)
    return finish_run(trainer, model, outdir)
