"""Typed configs: nested dataclasses built from YAML/JSON dictionaries, strictly.

A config file is user input and the config embedded in a model file is untrusted input, so
`from_dict` checks every value against its field's type hint before the dataclass is made
(pydantic in strict mode: no bool where a number belongs, no 2.5 for an int, only finite
floats, strings only where strings belong, tuples of the right element types, Literal choices),
and against the bounds declared next to the field:

    layers_per_block: Annotated[int, between(1, 16)] = 1
    block_out_channels: Levels = (32, 64, 128)        # an alias below: 1-8 widths of 1-8192

Unknown keys are errors (a typo in a config must not silently train the wrong model). Every
error names the source (the file) and the field's full path (`unet.layers_per_block`) and is a
ConfigError, one line. One YAML trap is forgiven: YAML 1.1 (PyYAML) reads `lr: 3e-3` as the
*string* "3e-3" (a float needs a dot there), so a numeric string is read as the number a
number-typed field wants. Cross-field rules (widths divisible by groups, one flag per level, a
sane total size) live in each dataclass's `__post_init__`; its ValueError becomes a ConfigError.

`check_value` validates one value against a type hint; the generation parameters reuse it.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from annotated_types import Ge, Gt, Interval, Len  # pydantic's own constraint markers (a light module)

from t2i.atomic import write_text
from t2i.errors import ConfigError

T = TypeVar("T")


# ------------------------------------------------------------------------------------ bounds
def between(lo: float, hi: float) -> Interval:
    """Inclusive bounds for a number: `Annotated[int, between(1, 64)]`."""
    return Interval(ge=lo, le=hi)


def at_least(lo: float) -> Ge:
    return Ge(lo)


def above(lo: float) -> Gt:
    return Gt(lo)


def count(lo: int, hi: int) -> Len:
    """Bounds on the number of entries of a tuple."""
    return Len(lo, hi)


# Size-like fields of model configs. A model file's embedded config is untrusted: every size is
# bounded so that a damaged or hostile file fails here, before a module is built (a file saying
# `layers_per_block: 100000` once drove memory past 2.7 GB). The limits are far above any real
# model (SDXL: UNet widths up to 1280, text widths up to 1280, 2 layers per block, 3 UNet
# levels, 32 text layers).
Width = Annotated[int, between(1, 8192)]  # channels, hidden and embedding sizes
Depth = Annotated[int, between(1, 128)]  # transformer layers
BlockDepth = Annotated[int, between(1, 16)]  # layers per UNet/VAE level (each builds several modules)
Heads = Annotated[int, between(1, 1024)]
Groups = Annotated[int, between(1, 1024)]  # GroupNorm groups
Resolution = Annotated[int, between(1, 16384)]
Levels = Annotated[tuple[Width, ...], count(1, 8)]  # widths, one per resolution level
LevelFlags = Annotated[tuple[bool, ...], count(1, 8)]  # a flag per resolution level
Codebook = Annotated[int, between(2, 1 << 20)]  # codebook (vocabulary) sizes
ClassNames = Annotated[tuple[str, ...], count(0, 100_000)]
Timesteps = Annotated[int, between(1, 100_000)]
Beta = Annotated[float, Interval(gt=0.0, lt=1.0)]
Fraction = Annotated[float, between(0.0, 1.0)]  # probabilities, shares, dropout rates
Crop = Annotated[int, between(0, 16384)]  # random-crop sizes in pixels; 0: whole images

# Training settings shared by the recipes' optimiser configs (their subclasses repeat the types
# when they change a default, so the bounds stay).
Steps = Annotated[int, between(0, 10**12)]  # step counts and intervals
BatchSize = Annotated[int, between(1, 1 << 20)]
LearningRate = Annotated[float, above(0.0)]
Decay = Annotated[float, Interval(ge=0.0, lt=1.0)]  # EMA decay: 1 would never move
Seed = Annotated[int, between(0, 2**63 - 1)]

# ~6x SDXL (3.5 billion parameters with both text encoders): 80 GB of float32 weights
MAX_PARAMETERS = 20_000_000_000


def check_model_size(what: str, parameters: float) -> None:
    """Refuse a config whose estimated parameter count is absurd, before anything is built."""
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"this {what} config describes a model of about {parameters / 1e9:,.0f} billion "
                         f"parameters; t2i refuses more than {MAX_PARAMETERS / 1e9:.0f} billion (SDXL has 3.5): "
                         f"the config is wrong or the model file is damaged")


# ------------------------------------------------------------------------------ one value
_STRICT = {"strict": True, "allow_inf_nan": False}  # a pydantic ConfigDict
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@functools.lru_cache(maxsize=None)
def _adapter(hint):
    # pydantic is imported on first use, not with this module: it takes ~0.2 s, and the CLI's
    # --help and argument errors, which import the parameter schema, must stay fast
    from pydantic import TypeAdapter

    return TypeAdapter(hint, config=_STRICT)


def _strip(hint):
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _number(text: str, kind: type):
    """"3e-3" -> 0.003 for a float field, "1e4" -> 10000 for an int field; None if it is not
    such a number (the string then fails validation with the field named)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    if kind is float:
        return float(text)
    exact = Decimal(text)
    if abs(exact) < 10**18 and exact == exact.to_integral_value():
        return int(exact)
    return None


