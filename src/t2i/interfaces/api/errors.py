"""Errors as the API answers them: JSON that names the field, an error id that the server log
shows beside the traceback, no traceback and no server path in any response.

    raise ApiError(422, "steps must be <= 150, got 500", field="steps")

Answer shape (every status >= 400):
    {"error": "ParamError", "detail": "steps must be <= 150, got 500", "field": "steps",
     "error_id": "e-3f2a1c9b", "errors": [{"loc": ["body", "steps"], "msg": ..., "type": ...}]}
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from pathlib import Path

from t2i.errors import T2IError

log = logging.getLogger("t2i.api")


class ApiError(Exception):
    """An answer other than 200, with a message for the client."""

    def __init__(self, status: int, detail: str, *, field: str | None = None, kind: str | None = None,
                 headers: dict | None = None, extra: dict | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.kind = kind or {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 409: "Conflict",
                             413: "PayloadTooLarge", 422: "ValidationError", 429: "QueueFull",
                             503: "Unavailable"}.get(status, "Error")
        self.headers = headers or {}
        self.extra = extra or {}


def new_error_id() -> str:
    return "e-" + secrets.token_hex(4)


def error_body(status: int, kind: str, detail: str, *, field: str | None = None, error_id: str | None = None,
               errors: list | None = None, **extra) -> dict:
    body = {"error": kind, "detail": scrub(detail), "field": field, "error_id": error_id or new_error_id()}
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return body


# ----------------------------------------------------------------------------- field names


_FIELD_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::|must|is|should)")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_of(message: str, known: set[str] | None = None) -> str | None:
    """The parameter a t2i error message is about: "steps must be <= 150, ..." -> "steps"; with
    `known` names, the first known name among the message's words ("seed_resize_from_w and
    seed_resize_from_h go together" -> "seed_resize_from_w")."""
    if known is None:
        match = _FIELD_RE.match(message)
        return match.group(1) if match else None
    return next((word for word in _WORD_RE.findall(message) if word in known), None)


def from_t2i_error(err: Exception, api_names: dict[str, str] | None = None) -> ApiError:
    """A ParamError / ValueError of the pipelines as a 422 naming the field by its API name
    (`sampler` is `sampler_name` in the API)."""
    message = str(err)
    names = api_names or {}
    name = field_of(message, set(names) | set(names.values()) if names else None)
    return ApiError(422, message, field=names.get(name, name) if name else None,
                    kind=type(err).__name__ if isinstance(err, T2IError) else "ParamError")


# ----------------------------------------------------------------------------- no server paths


def _roots() -> list[tuple[str, str]]:
    """Folders whose absolute paths never leave the server, and what replaces them."""
    roots = [(str(Path.cwd()), "."), (sys.prefix, "<python>"), (str(Path.home()), "~")]
    roots += [(p, "<python>") for p in sys.path if p and os.path.isabs(p)]
    return sorted({r for r in roots if len(r[0]) > 1}, key=lambda r: -len(r[0]))


_ABS_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[/\\][\w.\-~]+){2,}")


def scrub(text: str) -> str:
    """`text` with absolute file paths shortened to their last part: error messages of deeper
    layers name files, and a response must not tell a client where the server keeps them."""
    if not isinstance(text, str):
        return text
    for root, label in _roots():
        text = text.replace(root, label)
    return _ABS_PATH.sub(lambda m: "<…>/" + re.split(r"[/\\]", m.group(0))[-1], text)


def log_exception(err: BaseException, error_id: str, **context) -> None:
    log.error("internal error %s: %s", error_id, type(err).__name__, exc_info=err,
              extra={"error_id": error_id, **context})
