"""The compiled UNet kept on disk, so that only the first `--compile` pays for the compile.

torch.compile (Inductor) already has content-keyed caches of its own: the FX-graph cache (the
generated code of each graph, keyed by the graph, its input shapes, dtypes and strides, torch's
version and Inductor's config) and the AOTAutograd cache, and on a CPU it keeps the C++ kernels it
built (.so files) beside them. They live in Inductor's cache folder, by default a per-user folder
in /tmp that a reboot empties. A second process that finds them there skips graph lowering and
every g++ run: it only traces the model again (seconds), where the first paid minutes. (The
"mega-cache", `torch.compiler.save_cache_artifacts`, does not carry those .so files: on a CPU a
process that loads it still runs g++ for every kernel, so it is not used here.)

So t2i points Inductor's cache at a folder of its own, one per *entry*, and guards it:

- An entry is keyed by what the compiled code depends on: the UNet's architecture (its config),
  its dtype and memory layout, the device type, torch's and Python's versions and the CPU (torch's
  CPU capability and the /proc/cpuinfo flags). Not by the weights file: without freezing, weights
  are inputs of the compiled graphs, not constants in them, so a fine-tune of SD 1.5 reuses the
  entry of SD 1.5. Each size compiled is a graph of its own inside the entry (torch's keys).
- The entry's `t2i-compile.json` lists every file in it with its sha256, written after a compile
  succeeded. A file that differs from its record (a damaged .so would crash torch's import of it;
  a damaged pickle makes torch log a traceback) is removed with a one-line note before torch can
  see it, and torch compiles again just what it held. An entry whose record is unreadable or of
  another key is removed whole, with a note. Files the record does not list and older than an hour
  (a process killed mid-compile) are removed too: they were never checked. Newer ones are left to
  a compile that may be running in another process on the same entry.
- The folder is Inductor's cache folder for this process: torch reads it from the environment
  variable TORCHINDUCTOR_CACHE_DIR each time it needs it (torch 2.13 has no config field for
  it), so t2i sets that variable in its own process just before compiling. `off` leaves torch's
  own default (or the user's variable) alone and keeps no record.

    cache = CompileCache.open(root, unet, notes)   # checks the entry, points Inductor at it
    ... compile and run the UNet ...
    cache.commit()                                 # record the files (after each run)
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from t2i.atomic import write_json
from t2i.checkpoints.hash_cache import cache_dir
from t2i.errors import OutputError

RECORD = "t2i-compile.json"
VERSION = 1
INDUCTOR = "inductor"  # Inductor's cache folder inside an entry
# Inductor's own lock files (empty, re-created at will): not part of what is checked
UNCHECKED = ("locks",)
OFF = "off"
UNFINISHED_S = 3600  # an unrecorded file this old is not another process's compile in progress


def default_root() -> Path:
    """`compile` in t2i's cache folder ($T2I_CACHE_DIR, else ~/.cache/t2i)."""
    return cache_dir() / "compile"


def _cpu_fingerprint() -> str:
    """torch's CPU capability and a digest of the CPU's flags: kernels built for one CPU may use
    instructions another lacks."""
    import torch

    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    return f"{torch.backends.cpu.get_cpu_capability()}-{platform.machine()}-{digest}"


def entry_key(unet) -> dict:
    """What the compiled code of `unet` depends on (see the module's docstring)."""
    import torch

    # diffusers' private keys (`_name_or_path`, `_use_default_values`: a set, in random order) say
    # nothing about the architecture
    config = json.dumps({k: v for k, v in dict(unet.config).items() if not k.startswith("_")}, sort_keys=True,
                        default=str)
    param = next(unet.parameters())
    convs = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    channels_last = bool(convs) and convs[0].is_contiguous(memory_format=torch.channels_last) \
        and not convs[0].is_contiguous()
    return {"architecture": hashlib.sha256(config.encode()).hexdigest()[:16], "class": type(unet).__name__,
            "dtype": str(param.dtype).removeprefix("torch."), "layout": "channels_last" if channels_last else "nchw",
            "device": param.device.type, "torch": torch.__version__,
            "python": ".".join(map(str, sys.version_info[:2])), "cpu": _cpu_fingerprint()}


