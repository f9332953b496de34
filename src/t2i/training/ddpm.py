"""Recipe: pixel-space DDPM, eps-prediction with uniformly drawn timesteps (Ho et al. 2020, Alg. 1).

    t2i train configs/shapes-ddpm.yaml --outdir runs/ddpm    # -> runs/ddpm/model.safetensors

Class-conditional runs (data.classes: true) replace a `class_dropout` share of labels by the
"no class" label, so one model serves conditional, unconditional and guided sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from t2i.data.labels import ImageDataConfig, to_model_range
from t2i.models.ddpm import DDPMConfig, PixelDDPM, sample
from t2i.training.runs import copy_ema, load_checkpoint, run_config, save_run_config, start_run, write_sample_grid
from t2i.training.trainer import OptimConfig, Trainer

FAMILY = "ddpm"


@dataclass
class DDPMOptimConfig(OptimConfig):
    steps: int = 10_000
    batch_size: int = 64
    lr: float = 2e-4  # Ho et al. used 2e-4 on CIFAR-10
    ema_decay: float = 0.999  # DDPM samples come from EMA weights (Ho et al.: 0.9999 over 800k steps)
    class_dropout: float = 0.1  # conditional models: share of labels dropped to "no class"


@dataclass
class DDPMTrainConfig:
    model: DDPMConfig = field(default_factory=DDPMConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: DDPMOptimConfig = field(default_factory=DDPMOptimConfig)
    seed: int = 0
    sample_n: int = 16  # periodic grids (train.sample_every): DDIM, 50 steps
    sample_steps: int = 50


def ddpm_loss_fn(images: torch.Tensor, labels: torch.Tensor | None, cfg: DDPMOptimConfig, null_class: int,
                 num_timesteps: int):
    def loss_fn(modules, step, generator):
        model = modules["ddpm"]
        device = next(model.parameters()).device
        n = cfg.batch_size
        idx = torch.randint(0, len(images), (n,), generator=generator)
        x0 = to_model_range(images[idx])  # (B, 3, H, W)
        t = torch.randint(0, num_timesteps, (n,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        y = None
        if labels is not None:
            y = labels[idx].clone()
            y[torch.rand(n, generator=generator) < cfg.class_dropout] = null_class
            y = y.to(device)
        return model(x0.to(device), t.to(device), noise.to(device), y), n

    return loss_fn


def train_ddpm(cfg: DDPMTrainConfig, outdir: str | Path, resume: bool = False,
               stop_after: int | None = None) -> PixelDDPM:
    """Train; writes `outdir/ddpm.ckpt` and, once finished, `outdir/model.safetensors` (EMA weights
    when train.ema_decay > 0). `stop_after` stops early (tests simulate a crash with it)."""
    outdir, data, model_cfg = start_run(cfg, outdir, FAMILY)
    config = run_config(cfg, FAMILY, model_cfg)
    save_run_config(config, outdir)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = PixelDDPM(model_cfg)
    trainer = Trainer(FAMILY, {"ddpm": model}, cfg.train, outdir, cfg.seed, config)
    if resume:
        trainer.load()

    def on_sample(step):
        images = sample(model, cfg.sample_n, seed=0, steps=cfg.sample_steps)
        write_sample_grid(images, outdir, step)

    loss_fn = ddpm_loss_fn(data.images, data.labels, cfg.train, model.null_class, model_cfg.num_train_timesteps)
    trainer.fit(loss_fn, on_sample=on_sample, stop_after=stop_after)
    if trainer.step < cfg.train.steps:
        return model
    trainer.apply_ema()
    model.eval().requires_grad_(False)
    model.save(outdir / "model.safetensors")
    return model


def model_from_checkpoint(path: str | Path, use_ema: bool = True) -> PixelDDPM:
    """The model in a (possibly unfinished) run's checkpoint, EMA weights by default."""
    from t2i.config import from_dict

    state = load_checkpoint(Path(path), FAMILY)
    model = PixelDDPM(from_dict(DDPMConfig, state["config"]["model"], where=f"{path}: model"))
    model.load_state_dict(state["modules"]["ddpm"], strict=True)
    if use_ema:
        copy_ema(list(model.parameters()), state["ema"])
    return model.eval()
