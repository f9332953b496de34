"""The web UI's generating routes. Each is a job in the queue; the route waits for its answer, as
the web UI's synchronous API does (t2i's job API, routes_jobs.py, answers at once instead).

(No `from __future__ import annotations` here: FastAPI reads the body models from the annotations.)
"""
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from t2i.interfaces.api import models
from t2i.interfaces.api.codec import decode_image
from t2i.interfaces.api.errors import ApiError


async def check(service, kind: str, data: dict) -> None:
    """The request's checks: on the event loop for txt2img (a few field checks: no thread hop, so a
    bad request is answered in milliseconds even while a worker runs), in the thread pool when
    images must be decoded."""
    if kind == "txt2img":
        service.check(kind, data)
    else:
        await run_in_threadpool(service.check, kind, data)


async def queue_and_wait(request: Request, kind: str, body) -> Response:
    """Check the request (images decoded, limits), queue it, wait for its answer."""
    service = request.app.state.service
    data = body.model_dump(exclude_unset=True)
    await check(service, kind, data)
    job_id, _ = service.submit(kind, data, data.get("t2i_job_id"))
    status, answer = await service.wait(job_id)
    return Response(answer, status_code=status, media_type="application/json", headers={"X-T2I-Job-Id": job_id})


def router() -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["web UI: generate"])
    Txt2Img, Img2Img = models.txt2img_request(), models.img2img_request()
    Single, Batch = models.extras_single_request(), models.extras_batch_request()

    @api.post("/txt2img", response_model=models.ImagesResponse, responses=models.ERRORS)
    async def txt2img(request: Request, body: Txt2Img):
        """Images from a prompt; waits for the job (queued FIFO) to finish."""
        return await queue_and_wait(request, "txt2img", body)

    @api.post("/img2img", response_model=models.ImagesResponse, responses=models.ERRORS)
    async def img2img(request: Request, body: Img2Img):
        """Images from images and a prompt; with `mask`, inpainting."""
        return await queue_and_wait(request, "img2img", body)

    @api.post("/extra-single-image", response_model=models.ExtrasSingleResponse, responses=models.ERRORS)
    async def extra_single_image(request: Request, body: Single):
        """Upscale one image (a classic resize or a t2i super-resolution model)."""
        return await queue_and_wait(request, "extra-single-image", body)

    @api.post("/extra-batch-images", response_model=models.ExtrasBatchResponse, responses=models.ERRORS)
    async def extra_batch_images(request: Request, body: Batch):
        """Upscale several images."""
        return await queue_and_wait(request, "extra-batch-images", body)

    @api.post("/png-info", response_model=models.PngInfoResponse, responses=models.ERRORS)
    async def png_info(request: Request, body: models.PngInfoRequest):
        """The generation parameters stored in an image (infotext), parsed as the web UI parses them."""
        limits = request.app.state.config.limits
        return await run_in_threadpool(_png_info, body.image, limits)

    return api


def _png_info(text: str, limits) -> dict:
    from t2i.metadata import parse_infotext, read_infotext

    image = decode_image(text, "image", limits)
    try:
        info = read_infotext(image) or ""
    except Exception:  # a broken EXIF block in an image that decoded: no parameters, not a server error
        info = ""
    items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
    try:
        parameters = parse_infotext(info) if info else {}
    except (ValueError, KeyError) as err:
        raise ApiError(422, f"image: its infotext cannot be read: {err}", field="image") from None
    return {"info": info, "items": items, "parameters": parameters}
