"""Atomic writes: a file or folder appears complete under its name, or not at all.

Every writer in t2i (images, model files and folders, training checkpoints and caches, configs)
goes through here, so that a full disk, Ctrl-C or a crash never leaves a half-written file under
a real name, nor replaces a good old file with a broken new one.

How: write to a temporary name in the target's own folder (same file system, so the rename is
atomic), flush and fsync, rename over the target, then fsync the folder so the rename itself
survives a power cut. Any exception (KeyboardInterrupt included) removes the temporary and
leaves the old target untouched. A `kill -9` runs no cleanup: its leftovers all start with
`TMP_PREFIX`, so `remove_leftovers` (called when a training run is resumed) finds them.

Files are created with mode 0o666 and folders 0o777, less the umask, as `open()` and `mkdir`
make them: not the 0600/0700 of the `tempfile` module, which left model folders private.

    with atomic_file(path) as f:          # a file object
        torch.save(state, f)
    with atomic_path(path) as tmp:        # a file name, for writers that open the file themselves
        safetensors.torch.save_file(state, str(tmp))
    with atomic_folder(folder, replace=True) as staging:
        ...write files into staging...
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from t2i.errors import OutputError

TMP_PREFIX = ".t2i-tmp-"
# The random part and a readable piece of the target's name; kept short, so a temporary of a
# long image name (up to ~240 bytes) still fits the usual 255-byte limit of a file name.
_NAME_CHARS = 60
_FILE_MODE = 0o666  # less the umask, as open() does
_FOLDER_MODE = 0o777

# What to do about each kind of failure, in words a user can act on.
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EFBIG: "the file is larger than this system allows (a file-size limit); write elsewhere",
    errno.EACCES: "no permission to write there; choose another folder",
    errno.EPERM: "no permission to write there; choose another folder",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def output_error(err: OSError, path: str | os.PathLike[str], what: str = "write") -> OutputError:
    """A one-line OutputError naming `path`, what went wrong and what to do, for an OSError."""
    advice = _ADVICE.get(err.errno or -1) or (err.strerror or str(err))
    return OutputError(f"cannot {what} {path}: {advice}")


# Writers in Rust (safetensors) report an OS error as text: "I/O error: ... (os error 28)".
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")


def _os_error_of(err: BaseException) -> OSError | None:
    """The OSError behind `err`: itself, or one a library reported only in its message."""
    if isinstance(err, OSError):
        return err
    match = _OS_ERROR_RE.search(str(err))
    if match:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    return None


def temp_name(target: Path) -> Path:
    """A fresh temporary name beside `target`, recognisable by TMP_PREFIX."""
    return target.with_name(f"{TMP_PREFIX}{secrets.token_hex(4)}-{target.name[:_NAME_CHARS]}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable. Some file systems (and Windows) cannot open or fsync
    a folder; the rename is still atomic there, only not yet on disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove a temporary (file or folder) if it is there; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _prepare(path: Path) -> None:
    """Refuse a target that is a folder; create the parent folders."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(err, path.parent, "create the folder") from err


