"""Progress, interrupt and skip, with the web UI's meaning (the running job) unless a client
names its own job (`?job_id=` or a JSON body {"job_id": ...}): then only that job."""

from fastapi import APIRouter, Body, Query, Request

from t2i.interfaces.api.models import JOB_ID_PATTERN, JobRef


def _job_id(query: str | None, body: JobRef | None) -> str | None:
    return query or (body.job_id if body is not None else None)


def router() -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["web UI: progress and control"])

    @api.get("/progress")
    def progress(request: Request, skip_current_image: bool = False,
                 job_id: str | None = Query(None, pattern=JOB_ID_PATTERN)):
        """Progress of the running job (or of `job_id`): fraction, ETA, step, and a live preview
        (`current_image`, base64 PNG, rendered from the latents at the next step after it is asked)."""
        return request.app.state.service.progress(job_id, with_image=not skip_current_image)

    @api.post("/interrupt")
    def interrupt(request: Request, job_id: str | None = Query(None, pattern=JOB_ID_PATTERN),
                  body: JobRef | None = Body(None)):
        """Stop the running job(s) at the next step; they answer with the images done so far. With a
        job id, only that job (a queued one is cancelled)."""
        return request.app.state.service.interrupt(_job_id(job_id, body))

    @api.post("/skip")
    def skip(request: Request, job_id: str | None = Query(None, pattern=JOB_ID_PATTERN),
             body: JobRef | None = Body(None)):
        """Drop the running job's current batch and go on with the next; with a job id, that job only."""
        return request.app.state.service.skip(_job_id(job_id, body))

    return api
