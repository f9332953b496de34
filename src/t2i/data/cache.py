"""Caches of derived training data (rendered `shapes`, encoded latents and codes, teacher outputs).

A cache only saves time, so it must never stop a run: one that cannot be read (the 0-byte
`latents.pt` an older t2i left when killed while writing it, a truncated or foreign file) is
reported in one line and rebuilt. Caches are written through t2i.atomic, so a kill now leaves
a temporary (removed on resume), never a broken cache under the real name. They are loaded
with `weights_only=True` like every pickle in t2i: tensors and plain containers only.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from t2i.atomic import atomic_file


def load_cache(path: str | Path, check=None):
    """What `path` holds, or None when it is missing, unreadable or fails `check(value) -> bool`
    (a cache of other data): the caller then rebuilds it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged files; any of them means "rebuild"
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        print(f"note: the cache {path} cannot be read ({reason}); rebuilding it", file=sys.stderr)
        return None
    try:
        ok = check is None or bool(check(value))
    except (KeyError, TypeError, AttributeError, IndexError):
        ok = False
    return value if ok else None


def save_cache(value, path: str | Path) -> None:
    """torch.save `value` to `path` atomically (a full disk is a t2i OutputError)."""
    with atomic_file(path) as f:
        torch.save(value, f)
