"""The queue service: owns the job store, one worker thread per device (each with its own
Session), the live state of queued and running jobs, and the requests waiting for answers.

    service.submit("txt2img", request, options)      # -> (job id, position); 429 when full
    status, answer = await service.wait(job_id)      # the web UI's synchronous routes
    service.cancel(job_id); service.interrupt(job_id); service.skip()

Routes stay thin: they validate, call the service and return what it answers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from dataclasses import replace

from t2i.errors import T2IError
from t2i.interfaces.api import runner
from t2i.interfaces.api.catalog import Catalog
from t2i.interfaces.api.config import ServeConfig
from t2i.interfaces.api.errors import (
    ApiError,
    error_body,
    from_t2i_error,
    log_exception,
    new_error_id,
)
from t2i.interfaces.api.live import LiveJob, Waiters, idle_progress, progress_answer
from t2i.interfaces.api.store import ACTIVE, FINAL, Full, Store
from t2i.interfaces.api.translate import Context, api_names, prepare
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.script_progress import ScriptInterrupted

log = logging.getLogger("t2i.api")
PRUNE_EVERY = 50  # finished jobs between prunes of old answers


class Worker:
    def __init__(self, name: str, device: str | None):
        self.name, self.device = name, device
        self.thread: threading.Thread | None = None
        self.ready = False
        self.job: LiveJob | None = None
        self.error: str | None = None


class JobService:
    def __init__(self, config: ServeConfig, catalog: Catalog, session_factory=None):
        self.config = config
        self.catalog = catalog
        self.store = Store(config.queue_path)
        self.context = Context(catalog, config.limits, config.styles_file, config.face_restorer)
        self.writer = runner.Writer(config.outdir)
        self.waiters = Waiters()
        self.workers = [Worker(f"w{i}", device) for i, device in enumerate(config.devices)]
        self.options = {"sd_model_checkpoint": catalog.start_title(), "sd_vae": "Automatic",
                        "CLIP_stop_at_last_layers": 1} | self.store.options()
        self._session_factory = session_factory or self._make_session
        self._live: dict[str, LiveJob] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._draining = False  # no new jobs start (shutdown begun)
        self._stopping = False  # workers exit
        self._preload = threading.Lock()  # first imports and loads one worker at a time: diffusers' lazy
        # module attributes are not safe to resolve from two threads at once
        self._durations: list[float] = []
        self._finished = 0

    # ------------------------------------------------------------------------- life cycle

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> None:
        requeued, given_up = self.store.recover()
        if requeued or given_up:
            log.info("queue recovered: %d interrupted job(s) queued again, %d given up", requeued, given_up)
        for worker in self.workers:
            worker.thread = threading.Thread(target=self._work, args=(worker,), name=f"t2i-{worker.name}", daemon=True)
            worker.thread.start()

    def begin_shutdown(self) -> None:
        """SIGTERM/SIGINT: no new job starts or is accepted; requests waiting for a queued job get 503
        (the job stays queued for the next start); a running job gets `shutdown_grace_s` to finish."""
        if self._draining:
            return
        self._draining = True
        log.info("shutting down: queued jobs stay queued; running jobs get %.0f s", self.config.shutdown_grace_s)
        queued = set(self.store.queued_ids())
        for job_id in self.waiters.job_ids():
            if job_id in queued:
                self.waiters.resolve(job_id, 503, json.dumps(error_body(
                    503, "ShuttingDown", "the server is shutting down; this job stays queued and runs when it starts "
                                         "again (GET /t2i/v1/jobs/{id}/result)", job_id=job_id)))
        timer = threading.Timer(self.config.shutdown_grace_s, self._interrupt_for_shutdown)
        timer.daemon = True
        timer.start()
        with self._wake:
            self._wake.notify_all()

    def _interrupt_for_shutdown(self) -> None:
        for worker in self.workers:
            live = worker.job
            if live is not None:
                live.stopped_by_shutdown = True
                live.control.interrupt()

    def stop(self, timeout: float = 60.0) -> None:
        self.begin_shutdown()
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        self.store.close()

    # ------------------------------------------------------------------------- submitting

    def check(self, kind: str, request: dict, options: dict | None = None):
        """ApiError now for a request that cannot run (decodes its images, checks every limit)."""
        return prepare(kind, request, options if options is not None else dict(self.options), self.context)

    def submit(self, kind: str, request: dict, job_id: str | None = None) -> tuple[str, int]:
        if self._draining:
            raise ApiError(503, "the server is shutting down; try again when it is back", kind="ShuttingDown",
                           headers={"Retry-After": "10"})
        job_id = job_id or uuid.uuid4().hex
        payload = {"request": request, "options": dict(self.options)}
        live = LiveJob(job_id, kind)
        with self._lock:
            if job_id in self._live:  # a client's own id, still queued or running
                raise ApiError(409, f"a job with id {job_id!r} exists; choose another t2i_job_id", field="t2i_job_id")
            self._live[job_id] = live
        try:
            position = self.store.submit(job_id, kind, payload, self.config.queue_size)
        except Full as full:
            self._forget(job_id)
            raise ApiError(429, f"the queue is full ({full.queued} jobs waiting); try again later",
                           headers={"Retry-After": str(self.retry_after(full.queued))}) from None
        except sqlite3.IntegrityError:
            self._forget(job_id)
            raise ApiError(409, f"a job with id {job_id!r} exists; choose another t2i_job_id", field="t2i_job_id") \
                from None
        with self._wake:
            self._wake.notify()
        log.info("queued %s at position %d", kind, position, extra={"job_id": job_id})
        return job_id, position

    def retry_after(self, queued: int) -> int:
        recent = self._durations[-20:]
        per_job = sum(recent) / len(recent) if recent else 1.0
        return max(1, math.ceil(per_job * max(1, queued) / len(self.workers)))

    async def wait(self, job_id: str, timeout: float | None = None) -> tuple[int, str] | None:
        """(status, answer JSON) once the job is final; None after `timeout` seconds."""
        future = self.waiters.add(job_id)
        try:
            final = self._final(job_id)  # it may have finished before the future was registered
            if final is not None:
                return final
            return await asyncio.wait_for(future, timeout) if timeout is not None else await future
        except asyncio.TimeoutError:
            return None
        finally:
            self.waiters.discard(job_id, future)

    def _final(self, job_id: str) -> tuple[int, str] | None:
        row = self.store.answer(job_id)
        if row is None:
            raise ApiError(404, f"no job {job_id!r} (finished jobs are kept for the last {self.config.keep_results})",
                           field="job_id")
        state, status, answer = row
        return (status, answer) if state in FINAL else None

    # ------------------------------------------------------------------------- asking, stopping

    def _forget(self, job_id: str) -> None:
        with self._lock:
            self._live.pop(job_id, None)

    def live(self, job_id: str) -> LiveJob | None:
        with self._lock:
            return self._live.get(job_id)

    def status(self, job_id: str) -> dict:
        job = self.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}", field="job_id")
        live = self.live(job_id)
        snapshot = live.view()[0] if live is not None else None
        return {"id": job.id, "kind": job.kind, "state": job.state, "position": self.store.position(job),
                "status": job.status, "created": job.created, "started": job.started, "finished": job.finished,
                "attempts": job.attempts, "progress": snapshot}

    def cancel(self, job_id: str) -> dict:
        """Cancel one job: a queued one never starts, a running one stops at its next step."""
        answer = json.dumps(error_body(409, "Cancelled", "the job was cancelled", job_id=job_id))
        before = self.store.cancel(job_id, answer)
        if before is None:
            raise ApiError(404, f"no job {job_id!r}", field="job_id")
        if before in ACTIVE:
            live = self.live(job_id)
            if live is not None:
                live.control.interrupt()
            self.waiters.resolve(job_id, 409, answer)
            if before == "queued":
                self._forget(job_id)
            log.info("cancelled (was %s)", before, extra={"job_id": job_id})
        return {"id": job_id, "state": "cancelled" if before in ACTIVE else before}

    def running(self) -> list[LiveJob]:
        jobs = [w.job for w in self.workers if w.job is not None]
        return sorted(jobs, key=lambda live: live.started or 0)

    def interrupt(self, job_id: str | None = None) -> dict:
        """The web UI's Interrupt: the running job(s) stop and answer with what is done. With a
        job id only that job: running, it is interrupted; queued, it is cancelled."""
        if job_id is None:
            for live in self.running():
                live.control.interrupt()
            return {}
        live = self.live(job_id)
        if live is None or live.state != "running":
            return self.cancel(job_id)
        live.control.interrupt()
        return {"id": job_id, "state": "interrupted"}

    def skip(self, job_id: str | None = None) -> dict:
        jobs = self.running() if job_id is None else [j for j in self.running() if j.id == job_id]
        if job_id is not None and not jobs and self.store.get(job_id) is None:
            raise ApiError(404, f"no job {job_id!r}", field="job_id")
        for live in jobs:
            live.control.skip()
        return {}

    def progress(self, job_id: str | None = None, with_image: bool = True) -> dict:
        if job_id is not None:
            live = self.live(job_id)
            if live is None:
                status = self.status(job_id)
                return idle_progress() | {"current_task": job_id, "t2i_state": status["state"]}
        else:
            running = self.running()
            live = running[0] if running else None
        if live is None:
            return idle_progress() | {"queue": self.store.counts()}
        if with_image:
            live.want_preview = True
        answer = progress_answer(live, with_image)
        if live.state == "queued":
            job = self.store.get(live.id)
            answer["t2i_position"] = self.store.position(job) if job else None
        return answer

    def set_options(self, values: dict) -> None:
        self.options.update(values)
        self.store.set_options(values)

    # ------------------------------------------------------------------------- workers

    def base_settings(self, device: str | None) -> LoadSettings:
        c = self.config
        return LoadSettings(device=device, precision=c.precision, threads=c.threads,
                            lora_dirs=tuple(str(d) for d in self.catalog.lora_dirs()),
                            embedding_dirs=tuple(str(d) for d in self.catalog.embedding_dirs()),
                            upscaler_dirs=tuple(str(d) for d in c.upscaler_dirs), face_restorer=c.face_restorer,
                            safety_checker=c.safety_checker)

    def _make_session(self, settings: LoadSettings):
        from t2i.pipelines.session import Session

        return Session(settings, max_models=self.config.max_models, styles_file=self.config.styles_file,
                       notes=lambda line: log.info(line), checkpoints=self.checkpoint_path)

    def checkpoint_path(self, title: str) -> str | None:
        """An X/Y/Z Checkpoint name value -> the model it names in the configured folders (None: the
        bundled model); 422 naming script_args for anything else, a path included."""
        return self.catalog.checkpoint(title, "script_args").path

    def _work(self, worker: Worker) -> None:
        base = self.base_settings(worker.device)
        with self._preload:
            session = self._session_factory(base)
            try:
                start = self.catalog.checkpoint(self.catalog.start_title())
                session.model(replace(base, model=start.path))  # load before the first job
            except Exception as err:  # the worker still serves: each job reports its own load error
                worker.error = str(err)
                log.error("worker %s could not preload its model: %s", worker.name, err)
        worker.ready = True
        log.info("worker %s ready on %s", worker.name, worker.device or "the default device")
        while True:
            with self._wake:
                while not self._stopping and self._draining:
                    self._wake.wait(0.5)
                if self._stopping:
                    return
            job = self.store.claim(worker.name)
            if job is None:
                with self._wake:
                    if not self._stopping and not self._draining:
                        self._wake.wait(0.5)
                continue
            self._run(worker, session, base, job)

    def _run(self, worker: Worker, session, base: LoadSettings, job) -> None:
        with self._lock:
            live = self._live.setdefault(job.id, LiveJob(job.id, job.kind))
        live.begin(worker.name)
        worker.job = live
        started = time.perf_counter()
        extra = {"job_id": job.id, "worker": worker.name}
        log.info("started %s (attempt %d)", job.kind, job.attempts, extra=extra)
        prepared = None
        try:
            prepared = prepare(job.kind, job.payload["request"], job.payload["options"], self.context)
            answer, model_hash = runner.run(session, prepared, base, self.writer, self.config.limits, job_id=job.id,
                                            progress=live.on_progress, control=live.control)
            if model_hash and prepared.model is not None:
                self.catalog.hashes[prepared.model.title] = model_hash
            status, state = 200, "done"
        except ApiError as err:
            status, state = err.status, "failed"
            answer = error_body(err.status, err.kind, err.detail, field=err.field, job_id=job.id)
        except ScriptInterrupted as err:  # a script interrupted before its first image: nothing to answer
            status, state = 409, "cancelled"
            answer = error_body(409, "Interrupted", str(err), job_id=job.id, done=err.done, jobs=err.jobs)
        except (T2IError, ValueError) as err:
            api = from_t2i_error(err, api_names(job.kind))
            status, state = 422, "failed"
            field = api.field or ("script_args" if prepared is not None and prepared.script is not None else None)
            answer = error_body(422, api.kind, api.detail, field=field, job_id=job.id)
        except Exception as err:
            error_id = new_error_id()
            log_exception(err, error_id, **extra)
            status, state = (503, "failed") if type(err).__name__ == "OutOfMemoryError" else (500, "failed")
            detail = ("out of memory: try a smaller size or batch" if status == 503 else
                      "the job failed inside the server; its log has the details under this error id")
            answer = error_body(status, "OutOfMemory" if status == 503 else "InternalError", detail,
                                error_id=error_id, job_id=job.id)
        finally:
            worker.job = None
        seconds = time.perf_counter() - started
        self._durations = self._durations[-50:] + [seconds]
        text = json.dumps(answer)
        if live.stopped_by_shutdown and self.store.requeue(job.id, worker.name):
            log.info("stopped by shutdown after %.2f s; queued again", seconds, extra=extra)
            self.waiters.resolve(job.id, 503, json.dumps(error_body(
                503, "ShuttingDown", "the server is shutting down; this job runs again when it starts", job_id=job.id)))
        elif self.store.finish(job.id, worker.name, state, status, text):
            log.info("%s %s in %.2f s (status %d)%s", job.kind, state, seconds, status,
                     f": {answer.get('detail')}" if status != 200 else "",
                     extra={**extra, "error_id": answer.get("error_id") if status != 200 else None})
            self.waiters.resolve(job.id, status, text)
        else:
            log.info("finished after it was cancelled; answer dropped", extra=extra)
        self._forget(job.id)
        self._finished += 1
        if self._finished % PRUNE_EVERY == 0:
            self.store.prune(self.config.keep_results)
