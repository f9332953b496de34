"""Narrowing Gradio's file routes to files: its `/file=<url>` route fetches any public http(s) URL on
the server's behalf and its `/proxy=` route reaches other Gradio apps. The web UI needs neither,
and a t2i server must make no outbound request a client asks for; both answer 403 here, before
Gradio sees them. (Which local files Gradio serves is set by mount_webui's allowed/blocked paths.)
"""
from __future__ import annotations

import re
from urllib.parse import unquote

from t2i.interfaces.api.errors import error_body
from t2i.interfaces.api.security import send_json

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*:")  # a scheme (http:, https:, file:, data:, ...)


def refused(path: str) -> bool:
    text = path
    for _ in range(3):  # %2568ttp -> %68ttp -> http
        text = unquote(text)
    if "/proxy=" in text:
        return True
    at = text.find("/file=")
    return at >= 0 and bool(_URL.match(text[at + len("/file="):].lstrip("/\\").strip()))


class FileRouteGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and refused(scope.get("path", "")):
            return await send_json(send, 403, error_body(403, "Forbidden", "this server serves its own files only"))
        return await self.app(scope, receive, send)
