"""Structured logs: one JSON object a line, on stderr and in `--api-log FILE`.

    {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "msg": "txt2img done in 0.45 s (status 200)",
     "job_id": "3f2a...", "worker": "w0"}

Request lines carry method, path, status, ms and the client; error lines their error id and the
traceback (`exc`), which never goes to a client.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

FIELDS = ("job_id", "worker", "error_id", "method", "path", "status", "ms", "client")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def setup_logging(api_log: Path | None = None, level: int = logging.INFO) -> list[logging.Handler]:
    """JSON handlers on the `t2i` logger (stderr, and `api_log` appended to); returns them."""
    formatter = JsonFormatter()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if api_log is not None:
        api_log.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(api_log, encoding="utf-8"))
    logger = logging.getLogger("t2i")
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handlers
