"""The FastAPI application: middleware (CORS only when asked, the guard, request logs, errors as
JSON), one router per area, and the queue service started and stopped with the app.

    app = create_app(ServeConfig(outdir=Path("outputs")))     # uvicorn.run(app) / interfaces/api/server.py
"""
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from t2i.errors import version
from t2i.interfaces.api import routes_control, routes_generate, routes_info, routes_jobs
from t2i.interfaces.api import routes_interrogate
from t2i.interfaces.api.catalog import Catalog
from t2i.interfaces.api.config import ServeConfig
from t2i.interfaces.api.docs import add_docs
from t2i.interfaces.api.errors import ApiError, error_body, log_exception, new_error_id
from t2i.interfaces.api.security import Guard, send_json
from t2i.interfaces.api.service import JobService

log = logging.getLogger("t2i.api")


class RequestLog:
    """One log line a request (method, path, status, ms); an exception a route lets through becomes
    a 500 JSON answer with an error id, its traceback in the log only."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 0}

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:
            error_id = new_error_id()
            log_exception(err, error_id, method=scope["method"], path=scope["path"])
            if not status["code"]:
                status["code"] = 500
                await send_json(send, 500, error_body(500, "InternalError", "internal error; the server log has the "
                                                                          "details under this error id",
                                                      error_id=error_id))
        finally:
            client = scope.get("client")
            log.info("%s %s %d", scope["method"], scope["path"], status["code"],
                     extra={"method": scope["method"], "path": scope["path"], "status": status["code"],
                            "ms": round((time.perf_counter() - start) * 1000, 1),
                            "client": f"{client[0]}:{client[1]}" if client else None})


def _validation_answer(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    loc = [str(p) for p in first["loc"] if p not in ("body", "query", "path")]
    field = loc[0] if loc else None
    detail = f"{'.'.join(loc) or 'request'}: {first['msg']}"
    body = error_body(422, "ValidationError", detail, field=field, errors=errors)
    _log_answer(request, 422, body)
    return JSONResponse(body, status_code=422)


def _log_answer(request: Request, status: int, body: dict) -> None:
    log.info("answered %d %s: %s", status, body["error"], body["detail"],
             extra={"error_id": body["error_id"], "path": request.url.path})


def _api_error_answer(request: Request, exc: ApiError) -> JSONResponse:
    body = error_body(exc.status, exc.kind, exc.detail, field=exc.field, **exc.extra)
    _log_answer(request, exc.status, body)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


def _http_answer(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(exc.status_code, "HTTPError")
    body = error_body(exc.status_code, kind, str(exc.detail))
    _log_answer(request, exc.status_code, body)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def create_app(config: ServeConfig, service: JobService | None = None) -> FastAPI:
    config.check()
    catalog = service.catalog if service is not None else Catalog(config)
    service = service or JobService(config, catalog)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        log.info("serving on http://%s:%d (%d worker(s), queue %s)", config.host, config.port, len(service.workers),
                 config.queue_path.name)
        yield
        await run_in_threadpool(service.stop, config.shutdown_grace_s + 30)
        log.info("stopped")

    app = FastAPI(title="t2i", version=version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="The Stable Diffusion web UI's REST API (/sdapi/v1) on a persistent job queue, plus "
                              "t2i's job API (/t2i/v1).")
    app.state.config, app.state.catalog, app.state.service = config, catalog, service
    app.add_exception_handler(RequestValidationError, _validation_answer)
    app.add_exception_handler(ApiError, _api_error_answer)
    app.add_exception_handler(StarletteHTTPException, _http_answer)
    for module in (routes_generate, routes_control, routes_info, routes_jobs, routes_interrogate):
        app.include_router(module.router())
    add_docs(app)  # /docs and /redoc with their scripts served here: no CDN (t2i runs offline)
    # The last added runs first: request logs around everything, then CORS (only when configured,
    # outside the guard so that browsers' preflight requests get their answer), then the guard.
    app.add_middleware(Guard, config=config)
    if config.cors_allow_origins or config.cors_allow_origin_regex:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_allow_origins),
                           allow_origin_regex=config.cors_allow_origin_regex, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=bool(config.api_auth))
    app.add_middleware(RequestLog)
    return app
