"""A training budget: stop every stage of a recipe once the process has used N CPU-minutes (or N
minutes of wall time, for a GPU).

    budget = CPUBudget(10)                       # t2i train CONFIG --outdir DIR --budget-minutes 10
    budget = CPUBudget(10, clock="wall")         # ... --budget-minutes 10 --budget-clock wall
    train_fn(cfg, outdir, budget=budget)         # each training loop checks budget.exhausted() per step
    budget.summary()                             # {"budget_minutes", "used_minutes", "stages": [...]}

Why process time (time.process_time(), all threads of this process): on a shared machine, wall time
depends on what else runs, CPU time much less, so families trained side by side get equal compute.
The clock starts when the budget is made, so data rendering, latent caching (LDM) and code
encoding (AR) count too: they are part of what a recipe costs. On a GPU the device's time is what
is scarce and the CPU mostly waits, so `clock="wall"` counts elapsed time instead (give the run the
device to itself, one family after another, for equal budgets).

Multi-stage recipes give each stage a share of the same clock: `budget.until(0.2)` ends when 20%
of the budget is spent (counted from the same start), so a stage that finishes early leaves its
time to the next. LDM: `vae_budget_share` in the config (stage 1 stops at that share; latent
caching and the UNet use the rest). VQGAN + AR are two runs (two processes): the caller splits the
minutes between them (benchmarks/family_comparison.py: `--vqgan-share`).

A stage stopped by the budget still ends like a finished one (EMA applied, the model file
written), so the run samples; it says so on stderr and in the summary (step k of n).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from t2i.atomic import write_json

CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


@dataclass
class StageReport:
    name: str
    step: int  # steps reached
    steps: int  # steps the config asked for
    stopped_on_budget: bool


@dataclass
class CPUBudget:
    minutes: float  # the whole budget: CPU-minutes of this process, or wall minutes (clock="wall")
    share: float = 1.0  # this view ends when `share` of the budget is spent (see `until`)
    clock: str = "cpu"  # "cpu": process time of all threads; "wall": elapsed time
    start: float | None = None  # the clock's reading at the start (None: now)
    stages: list[StageReport] = field(default_factory=list)  # shared by every view of one budget

    def __post_init__(self):
        if not self.minutes > 0:
            raise ValueError(f"the training budget must be a positive number of minutes, got {self.minutes}")
        if not 0 < self.share <= 1:
            raise ValueError(f"a budget share must be in (0, 1], got {self.share}")
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown budget clock {self.clock!r}; choose one of {sorted(CLOCKS)}")
        if self.start is None:
            self.start = CLOCKS[self.clock]()

    @property
    def unit(self) -> str:
        return "CPU-minutes" if self.clock == "cpu" else "wall minutes"

    def used_minutes(self) -> float:
        return (CLOCKS[self.clock]() - self.start) / 60

    def exhausted(self) -> bool:
        return self.used_minutes() >= self.minutes * self.share

    def progress_from_now(self):
        """A function -> the share (0..1) of what is left of this view's budget now that has been
        spent since; the learning-rate schedule follows it (trainer.lr_at)."""
        begin, end = self.used_minutes(), self.minutes * self.share
        return lambda: min(1.0, max(0.0, (self.used_minutes() - begin) / max(end - begin, 1e-9)))

    def until(self, share: float) -> "CPUBudget":
        """The same clock, ending when `share` of the whole budget is spent (for a recipe's stage)."""
        return CPUBudget(self.minutes, share, self.clock, self.start, self.stages)

    def end_stage(self, name: str, step: int, steps: int) -> bool:
        """Record where a stage's loop ended; True (and a line on stderr) when the budget stopped it."""
        stopped = step < steps and self.exhausted()
        self.stages.append(StageReport(name, step, steps, stopped))
        if stopped:
            print(f"[{name}] stopped on the training budget at step {step} of {steps} "
                  f"({self.used_minutes():.2f} of {self.minutes * self.share:.2f} {self.unit})",
                  file=sys.stderr, flush=True)
        return stopped

    def summary(self) -> dict:
        return {"budget_minutes": self.minutes, "clock": self.clock, "used_minutes": round(self.used_minutes(), 4),
                "stages": [vars(s).copy() for s in self.stages]}


def stopped(budget: CPUBudget | None, name: str, step: int, steps: int) -> bool:
    """end_stage for loops whose budget is optional: False without a budget."""
    return budget is not None and budget.end_stage(name, step, steps)


def train_on_budget(train_fn, cfg, outdir, *, resume: bool = False, minutes: float, clock: str = "cpu"):
    """Run a recipe's train function under a fresh CPUBudget of `minutes` on `clock`; writes
    `outdir/budget.json` (the summary: minutes used, each stage's step k of n) and returns the model."""
    import inspect
    from pathlib import Path

    if "budget" not in inspect.signature(train_fn).parameters:
        raise ValueError(f"{train_fn.__module__}.{train_fn.__name__} takes no training budget yet; train without "
                         f"--budget-minutes / budget_minutes")
    budget = CPUBudget(minutes, clock=clock)
    model = train_fn(cfg, outdir, resume=resume, budget=budget)
    write_json(Path(outdir) / "budget.json", budget.summary())
    return model
