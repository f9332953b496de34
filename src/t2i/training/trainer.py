"""A small training loop on accelerate: optimizer, LR schedule, EMA, atomic checkpoints, exact resume.

Exact resume without saving RNG streams: every step draws its randomness (batch indices, noise,
timesteps, dropout) from a generator seeded by (run seed, step), so a resumed run replays the
same steps an uninterrupted one would. What a checkpoint holds is then just weights, optimizer,
EMA, the step and the loss history.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn


@dataclass
class OptimConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay from lr down to lr * min_lr_ratio
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    log_every: int = 50
    checkpoint_every: int = 500
    sample_every: int = 0  # 0: no periodic sample grids


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one training step: a pure function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919) % (2**63 - 1))


def lr_at(cfg: OptimConfig, step: int, time_progress: float = 0.0) -> float:
    """Warm-up, then cosine decay to lr * min_lr_ratio. `time_progress` (0..1: the share of a CPU
    budget spent) moves the decay ahead when a budget will stop the run before cfg.steps, so a
    budget-stopped run still ends at the low learning rate a finished one ends at."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_progress)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class EMA:
    """Exponential moving average of parameters (shadow copies kept in float32).

    The decay warms up as min(decay, (1 + step) / (10 + step)), as diffusers' EMAModel does: a fixed
    0.999 from the first step would leave exp(-step / 1000) of the random initial weights in the
    average, so a short or budget-stopped run (a few hundred steps) would sample from mostly
    untrained weights."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]

    def decay_at(self, step: int) -> float:
        """The decay used for the update after `step` earlier updates."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, params: list[nn.Parameter], step: int) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1 - self.decay_at(step))

    @torch.no_grad()
    def copy_to(self, params: list[nn.Parameter]) -> None:
        for shadow, p in zip(self.shadow, params):
            p.copy_(shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.shadow = [t.float() for t in state["shadow"]]


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename: the old checkpoint stays
    intact until the new one is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


LossFn = Callable[[dict[str, nn.Module], int, torch.Generator], tuple[torch.Tensor, int]]


class Trainer:
    """Trains `modules` (name -> module) by minimising `loss_fn(modules, step, generator)`.

    `loss_fn` returns (loss, number of images in the step) for the progress line."""

    def __init__(self, name: str, modules: dict[str, nn.Module], cfg: OptimConfig, outdir: Path,
                 seed: int, run_config: dict, accelerator=None):
        from accelerate import Accelerator

        self.name, self.cfg, self.seed, self.run_config = name, cfg, seed, run_config
        self.checkpoint_path = Path(outdir) / f"{name}.ckpt"
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.modules = modules
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.params = params
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        names = list(modules)
        prepared = self.accelerator.prepare(*modules.values(), optimizer)
        self.prepared = dict(zip(names, prepared[:-1]))
        self.optimizer = prepared[-1]
        self.ema = EMA(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step = 0
        self.losses: list[float] = []
        self.stopped_on_budget = False  # fit ended early on a CPUBudget: finish the run as if done

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        from t2i.checkpoints.diffusers_folder import _t2i_version

        unwrap = self.accelerator.unwrap_model
        return {
            "kind": f"t2i-train-{self.name}",
            "t2i_version": _t2i_version(),
            "config": self.run_config,
            "step": self.step,
            "losses": self.losses,
            "modules": {k: unwrap(m).state_dict() for k, m in self.prepared.items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
        }

    def save(self) -> None:
        if self.accelerator.is_main_process:
            save_atomic(self.state_dict(), self.checkpoint_path)

    def load(self) -> bool:
        """Resume from this stage's checkpoint if there is one; True when loaded."""
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        for k, m in self.prepared.items():
            self.accelerator.unwrap_model(m).load_state_dict(state["modules"][k], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema and state["ema"]:
            self.ema.load_state_dict(state["ema"])
        self.step, self.losses = state["step"], list(state["losses"])
        return True

    def apply_ema(self) -> None:
        """Put the EMA weights into the modules (after training, for sampling and export)."""
        if self.ema:
            self.ema.copy_to(self.params)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, loss_fn: LossFn, on_sample: Callable[[int], None] | None = None,
            stop_after: int | None = None, budget=None) -> None:
        """Run until cfg.steps (or `stop_after` more steps: used by tests to simulate a crash), or
        until `budget` (a t2i.training.budget.CPUBudget) is spent: then `stopped_on_budget` is set."""
        from tqdm.auto import tqdm

        from t2i.training.budget import stopped

        cfg, acc = self.cfg, self.accelerator
        last = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, mininterval=5,
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        for module in self.prepared.values():
            module.train()
        t0, seen = time.perf_counter(), 0
        budget_progress = budget.progress_from_now() if budget is not None else (lambda: 0.0)
        while self.step < last and not (budget is not None and budget.exhausted()):
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(cfg, self.step, budget_progress())
            generator = step_generator(self.seed + acc.process_index * 104_729, self.step)
            loss, n_images = loss_fn(self.prepared, self.step, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{self.name}: loss became {loss.item()} at step {self.step}; "
                                         f"lower the learning rate or check the data")
            acc.backward(loss)
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema:
                self.ema.update(self.params, self.step)
            self.step += 1
            self.losses.append(loss.item())
            seen += n_images * acc.num_processes
            rate = seen / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(self.losses[-50:]) / len(self.losses[-50:]):.4f}",
                            img_s=f"{rate:.1f}", refresh=False)
            if cfg.log_every and self.step % cfg.log_every == 0 and acc.is_main_process:
                recent = self.losses[-cfg.log_every:]
                bar.write(f"[{self.name}] step {self.step}/{cfg.steps} loss {sum(recent) / len(recent):.5f} "
                          f"lr {lr_at(cfg, self.step - 1):.2e} {rate:.1f} img/s")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save()
            if on_sample and cfg.sample_every and self.step % cfg.sample_every == 0:
                on_sample(self.step)
                for module in self.prepared.values():
                    module.train()
        bar.close()
        self.save()
        self.stopped_on_budget = stopped(budget, self.name, self.step, cfg.steps)
