"""Pydantic views of the parameter dataclasses (pipelines/params.py): strict validation of a
params object, and request models for the REST API, both generated from the fields' metadata so
there is no second hand-written copy of the schema.

    validate_strict(Txt2ImgParams(steps=2.5))        # ParamError: steps must be a valid integer, got 2.5
    Model = request_model(Txt2ImgParams)              # JSON body -> fields by their API names
    params = params_from_request(Txt2ImgParams, Model.model_validate(body))

Strict means: no bool where a number belongs, no 2.5 for an int, finite floats only, strings only
where strings belong (`tiling="no"` is an error, not True). Then the declared choices and bounds.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from t2i.errors import ParamError
from t2i.pipelines.params import api_name, base_type, check_choices_and_bounds, field_default, label_of


def _error_message(err: ValidationError, obj=None) -> str:
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    text = first["msg"].replace("Input should be", "must be")
    if first["type"] == "extra_forbidden":
        return f"unknown parameter {where!r}"
    return f"{where}: {text[0].lower() + text[1:]}, got {first.get('input')!r}"


def _strict_hint(hint):
    """dict fields (loras) take any mapping; the pipeline checks their items."""
    return dict[str, Any] if typing.get_origin(hint) is dict or hint is dict else hint


@functools.cache
def strict_model(cls) -> type[BaseModel]:
    """A pydantic model of `cls`'s fields in strict mode (built once per class, on first use)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: (_strict_hint(hints[f.name]), field_default(f)) for f in dataclasses.fields(cls)}
    config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Strict", __config__=config, **fields)


def validate_strict(params) -> None:
    """ParamError for the first field of the wrong type, not finite, or outside its choices/bounds."""
    if not dataclasses.is_dataclass(params):
        raise ParamError(f"expected a parameters dataclass, got {type(params).__name__}")
    values = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    try:
        strict_model(type(params)).model_validate(values)
    except ValidationError as err:
        raise ParamError(_error_message(err)) from None
    check_choices_and_bounds(params)


# ----------------------------------------------------------------------------- the API view


def _api_hint(hint):
    """JSON has arrays, not tuples: tuple fields take lists in a request."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return list[typing.get_args(hint)[0]]
    args = typing.get_args(hint)
    if origin is typing.Union or (args and type(None) in args):
        inner = [a for a in args if a is not type(None)]
        return _api_hint(inner[0]) | None if len(inner) == 1 else hint
    return _strict_hint(hint)


def request_fields(cls, exclude: tuple[str, ...] = ()) -> dict[str, tuple]:
    """pydantic field definitions of `cls` under their web-UI API names: type, default, help,
    bounds; JSON-strict per field (no "20" for 20, no true for 1, finite numbers)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        name = api_name(f)
        if name is None or f.name in exclude:
            continue
        meta = f.metadata
        default = field_default(f)
        numeric = {"ge": meta.get("minimum"), "le": meta.get("maximum")} if base_type(hints[f.name]) in (int, float) \
            else {}
        if base_type(hints[f.name]) is float:
            numeric["allow_inf_nan"] = False
        extra = {"t2i_field": f.name, **({"choices": list(meta["choices"])} if meta.get("choices") else {})}
        out[name] = (_api_hint(hints[f.name]), Field(
            default=list(default) if isinstance(default, tuple) else default, description=meta.get("help"),
            title=label_of(f), strict=True, json_schema_extra=extra, **numeric))
    return out


@functools.cache
def request_model(cls, name: str | None = None, exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A request model for `cls`: unknown keys are ignored, as the web UI's API does."""
    config = ConfigDict(extra="ignore", populate_by_name=True)
    return create_model(name or f"{cls.__name__}Request", __config__=config, **request_fields(cls, exclude))


def params_from_request(cls, request: BaseModel | dict, **overrides):
    """`cls` params from a validated request (or a dict by API names): API names mapped back to
    fields, lists back to tuples; then strictly validated."""
    data = request.model_dump() if isinstance(request, BaseModel) else dict(request)
    values = {}
    for f in dataclasses.fields(cls):
        name = api_name(f)
        if name is not None and name in data:
            value = data[name]
            values[f.name] = tuple(value) if isinstance(value, list) else value
    values.update(overrides)
    try:
        params = cls(**values)
    except TypeError as err:
        raise ParamError(f"cannot build {cls.__name__}: {err}") from None
    validate_strict(params)
    return params
