"""Recipe: a DCGAN-style GAN trained in alternating discriminator / generator steps.

    t2i train configs/shapes-gan.yaml --outdir runs/gan      # -> runs/gan/model.safetensors

Two optimizers (Adam with beta1 = 0.5, as DCGAN) do not fit the single-optimizer Trainer, so the
loop is here; it keeps the Trainer's guarantees with the Trainer's parts: each step's randomness
comes from `step_generator(seed, step)` (exact resume), checkpoints are written atomically and
hold both networks, both optimizers, the generator's EMA, the step and both loss histories.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch

from t2i.checkpoints.family_file import save_family_file
from t2i.checkpoints.safe_load import check_tensor_kinds, misfit_is_load_error
from t2i.config import BatchSize, Decay, Fraction, LearningRate, Seed, Steps, at_least, between
from t2i.data.labels import ImageDataConfig, to_model_range
from t2i.errors import version
from t2i.models.gan import GAN, LOSSES, GANConfig, d_loss, g_loss, r1_penalty, sample
from t2i.training.budget import stopped
from t2i.training.runs import load_checkpoint, run_config, save_run_config, start_run, write_sample_grid
from t2i.training.trainer import (EMA, RESUME_HINT, OptimConfig, check_optimizer_state, checked_progress, lr_at,
                                  remove_run_leftovers, save_atomic, step_generator)

FAMILY = "gan"


@dataclass
class GANOptimConfig(OptimConfig):
    steps: Steps = 10_000  # one step = d_steps discriminator updates + one generator update
    batch_size: BatchSize = 64
    lr: LearningRate = 2e-4  # generator; DCGAN's rate
    warmup_steps: Steps = 0
    min_lr_ratio: Fraction = 1.0  # constant rate, as GANs are usually trained
    grad_clip: Annotated[float, at_least(0)] = 0.0  # 0: no clipping (R1 is the stabiliser of choice)
    ema_decay: Decay = 0.999  # of the generator: averaged weights give steadier samples
    lr_d: LearningRate = 2e-4  # discriminator
    beta1: Decay = 0.5  # DCGAN: momentum 0.9 oscillates in the adversarial game
    beta2: Decay = 0.999
    loss: Literal["nonsaturating", "hinge"] = "nonsaturating"
    r1_gamma: Annotated[float, at_least(0)] = 0.0  # R1 penalty weight on real data; 0 disables
    d_steps: Annotated[int, between(1, 1000)] = 1  # discriminator updates per generator update


@dataclass
class GANTrainConfig:
    model: GANConfig = field(default_factory=GANConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: GANOptimConfig = field(default_factory=GANOptimConfig)
    seed: Seed = 0
    sample_n: Annotated[int, between(1, 1024)] = 24  # images in each periodic grid (train.sample_every)

    def __post_init__(self):
        if self.train.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {LOSSES}, got {self.train.loss!r}")
        if self.train.d_steps < 1:
            raise ValueError(f"train.d_steps must be at least 1, got {self.train.d_steps}")


class GANTrainer:
    """Alternating updates of `gan.discriminator` and `gan.generator` on uint8 `images`."""

    def __init__(self, gan: GAN, images: torch.Tensor, labels: torch.Tensor | None, cfg: GANOptimConfig,
                 outdir: Path, seed: int, config: dict):
        from accelerate import Accelerator

        self.gan, self.images, self.labels, self.cfg, self.seed, self.config = gan, images, labels, cfg, seed, config
        self.checkpoint_path = Path(outdir) / f"{FAMILY}.ckpt"
        self.acc = Accelerator(cpu=not torch.cuda.is_available())
        betas = (cfg.beta1, cfg.beta2)
        opt_g = torch.optim.Adam(gan.generator.parameters(), lr=cfg.lr, betas=betas)
        opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=cfg.lr_d, betas=betas)
        self.G, self.D, self.opt_g, self.opt_d = self.acc.prepare(gan.generator, gan.discriminator, opt_g, opt_d)
        self.g_params = list(gan.generator.parameters())
        self.ema = EMA(self.g_params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step = 0
        self.g_losses: list[float] = []
        self.d_losses: list[float] = []
        self.stopped_on_budget = False  # fit ended early on a CPUBudget: export as if finished

    # -- checkpoints -------------------------------------------------------------------------
    def save(self) -> None:
        if not self.acc.is_main_process:
            return
        unwrap = self.acc.unwrap_model
        save_atomic({
            "kind": f"t2i-train-{FAMILY}", "t2i_version": version(), "config": self.config,
            "step": self.step, "losses": self.g_losses, "d_losses": self.d_losses,
            "modules": {"generator": unwrap(self.G).state_dict(), "discriminator": unwrap(self.D).state_dict()},
            "optimizer_g": self.opt_g.state_dict(), "optimizer_d": self.opt_d.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
        }, self.checkpoint_path)

    def load(self) -> bool:
        if self.acc.is_main_process:
            remove_run_leftovers(self.checkpoint_path.parent)
        if not self.checkpoint_path.is_file():
            return False
        state = load_checkpoint(self.checkpoint_path, FAMILY)
        with misfit_is_load_error(self.checkpoint_path, "this gan run", RESUME_HINT):
            for module, part in ((self.acc.unwrap_model(self.G), "generator"), (self.acc.unwrap_model(self.D), "discriminator")):
                check_tensor_kinds(module.state_dict(), state["modules"][part], self.checkpoint_path, "this gan run")
                module.load_state_dict(state["modules"][part], strict=True)
            self.opt_g.load_state_dict(state["optimizer_g"])
            self.opt_d.load_state_dict(state["optimizer_d"])
            check_optimizer_state(self.opt_g)
            check_optimizer_state(self.opt_d)
            if self.ema and state.get("ema"):
                self.ema.load_state_dict(state["ema"], self.g_params)
            step, g_losses = checked_progress(state["step"], state["losses"])
            d_losses = checked_progress(step, state["d_losses"])[1]
        self.step, self.g_losses, self.d_losses = step, g_losses, d_losses
        return True

    # -- one step ----------------------------------------------------------------------------
    def _batch(self, generator: torch.Generator):
        n = self.cfg.batch_size
        idx = torch.randint(0, len(self.images), (n,), generator=generator)
        z = torch.randn((n, self.gan.config.z_dim), generator=generator)
        y = self.labels[idx].to(self.acc.device) if self.labels is not None else None
        return to_model_range(self.images[idx]).to(self.acc.device), z.to(self.acc.device), y

    def _d_step(self, generator: torch.Generator) -> float:
        cfg = self.cfg
        real, z, y = self._batch(generator)
        with torch.no_grad():
            fake = self.G(z, y)  # fakes of the same classes as the real batch
        real.requires_grad_(cfg.r1_gamma > 0)
        real_logits = self.D(real, y)
        loss = d_loss(real_logits, self.D(fake, y), cfg.loss)
        if cfg.r1_gamma > 0:
            loss = loss + cfg.r1_gamma / 2 * r1_penalty(real_logits, real)
        self._update(loss, self.opt_d, self.D)
        return loss.item()

    def _g_step(self, generator: torch.Generator) -> float:
        _, z, y = self._batch(generator)
        self.D.requires_grad_(False)  # no discriminator gradients needed for the generator's update
        try:
            loss = g_loss(self.D(self.G(z, y), y), self.cfg.loss)
            self._update(loss, self.opt_g, self.G)
        finally:
            self.D.requires_grad_(True)
        return loss.item()

    def _update(self, loss: torch.Tensor, optimizer, module) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"gan: loss became {loss.item()} at step {self.step}; lower the learning "
                                     f"rates or add an R1 penalty (train.r1_gamma)")
        optimizer.zero_grad(set_to_none=True)
        self.acc.backward(loss)
        if self.cfg.grad_clip > 0:
            self.acc.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)
        optimizer.step()

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, on_sample=None, stop_after: int | None = None, budget=None) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        last = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=FAMILY, mininterval=5,
                   disable=not self.acc.is_local_main_process, dynamic_ncols=True)
        self.G.train(), self.D.train()
        budget_progress = budget.progress_from_now() if budget is not None else (lambda: 0.0)
        while self.step < last and not (budget is not None and budget.exhausted()):
            scale = lr_at(cfg, self.step, budget_progress()) / cfg.lr  # one schedule for both rates
            for group in self.opt_g.param_groups:
                group["lr"] = cfg.lr * scale
            for group in self.opt_d.param_groups:
                group["lr"] = cfg.lr_d * scale
            generator = step_generator(self.seed + self.acc.process_index * 104_729, self.step)
            d = sum(self._d_step(generator) for _ in range(cfg.d_steps)) / cfg.d_steps
            g = self._g_step(generator)
            if self.ema:
                self.ema.update(self.g_params, self.step)
            self.step += 1
            self.g_losses.append(g)
            self.d_losses.append(d)
            bar.update(1)
            bar.set_postfix(d=f"{d:.3f}", g=f"{g:.3f}", refresh=False)
            if cfg.log_every and self.step % cfg.log_every == 0 and self.acc.is_main_process:
                k = cfg.log_every
                bar.write(f"[gan] step {self.step}/{cfg.steps} d_loss {sum(self.d_losses[-k:]) / k:.4f} "
                          f"g_loss {sum(self.g_losses[-k:]) / k:.4f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
            if on_sample and cfg.sample_every and self.step % cfg.sample_every == 0:
                on_sample(self.step)
                self.G.train()
        bar.close()
        self.save()
        self.stopped_on_budget = stopped(budget, FAMILY, self.step, cfg.steps)


def train_gan(cfg: GANTrainConfig, outdir: str | Path, resume: bool = False,
              stop_after: int | None = None, budget=None) -> GAN:
    """Train; writes `outdir/gan.ckpt` and, once finished, `outdir/model.safetensors` (generator
    EMA weights when train.ema_decay > 0). `stop_after` stops early (tests simulate a crash); a
    spent `budget` (t2i.training.budget.CPUBudget) stops early too but still writes the model."""
    outdir, data, model_cfg = start_run(cfg, outdir, FAMILY)
    config = run_config(cfg, FAMILY, model_cfg)
    save_run_config(config, outdir)
    torch.manual_seed(cfg.seed)  # weight initialisation
    gan = GAN(model_cfg)
    trainer = GANTrainer(gan, data.images, data.labels, cfg.train, outdir, cfg.seed, config)
    if resume:
        trainer.load()

    def on_sample(step):
        write_sample_grid(sample(gan, cfg.sample_n, seed=0), outdir, step)

    trainer.fit(on_sample=on_sample, stop_after=stop_after, budget=budget)
    if trainer.step < cfg.train.steps and not trainer.stopped_on_budget:
        return gan
    if trainer.ema:
        trainer.ema.copy_to(trainer.g_params)
    gan.eval().requires_grad_(False)
    save_family_file(gan, outdir / "model.safetensors")
    return gan

