"""The error types every layer of t2i raises, and the package version, from one source.

This module is the bottom of the import graph: it imports nothing of t2i and nothing heavy, so
any module (models, checkpoints, pipelines, the CLI before torch loads) can raise these.

Every error a user can cause derives from `T2IError` and carries a message that says what is
wrong and what to do; the front doors (CLI, API, web UI) print or return that message, never a
traceback. They also derive from the built-in type a caller would naturally catch
(`ValueError` for bad values, `RuntimeError` for files t2i cannot use), so code written against
the built-ins keeps working.
"""
from __future__ import annotations


class T2IError(Exception):
    """Base of every user-facing t2i error; its message is shown as it is."""


class ParamError(T2IError, ValueError):
    """A generation parameter out of range or of the wrong kind; the message says what to do."""


class ConfigError(T2IError, ValueError):
    """A config file or dictionary that does not match its dataclass."""


class ModelLoadError(T2IError, RuntimeError):
    """A model folder or file that t2i cannot use; the message says what was expected."""


class ModelConfigError(ModelLoadError, ValueError):
    """A file's embedded config that its dataclass rejects: a load error of the file and a bad value,
    so callers catching either (ModelLoadError, or ValueError like the CLI's config errors) see it."""


class OutputError(T2IError, OSError):
    """An output could not be written (folder is a file, no permission, disk full); nothing
    half-written is left behind."""


def version() -> str:
    """The installed t2i version (the package metadata), or "0+unknown" from a bare source tree."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("t2i")
    except PackageNotFoundError:
        return "0+unknown"
