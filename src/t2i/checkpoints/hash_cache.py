"""The sha256 of large weight files, remembered by (path, size, mtime) as the web UI does, so a
model's hash (its infotext `Model hash`) is computed once, not on every start: hashing a 2 GB
SD 1.5 file costs about as much as reading it.

The cache is one small JSON file, `hashes.json` in t2i's cache folder (`$T2I_CACHE_DIR`, else
`$XDG_CACHE_HOME/t2i`, else `~/.cache/t2i`), written atomically (t2i.atomic). An entry counts only
while the file's size and modification time (nanoseconds) are the ones it was hashed at; a file
replaced or edited in place is hashed again. An unreadable cache is treated as empty and
rewritten; a cache that cannot be written is skipped (the hash is still right, only not kept).
Several processes may share it: the last writer wins and a lost entry is hashed again later.

    digest = sha256_of(path)              # hex, from the cache when the file is unchanged
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from t2i.atomic import write_json
from t2i.errors import OutputError

CACHE_NAME = "hashes.json"
VERSION = 1
# Smaller files are hashed each time: below this, hashing is quicker than reading the cache.
MIN_CACHED_BYTES = 16 * 2**20
MAX_ENTRIES = 2000  # oldest entries dropped beyond this (a user's model folder, many times over)


def cache_dir() -> Path:
    """t2i's per-user cache folder (not created here)."""
    if os.environ.get("T2I_CACHE_DIR"):
        return Path(os.environ["T2I_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "t2i"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's whole sha256, hex (read in 4 MiB blocks; hashlib releases the GIL for them)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        block = bytearray(4 * 2**20)
        view = memoryview(block)
        while True:
            n = f.readinto(block)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


def _read(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def sha256_of(path: str | os.PathLike[str], *, cache_file: str | os.PathLike[str] | None = None,
              min_bytes: int = MIN_CACHED_BYTES) -> str:
    """The file's sha256 (hex), from `cache_file` (default: hashes.json in `cache_dir()`) when its
    size and mtime still match, else computed and stored there. Files under `min_bytes` are
    always hashed directly."""
    path = Path(path)
    size, mtime = _stamp(path)
    if size < min_bytes:
        return sha256_file(path)
    cache_file = Path(cache_file) if cache_file is not None else cache_dir() / CACHE_NAME
    key = str(path.resolve())
    entry = _read(cache_file).get(key)
    if isinstance(entry, dict) and entry.get("size") == size and entry.get("mtime_ns") == mtime \
            and isinstance(entry.get("sha256"), str) and len(entry["sha256"]) == 64:
        return entry["sha256"]
    digest = sha256_file(path)
    if _stamp(path) == (size, mtime):  # not changed while it was read: safe to remember
        _store(cache_file, key, {"size": size, "mtime_ns": mtime, "sha256": digest})
    return digest


def _store(cache_file: Path, key: str, entry: dict) -> None:
    files = _read(cache_file)  # re-read: another process may have added entries meanwhile
    files.pop(key, None)
    files[key] = entry  # newest last, so pruning drops the oldest
    if len(files) > MAX_ENTRIES:
        files = dict(list(files.items())[-MAX_ENTRIES:])
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache_file, {"version": VERSION, "files": files}, indent=None)
    except (OSError, OutputError):
        pass  # a read-only home or a full disk: the hash is right, it is just not remembered
