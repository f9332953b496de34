"""Recipe: pixel-space DDPM, eps-prediction with uniformly drawn timesteps (Ho et al. 2020, Alg. 1).

    t2i train configs/shapes-ddpm.yaml --outdir runs/ddpm    # -> runs/ddpm/model.safetensors

Class-conditional runs (data.classes: true) replace a `class_dropout` share of labels by the
"no class" label, so one model serves conditional, unconditional and guided sampling.
Text-conditional runs (model.conditioning: text) learn from the captions (shapes captions or a
folder's .txt sidecars) and replace a `caption_dropout` share of them by "" for the same reason.

    t2i train configs/shapes-ddpm-text.yaml --outdir runs/ddpm-text
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from t2i.config import BatchSize, Decay, Fraction, LearningRate, Seed, Steps, between
from t2i.data.labels import ImageDataConfig, to_model_range
from t2i.models.ddpm import DDPMConfig, PixelDDPM, sample
from t2i.training.runs import finish_run, open_run, write_sample_grid
from t2i.training.trainer import OptimConfig

FAMILY = "ddpm"


@dataclass
class DDPMOptimConfig(OptimConfig):
    steps: Steps = 10_000
    batch_size: BatchSize = 64
    lr: LearningRate = 2e-4  # Ho et al. used 2e-4 on CIFAR-10
    ema_decay: Decay = 0.999  # DDPM samples come from EMA weights (Ho et al.: 0.9999 over 800k steps)
    class_dropout: Fraction = 0.1  # class models: share of labels dropped to "no class"
    caption_dropout: Fraction = 0.1  # text models: share of captions dropped to "" (for guidance)


@dataclass
class DDPMTrainConfig:
    model: DDPMConfig = field(default_factory=DDPMConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: DDPMOptimConfig = field(default_factory=DDPMOptimConfig)
    seed: Seed = 0
    sample_n: Annotated[int, between(1, 1024)] = 16  # periodic grids (train.sample_every): DDIM, 50 steps
    sample_steps: Annotated[int, between(1, 10_000)] = 50
    # conditional models' grids: classifier-free guidance
    sample_guidance_scale: Annotated[float, between(0, 100)] = 1.0
    sample_prompts: tuple[str, ...] = ()  # text models' grids (default: the first training captions)


def ddpm_loss_fn(images: torch.Tensor, conds: torch.Tensor | None, null_cond, dropout: float, batch_size: int,
                 num_timesteps: int):
    """conds: per image, class labels (N,) or caption token ids (N, L); a `dropout` share of each
    batch's conditions becomes `null_cond` ("no class", or the ids of the empty caption)."""
    def loss_fn(modules, step, generator):
        model = modules["ddpm"]
        device = next(model.parameters()).device
        n = batch_size
        idx = torch.randint(0, len(images), (n,), generator=generator)
        x0 = to_model_range(images[idx])  # (B, 3, H, W)
        t = torch.randint(0, num_timesteps, (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        y = None
        if conds is not None:
            y = conds[idx].clone()
            y[torch.rand(n, generator=generator) < dropout] = null_cond
            y = y.to(device)
        return model(x0.to(device), t.to(device), noise.to(device), y), n

    return loss_fn


def _check_conditioning(cfg: DDPMTrainConfig) -> None:
    kind = cfg.model.conditioning
    if kind == "text" and cfg.data.classes:
        raise ValueError("model.conditioning: text learns from captions; set data.classes: false")
    if kind == "class" and not cfg.data.classes:
        raise ValueError("model.conditioning: class needs class labels; set data.classes: true")


def _conditions(model: PixelDDPM, cfg: DDPMTrainConfig, data) -> tuple[torch.Tensor | None, object, float]:
    """(per-image conditions, the dropped condition, the dropout share) for the loss."""
    if model.config.conditioning == "text":
        ids = torch.cat([model.token_ids(data.captions[i:i + 4096]) for i in range(0, len(data.captions), 4096)])
        return ids, model.token_ids([""])[0], cfg.train.caption_dropout
    return data.labels, model.null_class, cfg.train.class_dropout


def train_ddpm(cfg: DDPMTrainConfig, outdir: str | Path, resume: bool = False,
               stop_after: int | None = None, budget=None) -> PixelDDPM:
    """Train; writes `outdir/ddpm.ckpt` and, once finished, `outdir/model.safetensors` (EMA weights
    when train.ema_decay > 0). `stop_after` stops early (tests simulate a crash with it); a spent
    `budget` (t2i.training.budget.CPUBudget) stops early too but still writes the model."""
    _check_conditioning(cfg)
    outdir, data, model, trainer = open_run(cfg, outdir, FAMILY, PixelDDPM, resume)
    model_cfg = model.config
    prompts = None
    if model_cfg.conditioning == "text":
        prompts = list(cfg.sample_prompts or data.captions[:cfg.sample_n])
        prompts = [prompts[i % len(prompts)] for i in range(cfg.sample_n)]

    def on_sample(step):
        images = sample(model, cfg.sample_n, seed=0, prompt=prompts, steps=cfg.sample_steps,
                        guidance_scale=cfg.sample_guidance_scale if model_cfg.conditioning != "none" else 1.0)
        write_sample_grid(images, outdir, step)

    conds, null_cond, dropout = _conditions(model, cfg, data)
    loss_fn = ddpm_loss_fn(data.images, conds, null_cond, dropout, cfg.train.batch_size, model_cfg.num_train_timesteps)
    trainer.fit(loss_fn, on_sample=on_sample, stop_after=stop_after, budget=budget)
    return finish_run(trainer, model, outdir)

