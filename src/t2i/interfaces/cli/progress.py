"""A tqdm progress bar on stderr for the generating commands (`t2i generate`, img2img, ...).

One bar per sampling pass ("batch 2/4", "batch 1/2 hires"), with tqdm's own rate and time left
for the pass and the run's ETA (from t2i.pipelines.progress.Progress) as a postfix:

    with ProgressBar() as bar:
        txt2img(loaded, params, progress=bar)

Like tqdm's default, the bar only draws on a terminal (disable=None); pass disable=False to
force it (tests, logs).
"""
from __future__ import annotations

import sys


class ProgressBar:
    def __init__(self, file=None, disable: bool | None = None, mininterval: float = 0.1):
        self.file = file if file is not None else sys.stderr
        self.disable = disable
        self.mininterval = mininterval  # tqdm's: redraw at most this often (0 = every step)
        self._bar = None
        self._key = None  # the pass whose bar is shown

    def __call__(self, progress) -> None:
        from tqdm import tqdm

        key = (progress.job, progress.jobs, progress.total)
        if self._bar is None or key != self._key or progress.step < self._bar.n:
            self.close()  # a new pass (or a new run): a new bar
            label = f"batch {progress.batch + 1}/{progress.batches}"
            if progress.phase == "hires":
                label += " hires"
            self._bar = tqdm(total=progress.total, desc=label, unit="step", file=self.file, disable=self.disable,
                             leave=False, dynamic_ncols=True, mininterval=self.mininterval)
            self._key = key
        self._bar.update(progress.step - self._bar.n)
        self._bar.set_postfix_str(f"run {progress.fraction:.0%}, eta {progress.eta_s:.0f}s", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
