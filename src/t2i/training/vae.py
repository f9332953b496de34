"""Recipe: a pixel-space convolutional VAE, trained with the negative ELBO (beta-weighted KL).

    t2i train configs/shapes-vae.yaml --outdir runs/vae      # -> runs/vae/model.safetensors
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i.data.labels import ImageDataConfig, to_model_range
from t2i.models.vae import ConvVAE, ConvVAEConfig, elbo_loss, sample
from t2i.training.runs import copy_ema, load_checkpoint, run_config, save_run_config, start_run, write_sample_grid
from t2i.training.trainer import OptimConfig, Trainer

FAMILY = "vae"


@dataclass
class VAEOptimConfig(OptimConfig):
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3  # small conv VAEs tolerate a high Adam rate; warmup covers the start
    kl_weight: float = 1.0  # beta: 1 is the true ELBO; lower for sharper reconstructions


@dataclass
class VAETrainConfig:
    model: ConvVAEConfig = field(default_factory=ConvVAEConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: VAEOptimConfig = field(default_factory=VAEOptimConfig)
    seed: int = 0
    sample_n: int = 16  # images in each periodic grid (train.sample_every)


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
              stop_after: int | None = None) -> ConvVAE:
    """Train; writes `outdir/vae.ckpt` and, once finished, `outdir/model.safetensors` (EMA weights
    when train.ema_decay > 0). `stop_after` stops early (tests simulate a crash with it)."""
    outdir, data, model_cfg = start_run(cfg, outdir, FAMILY)
    config = run_config(cfg, FAMILY, model_cfg)
    save_run_config(config, outdir)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = ConvVAE(model_cfg)
    trainer = Trainer(FAMILY, {"vae": model}, cfg.train, outdir, cfg.seed, config)
    if resume:
        trainer.load()

    def on_sample(step):
        write_sample_grid(sample(model, cfg.sample_n, seed=0), outdir, step)

    trainer.fit(vae_loss_fn(data.images, cfg.train, model_cfg.latent_dim), on_sample=on_sample, stop_after=stop_after)
    if trainer.step < cfg.train.steps:
        return model
    trainer.apply_ema()
    model.eval().requires_grad_(False)
    model.save(outdir / "model.safetensors")
    return model


def model_from_checkpoint(path: str | Path, use_ema: bool = True) -> ConvVAE:
    """The model in a (possibly unfinished) run's checkpoint, EMA weights by default."""
    from t2i.config import from_dict

    state = load_checkpoint(Path(path), FAMILY)
    model = ConvVAE(from_dict(ConvVAEConfig, state["config"]["model"], where=f"{path}: model"))
    model.load_state_dict(state["modules"]["vae"], strict=True)
    if use_ema:
        copy_ema(list(model.parameters()), state["ema"])
    return model.eval()
