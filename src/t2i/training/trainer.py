"""A small training loop on accelerate: optimizer, LR schedule, EMA, atomic checkpoints, exact resume.

Exact resume without saving RNG streams: every step draws its randomness (batch indices, noise,
timesteps, dropout) from a generator seeded by (run seed, step), so a resumed run replays the
same steps an uninterrupted one would. What a checkpoint holds is then just weights, optimizer,
EMA, the step and the loss history.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable

import torch
from torch import nn

from t2i.atomic import atomic_file, remove_leftovers
from t2i.checkpoints.safe_load import check_tensor_kinds, load_checkpoint_dict, misfit_is_load_error
from t2i.config import BatchSize, Decay, Fraction, LearningRate, Steps, at_least
from t2i.errors import version
from t2i.training.budget import stopped


LR_SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    steps: Steps = 1000
    batch_size: BatchSize = 32
    lr: LearningRate = 1e-4
    warmup_steps: Steps = 100
    min_lr_ratio: Fraction = 0.1  # cosine decay from lr down to lr * min_lr_ratio
    weight_decay: Annotated[float, at_least(0)] = 0.0
    grad_clip: Annotated[float, at_least(0)] = 1.0  # 0: no clipping
    ema_decay: Decay = 0.0  # 0 disables EMA
    log_every: Steps = 50  # 0: never (likewise for the next two)
    checkpoint_every: Steps = 500
    sample_every: Steps = 0  # 0: no periodic sample grids
    grad_accum: int = 1  # micro-batches per optimizer step (gradients summed, the loss averaged)
    lr_schedule: str = "cosine"  # after warm-up: cosine (to lr * min_lr_ratio), linear (likewise) or constant

    def __post_init__(self):
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be at least 1, got {self.grad_accum}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one training step: a pure function of (seed, step)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919) % (2**63 - 1))


def lr_at(cfg: OptimConfig, step: int, time_progress: float = 0.0) -> float:
    """Warm-up, then cosine (or linear) decay to lr * min_lr_ratio, or a constant lr
    (cfg.lr_schedule). `time_progress` (0..1: the share of a CPU budget spent) moves the decay
    ahead when a budget will stop the run before cfg.steps, so a budget-stopped run still ends at
    the low learning rate a finished one ends at."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    schedule = getattr(cfg, "lr_schedule", "cosine")
    if schedule == "constant":
        return cfg.lr
    progress = min(1.0, max((step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps), time_progress))
    falloff = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * falloff)


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

    def load_state_dict(self, state: dict, params: list[nn.Parameter] | None = None) -> None:
        """`params` given: the shadows must match them in number and shape (a checkpoint of
        another model would otherwise fail later, inside the update)."""
        shadow = [t.float() for t in state["shadow"]]
        if params is not None and [s.shape for s in shadow] != [p.shape for p in params]:
            raise ValueError(f"the EMA holds {len(shadow)} tensors that do not match the {len(params)} parameters")
        self.decay, self.shadow = float(state["decay"]), shadow


def save_atomic(obj, path: Path) -> None:
    """torch.save through t2i.atomic (temporary file beside `path`, fsync, rename): the old
    checkpoint stays intact until the new one is complete, and a full disk is an OutputError
    naming the file rather than torch's `unexpected pos`."""
    with atomic_file(path) as f:
        torch.save(obj, f)


def remove_run_leftovers(outdir: Path) -> None:
    """On resume: remove the temporary files and staging folders (t2i.atomic.TMP_PREFIX) that a
    killed run left in its folder; a kill -9 runs no cleanup, so nothing else ever would."""
    removed = remove_leftovers(outdir)
    if removed:
        print(f"removed {len(removed)} temporary file(s) an interrupted run left in {outdir}", file=sys.stderr)


RESUME_HINT = "resume with the config the run was started with, or move the file away to start over"


def checked_progress(step, losses) -> tuple[int, list[float]]:
    """A checkpoint's step count and loss history, checked (they drive the loop and its log)."""
    losses = list(losses)
    if type(step) is not int or step < 0 or not all(isinstance(x, float) for x in losses):
        raise ValueError(f"step {step!r} or the loss history is not what a t2i checkpoint holds")
    return step, losses


def check_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Loaded optimizer state (e.g. Adam's moments) shaped like the parameters: torch does not
    check this on load, and a misfit would fail at the first step."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise ValueError(f"optimizer state {name!r} has shape {tuple(value.shape)} for a parameter "
                                     f"of shape {tuple(p.shape)}")


LossFn = Callable[[dict[str, nn.Module], int, torch.Generator], tuple[torch.Tensor, int]]