class _TrackedFile:
    """A file object that remembers the OSError of a failed write. torch.save turns the ENOSPC
    of its writer into RuntimeError("unexpected pos ..."); this keeps the real cause."""

    def __init__(self, f: IO):
        self._f = f
        self.write_error: OSError | None = None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as err:
            self.write_error = err
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", encoding: str = "utf-8") -> Iterator[IO]:
    """A file object open on a temporary beside `path`; renamed over `path` when the block ends
    without an exception, removed otherwise. `mode` is "wb" or "w" (text, `encoding`).
    An OSError (disk full, no permission, ...) becomes an OutputError naming `path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes in mode 'wb' or 'w', not {mode!r}")
    path = Path(path)
    _prepare(path)
    tmp = temp_name(path)
    tracked = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), _FILE_MODE)
        with os.fdopen(fd, mode, **({"encoding": encoding} if mode == "w" else {})) as f:
            tracked = _TrackedFile(f)
            yield tracked
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        cause = err if isinstance(err, OSError) else (tracked.write_error if tracked else None)
        if cause is not None and not isinstance(err, OutputError):
            raise output_error(cause, path) from err
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary file name beside `path`, for writers that open the file themselves (such as
    safetensors' save_file); the file written there is fsynced and renamed over `path` when the
    block ends without an exception, removed otherwise. It gets the mode `open()` would give
    (safetensors, for one, creates its files 0600)."""
    path = Path(path)
    _prepare(path)
    tmp = temp_name(path)
    try:
        # created here first: its mode is the normal one (0o666 less the umask), without reading
        # the umask (os.umask can only be read by changing it, for every thread at once)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE))
        normal_mode = stat.S_IMODE(os.stat(tmp).st_mode)
        yield tmp
        if stat.S_IMODE(os.stat(tmp).st_mode) != normal_mode:
            os.chmod(tmp, normal_mode)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        cause = _os_error_of(err)
        if cause is not None and not isinstance(err, OutputError):
            raise output_error(cause, path) from err
        raise
    _fsync_folder(path.parent)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path, "w", encoding) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], data, *, indent: int | None = 2, sort_keys: bool = False,
               ensure_ascii: bool = True) -> Path:
    """`data` as JSON with a final newline."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n")


def _finish_tree(folder: Path) -> None:
    """Before a staging folder gets its real name: give what libraries wrote there the normal
    modes (safetensors creates 0600 files) and fsync every file and folder, so it is on disk."""
    folder_mode = stat.S_IMODE(os.stat(folder).st_mode)  # made here with 0o777 less the umask
    file_mode = folder_mode & _FILE_MODE
    for root, dirs, files in os.walk(folder):
        for name, mode in [(d, folder_mode) for d in dirs] + [(f, file_mode) for f in files]:
            path = Path(root) / name
            if not path.is_symlink() and stat.S_IMODE(os.stat(path).st_mode) != mode:
                os.chmod(path, mode)
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_folder(Path(root))


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """An empty staging folder beside `path`; when the block ends without an exception its files
    are fsynced and it is renamed to `path`, otherwise it is removed. An existing `path` is
    replaced only with `replace=True` (moved aside, the new folder renamed in, the old removed);
    otherwise it is an OutputError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"cannot write the folder {path}: a file has that name; remove it or choose another name")
    if path.exists() and not replace:
        raise OutputError(f"cannot write the folder {path}: it already exists; remove it or choose another name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = temp_name(path)
        os.mkdir(staging, _FOLDER_MODE)
    except OSError as err:
        raise output_error(err, path, "create the folder") from err
    old = None
    try:
        yield staging
        _finish_tree(staging)
        if path.exists():
            old = temp_name(path)
            os.replace(path, old)
        os.replace(staging, path)
    except BaseException as err:
        if old is not None and not path.exists():
            os.replace(old, path)  # put the old folder back
            old = None
        _remove(staging)
        cause = _os_error_of(err)
        if cause is not None and not isinstance(err, OutputError):
            raise output_error(cause, path) from err
        raise
    finally:
        if old is not None:
            _remove(old)
    _fsync_folder(path.parent)


def is_leftover(name: str) -> bool:
    """A temporary name of this module (or of the per-file copies t2i had before it)."""
    if name.startswith(TMP_PREFIX):
        return True
    # before t2i.atomic: `.<name>.tmp<pid>` (checkpoints, model files)
    stem, _, pid = name.rpartition(".tmp")
    return name.startswith(".") and bool(stem) and pid.isdigit()


def remove_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries (files and staging folders) that killed writers left anywhere
    under `folder`; returns what was removed. Only names from this module are touched."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            if is_leftover(name):
                _remove(Path(root) / name)
                removed.append(Path(root) / name)
        dirs[:] = [d for d in dirs if not is_leftover(d)]
    return removed
