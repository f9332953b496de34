"""The API docs (/docs: Swagger UI, /redoc: ReDoc) served offline, from the app itself.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from a CDN, so on a machine
without a network (how t2i runs) it stays blank. The `fastapi-offline` package ships those files
(Swagger UI 5, which reads FastAPI's OpenAPI 3.1, and ReDoc); they are served from /docs-assets
and the pages name no other host. With --api-auth they need credentials like every path (the
browser sends the ones it used for /docs).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
ASSET_PACKAGE = "fastapi_offline"  # the PyPI package fastapi-offline: only its static files are used


def assets_dir() -> Path | None:
    """The folder with swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png
    (found without importing the package), or None when it is not installed."""
    spec = importlib.util.find_spec(ASSET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def _missing_page(title: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>{title}</title><p>The API docs page needs the fastapi-offline "
                        f"package (pip install fastapi-offline). The schema itself is at "
                        f"<a href=\"/openapi.json\">/openapi.json</a>.</p>", status_code=200)


def add_docs(app: FastAPI) -> None:
    """/docs, /docs/oauth2-redirect and /redoc on `app` (made with docs_url=None, redoc_url=None)."""
    folder = assets_dir()
    if folder is not None:
        app.mount(ASSETS, StaticFiles(directory=str(folder)), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        if folder is None:
            return _missing_page(f"{title} - API docs")
        # validatorUrl None: Swagger UI would otherwise send the schema to validator.swagger.io
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} - Swagger UI",
                                   oauth2_redirect_url="/docs/oauth2-redirect",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        if folder is None:
            return _missing_page(f"{title} - API docs")
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{title} - ReDoc",
                              redoc_js_url=f"{ASSETS}/redoc.standalone.js", redoc_favicon_url=f"{ASSETS}/favicon.png",
                              with_google_fonts=False)