def _from_yaml(value, hint):
    """The value as the hint wants its containers and numbers: lists become tuples, numeric
    strings (PyYAML's `3e-3`) become numbers; anything else is left for validation to judge."""
    hint = _strip(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (int, float) and isinstance(value, str):
        number = _number(value, hint)
        return value if number is None else number
    if origin in (typing.Union, types.UnionType):  # the first member that wants this kind of value
        if isinstance(value, list):
            tuples = [a for a in args if typing.get_origin(_strip(a)) is tuple]
            return _from_yaml(value, tuples[0]) if tuples else value
        if isinstance(value, str) and not any(_strip(a) is str for a in args):
            for arg in args:
                if _strip(arg) in (int, float) and _number(value, _strip(arg)) is not None:
                    return _number(value, _strip(arg))
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_yaml(v, args[0]) for v in value)
        if len(args) == len(value):
            return tuple(_from_yaml(v, a) for v, a in zip(value, args))
        return tuple(value)
    if origin is dict and isinstance(value, dict) and len(args) == 2:
        return {k: _from_yaml(v, args[1]) for k, v in value.items()}
    return value


def _describe(err, name: str) -> str:
    """One line from pydantic's errors. A union (`int | tuple[int, ...]`) reports a failure per
    member: a bound broken by one member says more than "not a tuple" from another, so type
    mismatches are left out when there is anything else, and the rest are joined with "or"."""
    errors = err.errors()
    errors = [e for e in errors if not e["type"].endswith("_type")] or errors
    problems: dict[tuple[str, str], list[str]] = {}  # (name[index], the value shown) -> the messages
    for e in errors:
        index = "".join(f"[{part}]" for part in e["loc"] if isinstance(part, int))  # tuple entries
        msg = e["msg"].replace("Input should be", "must be").replace(" after validation", "")
        msg = msg.replace("Tuple should have", "must have")
        if e["type"] == "missing":  # a fixed-length tuple given too few entries
            index, msg = "", "has too few entries"
        shown = repr(e["input"])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        msgs = problems.setdefault((f"{name}{index}", shown), [])
        if msg not in msgs:
            msgs.append(msg)
    return "; ".join(f"{where}: {' or '.join([msgs[0]] + [m.removeprefix('must be ') for m in msgs[1:]])}, got {shown}"
                     for (where, shown), msgs in problems.items())


def check_value(value: Any, hint: Any, name: str, error: type[Exception] = ConfigError) -> Any:
    """`value` validated against the type hint `hint` (bounds in `Annotated` included) and
    returned as that type; else `error(f"{name}: what is wrong, got value")`."""
    from pydantic import TypeAdapter, ValidationError  # loaded by _adapter already: see there

    value = _from_yaml(value, hint)
    try:
        adapter = _adapter(hint)
    except TypeError:  # an unhashable hint: build without the cache
        adapter = TypeAdapter(hint, config=_STRICT)
    try:
        return adapter.validate_python(value)
    except ValidationError as err:  # pydantic's errors, as one line that names the field
        raise error(_describe(err, name)) from None


# -------------------------------------------------------------------------------- dataclasses
@functools.lru_cache(maxsize=None)
def _field_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def field_hint(cls: type, name: str) -> Any:
    """The resolved type hint of dataclass field `name`, bounds included (for check_value)."""
    return _field_hints(cls)[name]


def _is_dataclass_type(hint) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _build(cls: type[T], data: Any, where: str, keypath: str) -> T:
    here = f"{where}: {keypath}" if keypath else where
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{here}: expected a mapping of {cls.__name__} fields, "
                          f"got {type(data).__name__} {data!r:.60}")
    hints = _field_hints(cls)
    unknown = [f"{keypath}.{k}" if keypath else str(k) for k in data if k not in hints]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}; {cls.__name__} "
                          f"{'at ' + keypath + ' ' if keypath else ''}takes {', '.join(hints)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{keypath}.{name}" if keypath else name
        hint = hints[name]
        if _is_dataclass_type(_strip(hint)):
            kwargs[name] = _build(_strip(hint), value, where, path)
        else:
            kwargs[name] = check_value(value, hint, f"{where}: {path}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, ArithmeticError, LookupError) as err:  # __post_init__'s cross-field rules
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{here}: {err}") from err


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """The dataclass `cls` from a YAML/JSON mapping, strictly (see the module docstring); `where`
    names the source in errors (a file, "path: config")."""
    return _build(cls, data, where, "")


def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for an empty file); ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:  # its message spans lines; the front doors print one
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from err
    except RecursionError as err:  # absurdly deep nesting
        raise ConfigError(f"{path} is not a usable config: it nests too deeply") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, read_yaml_mapping(path), where=str(path))


def save_yaml(config, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
