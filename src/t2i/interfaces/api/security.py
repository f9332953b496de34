"""What every request passes before it reaches a route: the Host header, credentials, body size.
And the one place that turns a client's file name into a path (`output_file`).

`Guard` is plain ASGI middleware, so it answers before routing: with `--api-auth`, every path
answers 401 without credentials, /docs, /openapi.json, /health and unknown paths included.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import secrets
from pathlib import Path, PurePosixPath

from starlette.exceptions import HTTPException

from t2i.interfaces.api.config import ServeConfig
from t2i.interfaces.api.errors import ApiError, error_body

log = logging.getLogger("t2i.api")


class BodyTooLarge(HTTPException):
    """Raised while a route reads a body past the limit; an HTTPException, so FastAPI's body
    parsing lets it through and it is answered as 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit // 2**20} MB")


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    if status < 500:
        log.info("answered %d %s: %s", status, body.get("error"), body.get("detail"),
                 extra={"error_id": body.get("error_id")})
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def host_allowed(host_header: str | None, allowed: tuple[str, ...] | None) -> bool:
    if allowed is None or "*" in allowed:
        return True
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:7860
        name = host[: host.find("]") + 1]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in allowed or name.strip("[]") in allowed


def credentials_ok(header: str | None, pairs: tuple[tuple[str, str], ...]) -> bool:
    """HTTP Basic credentials against the configured pairs, in constant time for each pair."""
    if not header or header[:6].lower() != "basic ":
        return False
    try:
        user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    if not sep:
        return False
    ok = False
    for want_user, want_password in pairs:  # no early exit: every pair costs the same
        user_ok = secrets.compare_digest(user.encode(), want_user.encode())
        password_ok = secrets.compare_digest(password.encode(), want_password.encode())
        ok |= user_ok and password_ok
    return ok


class Guard:
    """Host check (DNS rebinding), HTTP Basic auth and the request body limit, for every path."""

    def __init__(self, app, config: ServeConfig):
        self.app = app
        self.allowed_hosts = config.host_names()
        self.auth = config.api_auth
        self.max_body = config.limits.max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not host_allowed(_header(scope, b"host"), self.allowed_hosts):
            return await send_json(send, 400, error_body(
                400, "BadHost", "this server answers requests for its own address only (Host header refused); "
                                "start it with --allowed-hosts to add names"))
        if self.auth and not credentials_ok(_header(scope, b"authorization"), self.auth):
            return await send_json(send, 401, error_body(401, "Unauthorized", "credentials required (HTTP Basic)"),
                                   {"WWW-Authenticate": 'Basic realm="t2i"'})
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await send_json(send, 413, error_body(
                413, "PayloadTooLarge", f"request body over the limit of {self.max_body // 2**20} MB"))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, error_body(
                    413, "PayloadTooLarge", f"request body over the limit of {self.max_body // 2**20} MB"))


# ----------------------------------------------------------------------------- files


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The first bytes of the formats t2i writes: a file named .png that is not one (a renamed copy of
# the queue database, say) is not served.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF")
QUEUE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # SQLite's database and its side files


def queue_files(queue_db: Path) -> tuple[Path, ...]:
    """The queue database and the files SQLite keeps beside it."""
    return tuple(queue_db.with_name(queue_db.name + suffix) for suffix in QUEUE_FILE_SUFFIXES)


def _is_image(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(12)
    return head.startswith(IMAGE_MAGIC[:2]) or (head.startswith(IMAGE_MAGIC[2]) and head[8:12] == b"WEBP")


def _same_as_any(target: Path, blocked) -> bool:
    """True when `target` is one of `blocked` (by inode: a hard link to the queue database too)."""
    for path in blocked:
        try:
            if os.path.samefile(target, path):
                return True
        except OSError:  # that file does not exist (yet)
            continue
    return False


def output_file(root: Path, name: str, folders: tuple[str, ...] | None = None, blocked=()) -> Path:
    """The image `name` (a relative, forward-slash path a client sent) inside `root`, or ApiError
    404. Served: an image file (suffix and first bytes) under one of `folders` of `root` (None:
    anywhere under it), the folders t2i writes its images to. Refused: absolute paths, drive
    letters, backslashes, `..` and `.` parts, NUL and control characters, hidden names, files that
    are no images, the `blocked` files (the queue database and its -wal/-shm/-journal files, also
    through a hard link), and anything whose real path (symlinks resolved) leaves its folder."""
    bad = ApiError(404, "no such output file", field="path")
    if not name or len(name) > 1024 or any(ord(c) < 32 for c in name) or "\\" in name or ":" in name:
        raise bad
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("", ".", "..") or part.startswith(".") for part in name.split("/")):
        raise bad
    if folders is not None and (len(rel.parts) < 2 or rel.parts[0] not in folders):
        raise bad
    try:
        real_root = Path(os.path.realpath(root))
        if folders is not None:  # the folder itself may not be a link out of the output folder either
            real_root = Path(os.path.realpath(real_root / rel.parts[0]))
            rel = PurePosixPath(*rel.parts[1:])
            if Path(os.path.realpath(root)) not in real_root.parents:
                raise bad
        target = Path(os.path.realpath(real_root.joinpath(*rel.parts)))
        if real_root not in target.parents or not target.is_file() or target.suffix.lower() not in IMAGE_SUFFIXES:
            raise bad
        if _same_as_any(target, blocked) or not _is_image(target):
            raise bad
    except (OSError, ValueError):  # a name too long for the file system, an unencodable one, ...
        raise bad from None
    return target
