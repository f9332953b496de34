"""A job while it is queued or running, in memory: its interrupt/skip control, its latest progress
and preview, and the requests waiting for its answer. Gone once the job is final (the answer then
lives in the queue database only), so memory does not grow with the number of jobs served.

Previews are made on demand: a progress request or an event stream sets `want_preview`, and the
worker renders the next step's latents (a fitted linear map, no VAE decode) in its own thread.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from t2i.interfaces.api import codec
from t2i.pipelines.progress import GenerationControl

log = logging.getLogger("t2i.api")


class LiveJob:
    def __init__(self, job_id: str, kind: str):
        self.id = job_id
        self.kind = kind
        self.control = GenerationControl()
        self.state = "queued"
        self.started: float | None = None
        self.worker: str | None = None
        self.snapshot: dict | None = None  # the latest progress event, as JSON values
        self.version = 0  # bumped on every change, for event streams
        self.preview: str | None = None  # base64 PNG of the latest preview
        self.preview_step: int | None = None
        self.want_preview = False
        self.stopped_by_shutdown = False
        self._lock = threading.Lock()

    def begin(self, worker: str) -> None:
        with self._lock:
            self.state, self.worker, self.started = "running", worker, time.time()
            self.version += 1

    def on_progress(self, event) -> None:
        """The run's progress callback (worker thread)."""
        snapshot = {"step": event.step, "total": event.total, "job": event.job, "jobs": event.jobs,
                    "batch": event.batch, "batches": event.batches, "phase": event.phase,
                    "fraction": round(event.fraction, 4), "eta_s": round(event.eta_s, 3),
                    "elapsed_s": round(event.elapsed_s, 3)}
        preview = None
        if self.want_preview:
            self.want_preview = False
            try:
                factor = getattr(event.model, "vae_scale_factor", 8)
                size = (event.latents.shape[-1] * factor, event.latents.shape[-2] * factor)
                preview = codec.b64(codec.png_bytes(event.preview(size)[0], None))
            except Exception as err:  # a preview is a nicety: never let it fail the run
                log.warning("preview failed: %s", err, extra={"job_id": self.id})
        with self._lock:
            self.snapshot = snapshot
            if preview is not None:
                self.preview, self.preview_step = preview, event.step
            self.version += 1

    def view(self) -> tuple[dict | None, str | None, int]:
        with self._lock:
            return self.snapshot, self.preview, self.version


class Waiters:
    """asyncio futures of the requests waiting for jobs' answers, resolved from worker threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_job: dict[str, list[asyncio.Future]] = {}

    def add(self, job_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._by_job.setdefault(job_id, []).append(future)
        return future

    def discard(self, job_id: str, future: asyncio.Future) -> None:
        with self._lock:
            futures = self._by_job.get(job_id, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._by_job.pop(job_id, None)

    def resolve(self, job_id: str, status: int, answer: str) -> None:
        with self._lock:
            futures = self._by_job.pop(job_id, [])
        for future in futures:
            try:
                future.get_loop().call_soon_threadsafe(_set, future, (status, answer))
            except RuntimeError:  # the event loop is closed: the server is gone, nobody waits any more
                pass

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._by_job)


def _set(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def idle_progress() -> dict:
    return {"progress": 0.0, "eta_relative": 0.0,
            "state": {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "",
                      "job_count": 0, "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0},
            "current_image": None, "textinfo": None, "current_task": None}


def progress_answer(live: LiveJob, with_image: bool) -> dict:
    """The web UI's GET /progress answer for a live job."""
    snapshot, preview, _ = live.view()
    answer = idle_progress()
    state = answer["state"]
    state["interrupted"] = live.control.interrupted
    state["job_timestamp"] = time.strftime("%Y%m%d%H%M%S", time.localtime(live.started or time.time()))
    answer["current_task"] = live.id
    answer["t2i_state"] = live.state
    if snapshot is not None:
        answer["progress"] = snapshot["fraction"]
        answer["eta_relative"] = snapshot["eta_s"]
        state.update(job=f"Batch {snapshot['batch'] + 1} out of {snapshot['batches']}", job_count=snapshot["jobs"],
                     job_no=snapshot["job"], sampling_step=snapshot["step"], sampling_steps=snapshot["total"])
    elif live.state == "running":
        state["job_count"] = 1
    answer["current_image"] = preview if with_image else None
    return answer
