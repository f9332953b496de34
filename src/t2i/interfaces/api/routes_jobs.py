"""t2i's job API, beside the web UI's: submit and come back later, by job id.

    POST   /t2i/v1/jobs/{txt2img|img2img|extra-single-image|extra-batch-images}   -> 202 {"id", "state", "position"}
    GET    /t2i/v1/jobs/{id}                 state, position in the queue, progress
    GET    /t2i/v1/jobs/{id}/result?wait=S   the web UI's answer once done (202 while not, waiting up to S s)
    GET    /t2i/v1/jobs/{id}/events          server-sent events: progress (with previews), then the end
    DELETE /t2i/v1/jobs/{id}                 cancel this job only (also POST .../cancel)
    POST   /t2i/v1/jobs/{id}/interrupt, /skip
    GET    /t2i/v1/queue                     counts by state
    GET    /t2i/v1/outputs/{path}            a saved image (paths from the answer's info.t2i_saved)
"""
import asyncio
import json

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from t2i.interfaces.api import models
from t2i.interfaces.api.routes_generate import check
from t2i.interfaces.api.runner import FOLDERS
from t2i.interfaces.api.security import output_file, queue_files

JobId = Path(..., pattern=models.JOB_ID_PATTERN, description="a job id")
EVENT_POLL_S = 0.1
IMAGE_FOLDERS = tuple(sorted(set(FOLDERS.values())))  # where the API's runs save images


async def _submit(request: Request, kind: str, body) -> JSONResponse:
    service = request.app.state.service
    data = body.model_dump(exclude_unset=True)
    await check(service, kind, data)
    job_id, position = service.submit(kind, data, data.get("t2i_job_id"))
    return JSONResponse({"id": job_id, "state": "queued", "position": position}, status_code=202,
                        headers={"Location": f"/t2i/v1/jobs/{job_id}"})


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(service, job_id: str, previews: bool):
    """Progress events while the job is queued or running, then `end` with its final state."""
    last_version, last_preview = -1, None
    while True:
        live = service.live(job_id)
        if live is None:
            status = service.status(job_id)
            if status["state"] not in ("queued", "running"):
                yield _sse("end", {"id": job_id, "state": status["state"], "status": status["status"]})
                return
            yield _sse("state", {"id": job_id, "state": status["state"], "position": status["position"]})
        else:
            snapshot, preview, version = live.view()
            if version != last_version:
                last_version = version
                data = {"id": job_id, "state": live.state, **(snapshot or {})}
                if previews and preview is not None and preview != last_preview:
                    data["preview"], last_preview = preview, preview
                yield _sse("progress" if snapshot else "state", data)
            if previews and live.state == "running":
                live.want_preview = True
        if service.draining:
            yield _sse("end", {"id": job_id, "state": "server stopping"})
            return
        await asyncio.sleep(EVENT_POLL_S)


def router() -> APIRouter:
    api = APIRouter(prefix="/t2i/v1", tags=["t2i: jobs"])
    bodies = {"txt2img": models.txt2img_request(), "img2img": models.img2img_request(),
              "extra-single-image": models.extras_single_request(), "extra-batch-images": models.extras_batch_request()}

    def add_submit(kind: str, body_model) -> None:
        async def submit(request: Request, body: body_model):
            return await _submit(request, kind, body)

        submit.__doc__ = f"Queue a {kind} job (the web UI's {kind} request); answers at once with its id."
        api.add_api_route(f"/jobs/{kind}", submit, methods=["POST"], status_code=202, name=f"submit_{kind}",
                          response_model=models.JobAccepted, responses=models.ERRORS)

    for kind, body_model in bodies.items():
        add_submit(kind, body_model)

    @api.get("/jobs/{job_id}")
    def job_status(request: Request, job_id: str = JobId):
        return request.app.state.service.status(job_id)

    @api.get("/jobs/{job_id}/result")
    async def job_result(request: Request, job_id: str = JobId, wait: float = Query(0, ge=0, le=60)):
        service = request.app.state.service
        final = await service.wait(job_id, timeout=wait)
        if final is None:
            status = service.status(job_id)
            return JSONResponse({"id": job_id, "state": status["state"], "position": status["position"]},
                                status_code=202)
        status, answer = final
        return Response(answer, status_code=status, media_type="application/json")

    @api.get("/jobs/{job_id}/events")
    def job_events(request: Request, job_id: str = JobId, previews: bool = True):
        service = request.app.state.service
        service.status(job_id)  # 404 before the stream starts
        return StreamingResponse(_events(service, job_id, previews), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @api.delete("/jobs/{job_id}")
    def cancel_job(request: Request, job_id: str = JobId):
        return request.app.state.service.cancel(job_id)

    @api.post("/jobs/{job_id}/cancel")
    def cancel_job_post(request: Request, job_id: str = JobId):
        return request.app.state.service.cancel(job_id)

    @api.post("/jobs/{job_id}/interrupt")
    def interrupt_job(request: Request, job_id: str = JobId):
        return request.app.state.service.interrupt(job_id)

    @api.post("/jobs/{job_id}/skip")
    def skip_job(request: Request, job_id: str = JobId):
        return request.app.state.service.skip(job_id)

    @api.get("/queue")
    def queue(request: Request):
        service = request.app.state.service
        return {"counts": service.store.counts(), "running": [live.id for live in service.running()],
                "queue_size": request.app.state.config.queue_size}

    @api.get("/outputs/{path:path}")
    def output(request: Request, path: str):
        """A saved image, by its path under the output folder (as the answer's info.t2i_saved gives it):
        only images in the folders t2i saves to, never the queue database beside them."""
        config = request.app.state.config
        return FileResponse(output_file(config.outdir, path, IMAGE_FOLDERS, queue_files(config.queue_path)))

    return api
