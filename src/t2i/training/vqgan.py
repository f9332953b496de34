"""Recipe: VQGAN first stage (Esser et al. 2021), `family: vqgan`.

The generator (the VQModel) and the PatchGAN discriminator alternate on each batch: a generator
step on L1 + codebook + commitment (+ the adaptive-weight hinge GAN term once
`loss.disc_start` steps have passed), then a discriminator step on the hinge loss with the same
batch. Two optimizers, hence this small loop instead of `Trainer.fit` (one loss, one optimizer);
it keeps the trainer's rules: the randomness of step s comes from `step_generator(seed, s)`, so
a resumed run replays exactly, and checkpoints are written atomically. Single process (CPU or
one GPU).

Outputs in `outdir`: vqgan.ckpt (training state), vqgan.safetensors (the model, its config
embedded), vqgan_report.json (reconstruction L1 and codebook usage on training images).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch

from t2i.atomic import write_text
from t2i.checkpoints.family_file import save_family_file
from t2i.checkpoints.safe_load import check_tensor_kinds, load_checkpoint_dict, misfit_is_load_error
from t2i.config import Crop, Decay, Seed, at_least, between, save_yaml, to_dict
from t2i.data.images import load_image_source
from t2i.errors import version
from t2i.models.vqgan import (VQGAN, DiscriminatorConfig, PatchDiscriminator, VQGANConfig, VQGANLoss,
                              VQGANLossConfig, codebook_usage)
from t2i.training.budget import stopped
from t2i.training.ldm import DataConfig, _random_crops, _to_model_range
from t2i.training.trainer import (RESUME_HINT, OptimConfig, check_optimizer_state, checked_progress, lr_at,
                                  remove_run_leftovers, save_atomic, step_generator)


@dataclass
class VQGANOptimConfig(OptimConfig):
    disc_lr: Annotated[float, at_least(0)] = 0.0  # 0: the same as lr
    betas: tuple[Decay, Decay] = (0.5, 0.9)  # the VQGAN code's Adam betas: less momentum for the GAN game
    crop: Crop = 0  # > 0: train on random crops of this size (the autoencoder is convolutional)


@dataclass
class VQGANTrainConfig:
    model: VQGANConfig = field(default_factory=VQGANConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: VQGANLossConfig = field(default_factory=VQGANLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: VQGANOptimConfig = field(default_factory=VQGANOptimConfig)
    seed: Seed = 0
    report_images: Annotated[int, between(0, 10**9)] = 1024  # training images for the final codebook-usage report


class _Run:
    """Modules, optimizers and history of one VQGAN training run."""

    def __init__(self, cfg: VQGANTrainConfig, device: torch.device, perceptual=None):
        torch.manual_seed(cfg.seed)  # weight initialisation
        self.cfg = cfg
        self.model = VQGAN(cfg.model).to(device)
        self.disc = PatchDiscriminator(cfg.disc).to(device)
        self.objective = VQGANLoss(cfg.loss, perceptual).to(device)
        o = cfg.optim
        self.opt_g = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.opt_d = torch.optim.AdamW(self.disc.parameters(), lr=o.disc_lr or o.lr, betas=o.betas,
                                       weight_decay=o.weight_decay)
        self.step = 0
        self.history: dict[str, list[float]] = {}

    def state_dict(self) -> dict:
        return {"kind": "t2i-train-vqgan", "t2i_version": version(), "config": to_dict(self.cfg),
                "step": self.step, "losses": self.history.get("loss", []), "history": self.history,
                "modules": {"vqgan": self.model.state_dict(), "disc": self.disc.state_dict()},
                "optimizers": {"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["modules"]["vqgan"], strict=True)
        self.disc.load_state_dict(state["modules"]["disc"], strict=True)
        self.opt_g.load_state_dict(state["optimizers"]["g"])
        self.opt_d.load_state_dict(state["optimizers"]["d"])
        check_optimizer_state(self.opt_g)
        check_optimizer_state(self.opt_d)
        self.step = checked_progress(state["step"], [])[0]
        self.history = {str(k): checked_progress(0, v)[1] for k, v in state["history"].items()}

    def record(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def train_step(self, x: torch.Tensor, time_progress: float = 0.0) -> dict[str, float]:
        o = self.cfg.optim
        lr = lr_at(o, self.step, time_progress)
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        for group in self.opt_d.param_groups:
            group["lr"] = lr * (o.disc_lr or o.lr) / o.lr
        disc_on = self.objective.disc_active(self.step)
        # generator: the discriminator is only a fixed critic here, so it gathers no gradients
        self.disc.requires_grad_(False)
        out = self.model(x)
        loss, logs = self.objective.generator_loss(self.model, out, x, self.disc if disc_on else None, self.step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"vqgan: loss became {loss.item()} at step {self.step}; "
                                     f"lower the learning rate or check the data")
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        self.opt_g.step()
        # discriminator: same batch, the reconstructions as the fakes
        self.disc.requires_grad_(True)
        if disc_on:
            d_loss, d_logs = self.objective.discriminator_loss(self.disc, x, out.recon)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.disc.parameters(), o.grad_clip)
            self.opt_d.step()
            logs.update(d_logs)
        self.step += 1
        return logs


def _log(run: _Run, every: int) -> None:
    parts = []
    for key, values in run.history.items():
        recent = values[-every:]
        parts.append(f"{key} {sum(recent) / len(recent):.4f}")
    print(f"[vqgan] step {run.step}/{run.cfg.optim.steps} " + " ".join(parts), file=sys.stderr, flush=True)


def train_vqgan(cfg: VQGANTrainConfig, outdir: str | Path, resume: bool = False, stop_after: int | None = None,
                perceptual=None, device: str | None = None, budget=None) -> VQGAN:
    """Train the first stage; `stop_after` steps (tests: a simulated crash) leaves the run
    unfinished; a spent `budget` (t2i.training.budget.CPUBudget) stops early but still writes the
    model; `perceptual` is an optional distance network (see t2i.models.vqgan)."""
    if cfg.optim.ema_decay:
        raise ValueError("the vqgan recipe keeps no EMA of the weights: set optim.ema_decay to 0")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, outdir / "config.yaml")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run = _Run(cfg, dev, perceptual)
    checkpoint = outdir / "vqgan.ckpt"
    if resume:
        remove_run_leftovers(outdir)
    if resume and checkpoint.is_file():
        state = load_checkpoint_dict(checkpoint, "vqgan training checkpoint", ("modules", "optimizers", "step", "history"))
        with misfit_is_load_error(checkpoint, "this vqgan run", RESUME_HINT):
            for module, part in ((run.model, "vqgan"), (run.disc, "disc")):
                check_tensor_kinds(module.state_dict(), state["modules"][part], checkpoint, "this vqgan run")
            run.load_state_dict(state)
    images = load_image_source(cfg.data, cfg.model.resolution, cache_dir=outdir / "cache").images
    o = cfg.optim
    last = o.steps if stop_after is None else min(o.steps, run.step + stop_after)
    run.model.train()
    run.disc.train()
    budget_progress = budget.progress_from_now() if budget is not None else (lambda: 0.0)
    while run.step < last and not (budget is not None and budget.exhausted()):
        generator = step_generator(cfg.seed, run.step)
        idx = torch.randint(0, len(images), (o.batch_size,), generator=generator)
        batch = images[idx]
        if o.crop:
            batch = _random_crops(batch, o.crop, generator)
        run.record(run.train_step(_to_model_range(batch).to(dev), budget_progress()))
        if o.log_every and run.step % o.log_every == 0:
            _log(run, o.log_every)
        if o.checkpoint_every and run.step % o.checkpoint_every == 0:
            save_atomic(run.state_dict(), checkpoint)
    save_atomic(run.state_dict(), checkpoint)
    model = run.model.eval().requires_grad_(False)
    on_budget = stopped(budget, "vqgan", run.step, o.steps)
    if run.step < o.steps and not on_budget:
        return model
    save_family_file(model, outdir / "vqgan.safetensors")
    report = evaluate_first_stage(model, images[:cfg.report_images])
    write_text(outdir / "vqgan_report.json", json.dumps(report, indent=2))
    print(f"[vqgan] codebook usage {report['codebook_used']:.1%} of {model.num_codes} codes, perplexity "
          f"{report['perplexity']:.1f}, reconstruction L1 {report['recon_l1']:.4f}", file=sys.stderr)
    return model


@torch.no_grad()
def evaluate_first_stage(model: VQGAN, images_uint8: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Reconstruction L1 (in [-1, 1] units) and codebook usage on (N, H, W, 3) uint8 images."""
    device = next(model.parameters()).device
    x = _to_model_range(images_uint8)
    l1 = sum((model(x[i:i + batch_size].to(device)).recon.cpu() - x[i:i + batch_size]).abs().sum().item()
             for i in range(0, len(x), batch_size)) / x.numel()
    used, perplexity = codebook_usage(model, x, batch_size)
    return {"recon_l1": l1, "codebook_used": used, "perplexity": perplexity, "images": len(x)}