class Trainer:
    """Trains `modules` (name -> module) by minimising `loss_fn(modules, step, generator)`.

    `loss_fn` returns (loss, number of images in the step) for the progress line; with
    cfg.grad_accum > 1 it is called that many times per step (same generator, continuing).

    trained_only: checkpoints hold only the parameters that train (requires_grad), not the frozen
    rest, so a LoRA's checkpoint is megabytes, not the whole UNet. param_groups: optimizer groups
    ({"params": [...], "lr_scale": x}; default one group of every trained parameter); each group's
    learning rate is lr_at(...) * its lr_scale. make_optimizer(groups, lr, weight_decay): another
    optimizer than AdamW."""

    def __init__(self, name: str, modules: dict[str, nn.Module], cfg: OptimConfig, outdir: Path,
                 seed: int, run_config: dict, accelerator=None, *, trained_only: bool = False,
                 param_groups: list[dict] | None = None, make_optimizer: Callable | None = None):
        from accelerate import Accelerator

        self.name, self.cfg, self.seed, self.run_config = name, cfg, seed, run_config
        self.checkpoint_path = Path(outdir) / f"{name}.ckpt"
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.modules = modules
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.params = params
        self.trained_only = trained_only
        groups = param_groups or [{"params": params}]
        optimizer = (make_optimizer or torch.optim.AdamW)(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
        unwrap = self.accelerator.unwrap_model
        return {
            "kind": f"t2i-train-{self.name}",
            "t2i_version": version(),
            "config": self.run_config,
            "step": self.step,
            "losses": self.losses,
            "modules": {k: self._module_state(unwrap(m)) for k, m in self.prepared.items()},
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
        }

    def _module_state(self, module: nn.Module) -> dict:
        if not self.trained_only:
            return module.state_dict()
        return {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}

    def _load_module_state(self, module: nn.Module, state: dict) -> None:
        if not self.trained_only:
            module.load_state_dict(state, strict=True)
            return
        trained = {k for k, p in module.named_parameters() if p.requires_grad}
        if set(state) != trained:
            raise ValueError(f"{self.checkpoint_path} holds other trained weights than this run trains "
                             f"({len(set(state) ^ trained)} differ, e.g. {sorted(set(state) ^ trained)[0]!r}); "
                             f"resume with the settings it was started with")
        module.load_state_dict(state, strict=False)

    def save(self) -> None:
        if self.accelerator.is_main_process:
            save_atomic(self.state_dict(), self.checkpoint_path)

    def load(self) -> bool:
        """Resume from this stage's checkpoint if there is one; True when loaded. Temporaries of
        a killed run are removed first (by the main process: it alone writes checkpoints)."""
        if self.accelerator.is_main_process:
            remove_run_leftovers(self.checkpoint_path.parent)
        if not self.checkpoint_path.is_file():
            return False
        path = self.checkpoint_path
        state = load_checkpoint_dict(path, f"{self.name} training checkpoint", ("modules", "optimizer", "step", "losses"))
        with misfit_is_load_error(path, f"this {self.name} run", RESUME_HINT):
            for k, m in self.prepared.items():
                module = self.accelerator.unwrap_model(m)
                check_tensor_kinds(module.state_dict(), state["modules"][k], path, f"this {self.name} run")
                self._load_module_state(module, state["modules"][k])
            self.optimizer.load_state_dict(state["optimizer"])
            check_optimizer_state(self.optimizer)
            if self.ema and state.get("ema"):
                self.ema.load_state_dict(state["ema"], self.params)
            step, losses = checked_progress(state["step"], state["losses"])
        self.step, self.losses = step, losses
        return True

    def apply_ema(self) -> None:
        """Put the EMA weights into the modules (after training, for sampling and export)."""
        if self.ema:
            self.ema.copy_to(self.params)

    # -- the loop ----------------------------------------------------------------------------
    def _accumulate(self, loss_fn: LossFn, generator: torch.Generator) -> float:
        """Forward and backward over cfg.grad_accum micro-batches; returns their mean loss.
        Gradients are synchronised between processes on the last micro-batch only."""
        from contextlib import ExitStack

        acc, accum, total, self._images = self.accelerator, self.cfg.grad_accum, 0.0, 0
        for micro in range(accum):
            with ExitStack() as stack:
                if micro < accum - 1 and acc.num_processes > 1:
                    for module in self.prepared.values():
                        stack.enter_context(acc.no_sync(module))
                loss, n_images = loss_fn(self.prepared, self.step, generator)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.name}: loss became {loss.item()} at step {self.step}; "
                                             f"lower the learning rate or check the data")
                acc.backward(loss / accum if accum > 1 else loss)
            total += loss.item() / accum
            self._images += n_images
        return total

    def fit(self, loss_fn: LossFn, on_sample: Callable[[int], None] | None = None,
            stop_after: int | None = None, budget=None) -> None:
        """Run until cfg.steps (or `stop_after` more steps: used by tests to simulate a crash), or
        until `budget` (a t2i.training.budget.CPUBudget) is spent: then `stopped_on_budget` is set."""
        from tqdm.auto import tqdm

        cfg, acc = self.cfg, self.accelerator
        last = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.name, mininterval=5,
                   disable=not acc.is_local_main_process, dynamic_ncols=True)
        for module in self.prepared.values():
            module.train()
        t0, seen = time.perf_counter(), 0
        budget_progress = budget.progress_from_now() if budget is not None else (lambda: 0.0)
        try:  # the bar ends its line on an error too, so the error message starts a line of its own
            while self.step < last and not (budget is not None and budget.exhausted()):
                lr = lr_at(cfg, self.step, budget_progress())
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                generator = step_generator(self.seed + acc.process_index * 104_729, self.step)
                loss = self._accumulate(loss_fn, generator)
                if cfg.grad_clip > 0:
                    acc.clip_grad_norm_(self.params, cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema:
                    self.ema.update(self.params, self.step)
                self.step += 1
                self.losses.append(loss)
                seen += self._images * acc.num_processes
                rate = seen / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{sum(self.losses[-50:]) / len(self.losses[-50:]):.4f}",
                                img_s=f"{rate:.1f}", refresh=False)
                if cfg.log_every and self.step % cfg.log_every == 0 and acc.is_main_process:
                    recent = self.losses[-cfg.log_every:]
                    bar.write(f"[{self.name}] step {self.step}/{cfg.steps} loss {sum(recent) / len(recent):.5f} "
                              f"lr {lr:.2e} {rate:.1f} img/s")  # the lr this step used (budget decay included)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save()
                if on_sample and cfg.sample_every and self.step % cfg.sample_every == 0:
                    on_sample(self.step)
                    for module in self.prepared.values():
                        module.train()
        finally:
            bar.close()
        self.save()
        self.stopped_on_budget = stopped(budget, self.name, self.step, cfg.steps)
