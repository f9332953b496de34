"""Progress events, live previews, interrupt and skip for the diffusion pipelines.

A run (one txt2img / img2img / inpaint / outpaint call) is a sequence of jobs: one sampling pass
per batch of `n_iter`, two with the hires fix (first pass, second pass), as the web UI counts
them. After every model evaluation the pipeline's `progress` callback gets a `Progress`:

    def show(p: Progress):
        print(f"job {p.job + 1}/{p.jobs} step {p.step}/{p.total}, {p.fraction:.0%}, eta {p.eta_s:.0f}s")
        if p.step % 5 == 0:
            p.preview()[0].save("live.png")          # latents -> RGB through a fitted linear map

    control = GenerationControl()                    # another thread may call control.interrupt()
    result = txt2img(loaded, params, progress=show, control=control)

- `control.interrupt()`: sampling stops after the model evaluation under way; the current batch's
  latents as they are are decoded and returned with the batches already finished; no further
  batch starts (the web UI's Interrupt).
- `control.skip()`: the current batch stops after the evaluation under way and is dropped (no
  images, seeds or infotexts for it); the run goes on with the next batch (the web UI's Skip,
  except that the web UI also keeps the half-done images).
Both are flags that the sampling loop reads after each model evaluation, so they act at the
next step from any thread. A `GenerationControl` is meant for one run; `reset()` reuses it.

The low-level `callback(i, total, latents)` of the pipelines still works as before: it runs
first, and returning "interrupt" (or "skip") from it acts like the control's method.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

from t2i.diffusion.sampling import StepCallback
from t2i.pipelines.preview import latent_preview


@dataclass(frozen=True)
class Progress:
    """Where a run stands after one model evaluation."""

    step: int  # model evaluations done in this job, 1..total
    total: int  # model evaluations of this job (steps; Heun/DPM2 2 a step; img2img: strength x steps)
    job: int  # 0-based index of this sampling pass in the run
    jobs: int  # sampling passes in the run: n_iter, twice that with the hires fix
    batch: int  # 0-based batch (n_iter index) the job belongs to
    batches: int  # batches in the run (n_iter)
    phase: str  # "txt2img", "hires" (the hires fix's second pass) or "img2img" (also inpaint, outpaint)
    elapsed_s: float  # since the run's first job began
    eta_s: float  # seconds left in the whole run, if every job takes as long as those so far
    latents: Tensor = field(repr=False)  # (B, C, h, w) float32 current latents: the sampler's, not a copy
    model: object = field(repr=False, default=None)  # for `preview`

    @property
    def fraction(self) -> float:
        """Share of the whole run done, in [0, 1] (every job counts the same, as in the web UI)."""
        return (self.job + self.step / self.total) / self.jobs

    def preview(self, size: tuple[int, int] | None = None) -> list:
        """The current latents as PIL images (latent size, or `size`), without a VAE decode; see
        t2i.pipelines.preview. The model's map is fitted on the first call (a few VAE passes)."""
        return latent_preview(self.model, self.latents, size)


ProgressCallback = Callable[[Progress], object]


class GenerationControl:
    """Interrupt and skip flags a pipeline reads after every model evaluation; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._interrupted = False
        self._skip = False

    def interrupt(self) -> None:
        """Stop the run at the next step; what was done so far comes back."""
        with self._lock:
            self._interrupted = True

    def skip(self) -> None:
        """Drop the current batch at the next step and go on with the next one."""
        with self._lock:
            self._skip = True

    @property
    def interrupted(self) -> bool:
        with self._lock:
            return self._interrupted

    @property
    def skip_requested(self) -> bool:
        with self._lock:
            return self._skip

    def take_skip(self) -> bool:
        """True once per `skip()`: the flag is cleared as the batch it stops reads it."""
        with self._lock:
            requested, self._skip = self._skip, False
            return requested

    def reset(self) -> None:
        with self._lock:
            self._interrupted = self._skip = False


class ProgressTracker:
    """One run's progress: hands each sampling pass the StepCallback that reports `Progress`,
    calls the caller's low-level callback and stops the loop on interrupt or skip.

        tracker = ProgressTracker(model, batches=n_iter, callback=callback, progress=progress, control=control)
        for batch in range(n_iter):
            if tracker.interrupted: break
            tracker.begin_batch()
            latents = denoise(..., callback=tracker.job_callback(batch, "txt2img"))
            if tracker.batch_skipped: continue

    `passes`: sampling passes per batch (2 with the hires fix); a run has batches x passes jobs.
    """

    def __init__(self, model, batches: int, passes: int = 1, *, callback: StepCallback | None = None,
                 progress: ProgressCallback | None = None, control: GenerationControl | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if batches < 1 or passes < 1:
            raise ValueError(f"a run has at least one batch and one pass a batch, got {batches} and {passes}")
        self.model = model
        self.batches, self.passes = int(batches), int(passes)
        self.jobs = self.batches * self.passes
        self.callback = callback
        self.progress = progress
        self.control = control if control is not None else GenerationControl()
        self.clock = clock
        self.batch_skipped = False  # the current batch was skipped: drop its images
        self._start: float | None = None

    @property
    def interrupted(self) -> bool:
        return self.control.interrupted

    def begin_batch(self) -> None:
        self.batch_skipped = False

    def job_callback(self, batch: int, phase: str, pass_index: int = 0) -> StepCallback:
        """The `callback` for sampling pass `pass_index` (0-based) of batch `batch` (0-based)."""
        if self._start is None:
            self._start = self.clock()
        job = batch * self.passes + pass_index

        def on_step(i: int, total: int, latents: Tensor):
            if self.callback is not None:
                answer = self.callback(i, total, latents)
                if answer == "interrupt":
                    self.control.interrupt()
                elif answer == "skip":
                    self.control.skip()
            if self.progress is not None:
                self.progress(self._event(i, total, latents, job, batch, phase))
            if self.control.interrupted:
                return "interrupt"
            if self.control.take_skip():
                self.batch_skipped = True
                return "interrupt"  # the sampling loop's word for "stop here"
            return None

        return on_step

    def _event(self, i: int, total: int, latents: Tensor, job: int, batch: int, phase: str) -> Progress:
        elapsed = self.clock() - self._start
        done = (job + (i + 1) / total) / self.jobs
        eta = elapsed * (1 - done) / done if done > 0 else float("inf")
        return Progress(i + 1, total, job, self.jobs, batch, self.batches, phase, elapsed, max(0.0, eta), latents,
                        self.model)
