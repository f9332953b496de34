"""Progress, interrupt and skip for the scripts (X/Y/Z plot, prompt matrix, loopback), the same
`progress` / `control` a plain run takes (t2i.pipelines.progress).

A script runs many ordinary runs (cells, prompts, loops) through the pipelines' low-level step
callback; `ScriptSteps` is that callback. It counts sampling passes (a pass starts when the step
index goes back), reports a `Progress` after every model evaluation with `job`/`jobs` counting
passes over the whole script, and reads the control:

- interrupt: raises `ScriptInterrupted` at the next step; the script stops there and returns
  what it finished, as the web UI does (an X/Y/Z plot or prompt matrix: the grid with the cells
  not run left blank; loopback: the loops done). `ScriptInterrupted` reaches the caller only when
  not one image was finished.
- skip: the pass under way stops at the next step (its image is kept as it is, like an
  interrupted plain run's) and the script goes on with the next one.
"""
from __future__ import annotations

import time

from t2i.errors import T2IError
from t2i.pipelines.generation_params import Img2ImgParams
from t2i.pipelines.progress import GenerationControl, Progress, ProgressCallback
from t2i.pipelines.script_options import LoopbackOptions, PromptMatrixOptions, XYZOptions
from t2i.pipelines.xyz_axes import parse_axis


class ScriptInterrupted(T2IError):
    """A script run stopped by `GenerationControl.interrupt()`. Scripts catch it and return what
    they finished; it reaches the caller when nothing was (`partial_note` words the other case)."""

    def __init__(self, done: int, jobs: int):
        self.done, self.jobs = done, jobs
        super().__init__(f"interrupted after {done} of {jobs} sampling passes, before the script's first image "
                         f"was done: nothing to return")


def partial_note(done: int, total: int, what: str) -> str:
    """The note of a script that was interrupted after finishing `done` of `total` `what`."""
    return f"interrupted: {done} of {total} {what} done; the rest were not run"


def script_jobs(params, script) -> int:
    """Sampling passes a script will run (an estimate where axes change batch counts or the
    hires fix: events then grow `jobs` as they go)."""
    passes = params.n_iter * (2 if getattr(params, "enable_hr", False) else 1)
    if isinstance(script, XYZOptions):
        cells = 1
        for spec in (script.x, script.y, script.z):
            axis = parse_axis(spec, type(params))
            cells *= len(axis.values) if axis is not None else 1
        return cells * passes
    if isinstance(script, PromptMatrixOptions):
        source = params.prompt if script.prompt_type == "positive" else params.negative_prompt
        return 2 ** source.count("|") * (2 if getattr(params, "enable_hr", False) else 1)  # batch 1, count 1 each
    if isinstance(script, LoopbackOptions):
        return script.loops * params.n_iter
    return passes


class ScriptSteps:
    """The step callback of a script's pipelines: `Progress` events over the whole script, and
    the control's interrupt and skip."""

    def __init__(self, model, jobs: int, phase: str, progress: ProgressCallback | None,
                 control: GenerationControl | None, clock=time.perf_counter):
        self.model, self.jobs, self.phase = model, max(1, int(jobs)), phase
        self.progress, self.control, self.clock = progress, control, clock
        self.job = -1  # the pass under way (0-based); -1 before the first step
        self._last_step = None
        self._start = None

    def __call__(self, i: int, total: int, latents):
        if self._start is None:
            self._start = self.clock()
        if self._last_step is None or i <= self._last_step:  # a new sampling pass began
            self.job += 1
            self.jobs = max(self.jobs, self.job + 1)
        self._last_step = i
        if self.control is not None and self.control.interrupted:
            raise ScriptInterrupted(self.job, self.jobs)
        if self.progress is not None:
            self.progress(self._event(i, total, latents))
        if self.control is not None and self.control.take_skip():
            return "interrupt"  # the sampling loop's word for "stop this pass here"
        return None

    def _event(self, i: int, total: int, latents) -> Progress:
        elapsed = self.clock() - self._start
        done = (self.job + (i + 1) / max(total, 1)) / self.jobs
        eta = elapsed * (1 - done) / done if done > 0 else 0.0
        return Progress(i + 1, total, self.job, self.jobs, self.job, self.jobs, self.phase, elapsed, max(0.0, eta),
                        latents, self.model)


def script_steps(loaded, params, script, progress, control) -> ScriptSteps | None:
    """The callback for a script's run, or None when nobody listens (no progress, no control)."""
    if progress is None and control is None:
        return None
    phase = "img2img" if isinstance(params, Img2ImgParams) else "txt2img"
    return ScriptSteps(loaded.model, script_jobs(params, script), phase, progress, control)

