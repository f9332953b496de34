"""One parameter schema per pipeline: dataclass fields with metadata drive the CLI flags, the
API request model and the web UI controls, and validation, so they cannot drift apart."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


from t2i.errors import ParamError  # noqa: F401  (re-exported: pipelines raise it from here)


def param(default: Any, help: str, *, choices: tuple | None = None, minimum: float | None = None,
          maximum: float | None = None, flag: str | None = None, cli: bool = True):
    """A pipeline parameter: default, help text and constraints in one place."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "flag": flag, "cli": cli}
    return dataclasses.field(default=default, metadata=meta)


def _base_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def field_specs(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, _base_type(hints[f.name])) for f in dataclasses.fields(cls)]


def validate(params) -> None:
    """Raise ParamError for the first field outside its declared constraints."""
    for f, kind in field_specs(type(params)):
        value, meta = getattr(params, f.name), f.metadata
        if value is None:
            continue
        if kind in (int, float) and not isinstance(value, (int, float)) or kind is str and not isinstance(value, str):
            raise ParamError(f"{f.name} must be {kind.__name__}, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ParamError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ParamError(f"{f.name} must be >= {meta['minimum']}, got {value}")
        if meta.get("maximum") is not None and value > meta["maximum"]:
            raise ParamError(f"{f.name} must be <= {meta['maximum']}, got {value}")


def add_cli_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """`--snake-case` flags for every field; defaults stay None so unset flags are detectable."""
    for f, kind in field_specs(cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text,
                                metavar=f.name.upper())


def from_cli(cls, namespace: argparse.Namespace, base=None, **overrides):
    """Build params from parsed flags: flags that were not given keep the dataclass defaults, or
    the values of `base` (a `cls` instance, e.g. parameters read from an image's infotext)."""
    values = {f.name: getattr(namespace, f.name) for f, _ in field_specs(cls)
              if getattr(namespace, f.name, None) is not None}
    values.update(overrides)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
