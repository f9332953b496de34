"""Recipe: a pixel-space convolutional VAE, trained with the negative ELBO (beta-weighted KL).

    t2i train configs/shapes-vae.yaml --outdir runs/vae      # -> runs/vae/model.safetensors
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from t2i.config import BatchSize, LearningRate, Seed, Steps, at_least, between
from t2i.data.labels import ImageDataConfig, to_model_range
from t2i.models.vae import ConvVAE, ConvVAEConfig, elbo_loss, sample
from t2i.training.runs import finish_run, open_run, write_sample_grid
from t2i.training.trainer import OptimConfig

FAMILY = "vae"


@dataclass
class VAEOptimConfig(OptimConfig):
    steps: Steps = 5000
    batch_size: BatchSize = 64
    lr: LearningRate = 1e-3  # small conv VAEs tolerate a high Adam rate; warmup covers the start
    kl_weight: Annotated[float, at_least(0)] = 1.0  # beta: 1 is the true ELBO; lower for sharper reconstructions


@dataclass
class VAETrainConfig:
    model: ConvVAEConfig = field(default_factory=ConvVAEConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: VAEOptimConfig = field(default_factory=VAEOptimConfig)
    seed: Seed = 0
    sample_n: Annotated[int, between(1, 1024)] = 16  # images in each periodic grid (train.sample_every)


def vae_loss_fn(images: torch.Tensor, cfg: VAEOptimConfig, latent_dim: int):
    def loss_fn(modules, step, generator):
        vae = modules["vae"]
        device = next(vae.parameters()).device
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=generator)
        x = to_model_range(images[idx]).to(device)  # (B, 3, R, R)
        eps = torch.randn((cfg.batch_size, latent_dim), generator=generator)  # reparameterisation noise
        recon, mu, logvar = vae(x, eps)
        loss, _, _ = elbo_loss(x, recon, mu, logvar, cfg.kl_weight)
        return loss, cfg.batch_size

    return loss_fn


def train_vae(cfg: VAETrainConfig, outdir: str | Path, resume: bool = False,
              stop_after: int | None = None, budget=None) -> ConvVAE:
    """Train; writes `outdir/vae.ckpt` and, once finished, `outdir/model.safetensors` (EMA weights
    when train.ema_decay > 0). `stop_after` stops early (tests simulate a crash with it); a spent
    `budget` (t2i.training.budget.CPUBudget) stops early too but still writes the model."""
    outdir, data, model, trainer = open_run(cfg, outdir, FAMILY, ConvVAE, resume)

    def on_sample(step):
        write_sample_grid(sample(model, cfg.sample_n, seed=0), outdir, step)

    trainer.fit(vae_loss_fn(data.images, cfg.train, model.config.latent_dim), on_sample=on_sample,
                stop_after=stop_after, budget=budget)
    return finish_run(trainer, model, outdir)

