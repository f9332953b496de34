"""Start reading a model's weight files from disk in the background, before they are needed.

A cold `t2i generate` spends its first seconds importing torch, diffusers and transformers
(CPU work) and then reads a 2-7 GB weights file (disk work). `prefetch` asks the kernel to read
the files into the page cache meanwhile (posix_fadvise WILLNEED, one 8 MiB window per call from
a daemon thread: a single call over the whole file reads only the first window), so when the
loader memory-maps them the bytes are already in memory. Nothing is copied into the process and
nothing is parsed: the safe loader still checks every file when it opens it.

Torch-free and cheap: the CLI calls it right after parsing its flags. It does nothing where the
platform has no posix_fadvise, for a file larger than half of the machine's memory (reading it
ahead would only push other pages out), or for anything that is not a regular file.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

WINDOW = 8 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")


def weight_files(path: str | os.PathLike[str]) -> list[Path]:
    """A weights file itself, or the weight files of a model folder's components (unet/, vae/,
    text_encoder/, ...: one level down)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(f for sub in path.iterdir() if sub.is_dir() for f in sub.iterdir()
                      if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES)
    return []


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _read_ahead(files: list[Path]) -> None:
    for file in files:
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue  # the loader will say what is wrong with it
        try:
            size = os.fstat(fd).st_size
            for offset in range(0, size, WINDOW):
                os.posix_fadvise(fd, offset, WINDOW, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def prefetch(*paths: str | os.PathLike[str] | None) -> threading.Thread | None:
    """Read the weight files of `paths` (files or model folders; None is skipped) into the page
    cache in a daemon thread; returns the thread (None when there is nothing to do)."""
    if not hasattr(os, "posix_fadvise"):
        return None
    files = [f for p in paths if p for f in weight_files(p)]
    limit = _memory_bytes() // 2
    try:
        files = [f for f in files if limit and f.stat().st_size <= limit]
    except OSError:
        return None
    if not files:
        return None
    thread = threading.Thread(target=_read_ahead, args=(files,), name="t2i-prefetch", daemon=True)
    thread.start()
    return thread
