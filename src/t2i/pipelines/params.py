"""The parameter schema: one dataclass per pipeline, each field declaring everything a front door
needs, so the CLI flags, the API request models, the web UI controls, infotext read/write and the
X/Y/Z axes all come from one place and cannot drift apart.

    @dataclass
    class Txt2ImgParams:
        steps: int = param(20, "denoising steps", minimum=1, maximum=1000, infotext="Steps", axis="Steps")

A field's metadata (see `param`): help, label, group, choices, bounds, step, its CLI flag, its
infotext key, its name in the web UI's REST API, its X/Y/Z axis name. Derived views live beside
their users: `add_cli_arguments`/`from_cli` here, the pydantic models in pipelines/schema.py, the
infotext key table in pipelines/infotext.py, the axes in pipelines/xyz_axes.py.

Validation (`schema.validate_strict`) is strict, through pydantic: no bool where a number
belongs, no 2.5 steps, only finite floats, strings only where strings belong, then the bounds and
choices declared here; a failure raises ParamError naming the field.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from t2i.errors import ParamError  # noqa: F401  (re-exported: pipelines raise it from here)

# Groups, in the order front doors show them.
GROUPS = ("prompt", "sampling", "size", "batch", "seed", "hires", "img2img", "inpaint", "outpaint", "advanced",
          "model", "memory", "speed", "script", "family", "upscale", "output")


def param(default: Any, help: str, *, label: str | None = None, group: str = "sampling",
          choices: tuple | None = None, minimum: float | None = None, maximum: float | None = None,
          step: float | None = None, flag: str | None = None, cli: bool = True, cli_action: str | None = None,
          infotext: str | None = None, infotext_part: int | None = None, infotext_values: tuple | None = None,
          infotext_implies: dict | None = None, api: str | None = "", axis: str | None = None,
          axis_aliases: tuple[str, ...] = (), axis_show_label: bool = True, default_factory=None):
    """A pipeline parameter.

    label, group, step: how the web UI shows it (label default: the name in words).
    choices, minimum, maximum: validation and the controls' ranges.
    flag: the CLI flag (default `--field-name`); cli=False: not a CLI flag (prompt: positional;
        loras: Python only); cli_action: "append" (repeatable, a tuple field), "optional" (a bare
        flag means "on", for auto/on/off choices) or "nargs+" (several values).
    infotext: its key in the image's infotext (None: not recorded); infotext_part: 0 or 1 for the
        halves of a `WxH` pair (Size); infotext_values: (text for False, text for True) for a
        bool shown in words; infotext_implies: other fields a key's presence sets (the hires
        keys switch the hires fix on).
    api: its name in the web UI's REST API ("" = the field name, None = not in the API).
    axis: its X/Y/Z plot axis type (the web UI's label); axis_aliases, axis_show_label: how the
        axis is found and how its cells are labelled.
    """
    meta = {"help": help, "label": label, "group": group, "choices": choices, "minimum": minimum,
            "maximum": maximum, "step": step, "flag": flag, "cli": cli, "cli_action": cli_action,
            "infotext": infotext, "infotext_part": infotext_part, "infotext_values": infotext_values,
            "infotext_implies": infotext_implies or {}, "api": api, "axis": axis, "axis_aliases": axis_aliases,
            "axis_show_label": axis_show_label}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def base_type(hint) -> type:
    """int for `int | None`, tuple for `tuple[str, ...]`, ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (tuple, list, dict):
        return typing.get_origin(hint)
    return base_type(args[0]) if args else hint


def field_specs(cls) -> list[tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return [(f, base_type(hints[f.name])) for f in dataclasses.fields(cls)]


def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def label_of(f: dataclasses.Field) -> str:
    return f.metadata.get("label") or f.name.replace("_", " ").capitalize()


def api_name(f: dataclasses.Field) -> str | None:
    """The field's key in the web UI's REST API, None when the API does not take it."""
    name = f.metadata.get("api", "")
    return f.name if name == "" else name


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def check_choices_and_bounds(params) -> None:
    """The declared choices and bounds (types are checked first, by pydantic; schema.py)."""
    for f, kind in field_specs(type(params)):
        value, meta = getattr(params, f.name), f.metadata
        if value is None:
            continue
        values = value if kind is tuple else (value,)
        for item in values:
            if meta.get("choices") and item not in meta["choices"]:
                raise ParamError(f"{f.name} must be one of {', '.join(map(str, meta['choices']))}; got {item!r}")
        if kind in (int, float):
            if meta.get("minimum") is not None and value < meta["minimum"]:
                raise ParamError(f"{f.name} must be >= {meta['minimum']}, got {value}")
            if meta.get("maximum") is not None and value > meta["maximum"]:
                raise ParamError(f"{f.name} must be <= {meta['maximum']}, got {value}")


# ----------------------------------------------------------------------------- the CLI view


def add_cli_arguments(parser, cls, skip: tuple[str, ...] = (), group: str | None = None) -> None:
    """`--snake-case` flags for every field (of `group` only, when given); defaults stay None so
    unset flags are detectable."""
    for f, kind in field_specs(cls):
        if f.name in skip or not f.metadata.get("cli", True) or (group and f.metadata.get("group") != group):
            continue
        default = field_default(f)
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        choices = f.metadata.get("choices")
        action = f.metadata.get("cli_action")
        if kind is bool:
            parser.add_argument(flag_of(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif action == "append":
            parser.add_argument(flag_of(f), dest=f.name, action="append", default=None, help=help_text,
                                metavar=f.name.upper().removesuffix("S"))
        elif action == "optional":  # auto/on/off: a bare flag means "on"
            parser.add_argument(flag_of(f), dest=f.name, nargs="?", const="on", default=None, choices=choices,
                                help=help_text)
        elif action == "nargs+":
            parser.add_argument(flag_of(f), dest=f.name, nargs="+", default=None, help=help_text,
                                metavar=f.metadata.get("label") or f.name.upper())
        else:
            scalar = kind if kind in (int, float) else str
            parser.add_argument(flag_of(f), dest=f.name, type=scalar, default=None, help=help_text,
                                metavar=f.name.upper(), choices=choices if kind is str and choices else None)


def from_cli(cls, namespace: argparse.Namespace, base=None, **overrides):
    """Build params from parsed flags: flags that were not given keep the dataclass defaults, or
    the values of `base` (a `cls` instance, e.g. parameters read from an image's infotext)."""
    values = {}
    for f, kind in field_specs(cls):
        value = getattr(namespace, f.name, None)
        if value is not None:
            values[f.name] = tuple(value) if kind is tuple else value
    values.update(overrides)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)