def _sha256(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read (gone, no permission)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(4 * 2**20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    """The entry's checked files by their path relative to `folder`."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in UNCHECKED}


def _remove_unfinished(files: dict[str, Path], listed: dict) -> None:
    """Remove the files the record does not list that are older than UNFINISHED_S: left by a
    compile that never finished (a killed process). Newer ones may be another process's compile
    in progress on the same entry (torch writes its files atomically, under its own locks)."""
    now = time.time()
    for rel, path in files.items():
        try:
            if rel not in listed and now - path.stat().st_mtime > UNFINISHED_S:
                path.unlink()
        except OSError:
            pass


@dataclass
class CompileCache:
    """One entry of the compile cache, open for this process."""

    folder: Path  # the entry; Inductor's cache is folder/inductor
    key: dict
    state: str  # "hit": a checked entry was there; "new": none was; "rebuilt": bad files or a bad entry removed
    model: str = ""
    shapes: list[str] = field(default_factory=list)  # input shapes compiled, for people reading the record
    notes: Callable[[str], None] = print
    # (path, size, mtime) of the files at the last commit: a run that compiled nothing new (the usual
    # case, committed after every run) is then seen without hashing the entry again
    committed: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None, unet, notes: Callable[[str], None], *,
             model: str = "") -> CompileCache | None:
        """The entry of `unet` under `root` (None: `default_root()`; "off": no cache, returns None),
        checked, and made Inductor's cache folder. Never raises for a bad entry: notes it and
        starts it again. A root that cannot be created raises OSError (the caller says so)."""
        if root is not None and str(root) == OFF:
            return None
        root = Path(root).expanduser() if root is not None else default_root()
        key = entry_key(unet)
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        cache = cls(root / name, key, "new", model=model, notes=notes)
        cache.state, shapes = cache._check()
        cache.shapes = shapes
        (cache.folder / INDUCTOR).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((cache.folder / INDUCTOR).resolve())
        return cache

    def _check(self) -> tuple[str, list[str]]:
        """("hit", shapes) for a sound entry; ("rebuilt", ...) after removing damaged files or a whole
        entry whose record is bad; ("new", []) when there was none."""
        record_file = self.folder / RECORD
        files = _files(self.folder / INDUCTOR)
        if not record_file.exists():
            _remove_unfinished(files, {})
            return "new", []
        problem = None
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("version") != VERSION:
                problem = "of another format"
            elif record.get("key") != self.key:
                problem = "made for another torch, CPU or model"
            elif not isinstance(record.get("files"), dict):
                problem = "unreadable"
        except (OSError, ValueError, RecursionError) as error:
            problem = f"unreadable ({type(error).__name__})"
        if problem is not None:  # nothing in the entry can be checked
            self.notes(f"note: compile cache entry {self.folder} ignored (its record is {problem}); compiling again")
            shutil.rmtree(self.folder, ignore_errors=True)
            return "rebuilt", []
        listed = record["files"]
        damaged = [rel for rel, path in files.items() if rel in listed and _sha256(path) != listed[rel]]
        for rel in damaged:
            files[rel].unlink(missing_ok=True)
        _remove_unfinished(files, listed)
        shapes = record.get("shapes")
        shapes = [str(s) for s in shapes] if isinstance(shapes, list) else []
        if damaged:  # the rest was checked: torch compiles again only what these files held
            more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
            self.notes(f"note: compile cache entry {self.folder}: {damaged[0]}{more} damaged, ignored and "
                       f"compiled again")
            return "rebuilt", shapes
        return "hit", shapes

    def discard(self, reason: str) -> None:
        """Empty the entry (torch could not use it: `reason`), to compile again."""
        self.notes(f"note: compile cache entry {self.folder} could not be used ({reason}); compiling again")
        shutil.rmtree(self.folder / INDUCTOR, ignore_errors=True)
        (self.folder / RECORD).unlink(missing_ok=True)
        (self.folder / INDUCTOR).mkdir(parents=True, exist_ok=True)
        self.state = "rebuilt"

    def commit(self, shape: str | None = None) -> bool:
        """Record every file now in the entry (after a compile or a run that compiled a new size).
        Returns False, with a note, when the record cannot be written (the cache is then not
        used next time; the run itself is unaffected)."""
        if shape and shape not in self.shapes:
            self.shapes.append(shape)
        found = _files(self.folder / INDUCTOR)
        try:
            stamps = {rel: (path.stat().st_size, path.stat().st_mtime_ns) for rel, path in found.items()}
        except OSError:  # a file removed meanwhile (another process's clean-up): hash what is there
            stamps = None
        if stamps is not None and stamps == self.committed.get("stamps") and self.shapes == self.committed.get("shapes"):
            return True
        files = {rel: digest for rel, path in found.items() if (digest := _sha256(path)) is not None}
        record_file = self.folder / RECORD
        try:
            old = json.loads(record_file.read_text(encoding="utf-8")) if record_file.exists() else None
        except (OSError, ValueError):
            old = None
        if not (isinstance(old, dict) and old.get("files") == files and old.get("shapes") == self.shapes):
            try:
                write_json(record_file, {"version": VERSION, "key": self.key, "model": self.model,
                                         "shapes": self.shapes, "files": files}, sort_keys=True)
            except (OSError, OutputError) as error:  # a full disk, a read-only folder
                self.notes(f"note: compile cache {self.folder} not recorded ({error}); the next run compiles again")
                return False
        self.committed = {"stamps": stamps, "shapes": list(self.shapes)}
        return True
