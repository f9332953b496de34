"""The web UI's way into the server's job queue (interfaces/api/service.py): a UI job is a queue job
like any API request, so UI and API users wait in one line, FIFO, on the same workers.

    bridge = JobBridge(service)
    async for update in bridge.run(owner, "txt2img", request, preview_every=5):
        ...   # Progress updates while queued / running, then one Finished

`owner` is the browser session (Gradio's session hash): Interrupt and Skip act on that session's
own job only, never on another user's (the web UI's REST route /interrupt stops whatever runs).
The request is the web UI API's JSON (field names through `params.api_name`), checked by the same
`service.check` the REST routes call, so the UI cannot ask for anything the API would refuse.
"""
from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field

from t2i.interfaces.api.errors import ApiError

POLL_S = 0.1  # how often a job's progress is read (the page gets an update only when it changed)


@dataclass
class Progress:
    job_id: str
    state: str  # queued | running
    fraction: float = 0.0
    eta_s: float = 0.0
    step: int = 0
    steps: int = 0
    job_no: int = 0
    job_count: int = 0
    position: int | None = None  # place in the queue while queued (0 = next)
    preview: bytes | None = None  # PNG bytes of the newest live preview, when there is a new one


@dataclass
class Finished:
    job_id: str
    status: int  # 200 or the error's HTTP status
    answer: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def cancelled(self) -> bool:
        return self.answer.get("error") == "Cancelled"

    @property
    def error(self) -> str:
        if self.cancelled:
            return "interrupted before it started (the job was taken out of the queue)"
        return self.answer.get("detail") or self.answer.get("error") or f"the job failed ({self.status})"

    def images(self) -> list[bytes]:
        """PNG bytes (infotext inside) of the answer: grids first, then the images, as the API answers."""
        items = self.answer.get("images") or ([self.answer["image"]] if self.answer.get("image") else [])
        return [base64.b64decode(item) for item in items if item]

    def info(self) -> dict:
        try:
            return json.loads(self.answer.get("info") or "{}")
        except ValueError:
            return {}


class JobBridge:
    """Submits UI jobs to the queue service and follows them; one current job per owner."""

    def __init__(self, service):
        self.service = service
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}  # owner -> the job id it is waiting for
        self._forever: set[str] = set()  # owners in "Generate forever"
        self._stopped: set[str] = set()  # owners who pressed Interrupt since their generation began

    # ------------------------------------------------------------------------- one user's job

    def current(self, owner: str) -> str | None:
        with self._lock:
            return self._jobs.get(owner)

    def begin(self, owner: str) -> None:
        """A generation (one or more jobs: a batch folder, Generate forever) begins."""
        with self._lock:
            self._stopped.discard(owner)

    def stopped(self, owner: str) -> bool:
        """Interrupt was pressed since `begin`: start no further job of this generation."""
        with self._lock:
            return owner in self._stopped

    def interrupt(self, owner: str) -> bool:
        """Stop this owner's job (and the rest of its generation); True when there was one."""
        self.set_forever(owner, False)
        with self._lock:
            self._stopped.add(owner)
        job_id = self.current(owner)
        if job_id is None:
            return False
        self._quietly(self.service.interrupt, job_id)
        return True

    def skip(self, owner: str) -> bool:
        job_id = self.current(owner)
        if job_id is None:
            return False
        self._quietly(self.service.skip, job_id)
        return True

    def set_forever(self, owner: str, on: bool) -> None:
        with self._lock:
            (self._forever.add if on else self._forever.discard)(owner)

    def forever(self, owner: str) -> bool:
        with self._lock:
            return owner in self._forever

    @staticmethod
    def _quietly(call, job_id: str) -> None:
        try:
            call(job_id)
        except ApiError:  # the job finished meanwhile (404): nothing left to stop
            return

    # ------------------------------------------------------------------------- running

    def check(self, kind: str, request: dict) -> None:
        """The REST routes' check (decodes images, every limit); raises the API's ApiError."""
        self.service.check(kind, request)

    async def run(self, owner: str, kind: str, request: dict, *, preview_every: int = 0):
        """Submit `request` (already checked) and follow it: Progress updates, then a Finished."""
        job_id = uuid.uuid4().hex
        with self._lock:
            self._jobs[owner] = job_id
        finished = False
        try:
            self.service.submit(kind, request, job_id)
            last_preview_step, last_seen = -1, None
            while True:
                final = await self.service.wait(job_id, timeout=POLL_S)
                if final is not None:
                    finished = True
                    status, text = final
                    yield Finished(job_id, status, _json(text))
                    return
                update = self._progress(job_id, preview_every, last_preview_step)
                if update is None:
                    continue
                seen = (update.state, update.step, update.job_no, update.position)
                if update.preview is not None:
                    last_preview_step = update.step
                elif seen == last_seen:
                    continue
                last_seen = seen
                yield update
        finally:
            if not finished:  # the page went away (Gradio closed this generator): free the queue
                self._quietly(self.service.cancel, job_id)
            with self._lock:
                if self._jobs.get(owner) == job_id:
                    del self._jobs[owner]

    def _progress(self, job_id: str, preview_every: int, last_preview_step: int) -> Progress | None:
        live = self.service.live(job_id)
        if live is None:
            return None
        # A preview is rendered by the worker at the step after it is asked for: ask every
        # `preview_every` steps (0: never).
        step = (live.view()[0] or {}).get("step", 0)
        want = preview_every > 0 and (last_preview_step < 0 or step - last_preview_step >= preview_every)
        try:
            answer = self.service.progress(job_id, with_image=want)
        except ApiError:  # finished between the two reads: the next wait() returns its answer
            return None
        st = answer.get("state", {})
        image = answer.get("current_image") if want else None
        preview = base64.b64decode(image) if image else None
        running = answer.get("t2i_state", live.state) == "running"
        return Progress(job_id, "running" if running else "queued", float(answer.get("progress") or 0.0),
                        float(answer.get("eta_relative") or 0.0), int(st.get("sampling_step") or 0),
                        int(st.get("sampling_steps") or 0), int(st.get("job_no") or 0), int(st.get("job_count") or 0),
                        answer.get("t2i_position"), preview)


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {"detail": "the server's answer could not be read"}
    return value if isinstance(value, dict) else {"detail": "unexpected answer"}
