"""POST /sdapi/v1/interrogate: the web UI's interrogator route, answered by t2i's CLIP ranking
(t2i.pipelines.interrogate). Request `{"image": base64, "model": "clip"}`, answer `{"caption"}`.

Not a queued job: like png-info it answers from the request thread, and the CLIP is small (the
bundled one ranks an image in milliseconds). The scorer is loaded on first use and kept on the app.

(No `from __future__ import annotations` here: FastAPI reads the body models from the annotations.)
"""
import threading

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from t2i.interfaces.api.codec import decode_image
from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.api.models import ERRORS

MODELS = ("clip",)  # the web UI also offers "deepdanbooru", a tagger t2i does not have


class InterrogateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(..., description="base64 image (a data:image/png;base64, prefix is allowed)")
    model: str = Field("clip", description="interrogator: `clip` (t2i's CLIP ranking the shapes grammar)")


class InterrogateResponse(BaseModel):
    caption: str = Field(..., description="the caption in the `shapes` grammar")


_lock = threading.Lock()


def interrogator_of(app):
    """The app's Interrogator (made once: two first requests share one)."""
    from t2i.pipelines.interrogate import Interrogator

    with _lock:
        if getattr(app.state, "interrogator", None) is None:
            app.state.interrogator = Interrogator(None)
        return app.state.interrogator


def _interrogate(app, body: InterrogateRequest) -> dict:
    if body.model not in MODELS:
        raise ApiError(422, f"model: t2i interrogates with {', '.join(MODELS)} only, got {body.model!r}", field="model")
    image = decode_image(body.image, "image", app.state.config.limits)
    return {"caption": interrogator_of(app).caption(image)}


def router() -> APIRouter:
    api = APIRouter(prefix="/sdapi/v1", tags=["web UI API"])

    @api.post("/interrogate", response_model=InterrogateResponse, responses=ERRORS)
    async def interrogate_route(request: Request, body: InterrogateRequest):
        """A caption for an image, by ranking captions with a CLIP."""
        return await run_in_threadpool(_interrogate, request.app, body)

    return api
