"""Axes of the X/Y/Z plot: what each axis type changes, and its values as web-UI users type them.

    axis = parse_axis("Steps: 10-30 (+10)", Txt2ImgParams)      # values [10, 20, 30]

Values are comma-separated, with CSV quoting for values that hold commas (`"a, b", c`). Whole
numbers and decimals also take ranges, both ends included: `1-5` (1, 2, 3, 4, 5), `1-10 (+3)`
(1, 4, 7, 10), `10-1 (-3)`, `1-2 (+0.25)` and counts: `10-20 [3]` (10, 15, 20, evenly spaced;
whole-number axes truncate).

An axis type is offered only when the pipeline's params have the field it sets (Hires steps for
txt2img, Clip skip once the schema has `clip_skip`, ...).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from t2i.pipelines.generation_params import OutpaintParams, Txt2ImgParams
from t2i.pipelines.params import ParamError, field_specs

NOTHING = "Nothing"


@dataclass
class Cell:
    """What one grid cell runs: the params after its axes, plus what lies outside the params."""

    params: object  # a GenerationParams subclass
    checkpoint: str | None = None  # model path of the Checkpoint name axis
    style_names: list[str] = field(default_factory=list)  # styles of the Styles axis, expanded after all axes


@dataclass(frozen=True)
class AxisOption:
    label: str  # the web UI's name, written to the infotext as "X Type"
    type: type  # int, float or str
    field: str | None = None  # the params field it sets; None for the kinds below
    kind: str = "field"  # field, prompt_sr, checkpoint, styles
    show_label: bool = True  # cell labels "Steps: 20" (True) or just "Euler a" (False)
    aliases: tuple[str, ...] = ()

    def available_for(self, params_cls) -> bool:
        return self.field is None or self.field in {f.name for f in dataclasses.fields(params_cls)}

    def format(self, value) -> str:
        """The cell label, as the web UI writes it."""
        if self.kind == "checkpoint":
            return Path(str(value)).name
        if isinstance(value, float):
            value = round(value, 8)
        return f"{self.label}: {value}" if self.show_label else str(value)

    def apply(self, cell: Cell, value, values: Sequence) -> None:
        if self.kind == "field":
            cell.params = replace(cell.params, **{self.field: value})
        elif self.kind == "prompt_sr":
            search, params = values[0], cell.params
            if search not in params.prompt and search not in params.negative_prompt:
                raise ParamError(f"Prompt S/R did not find {search!r} in the prompt or the negative prompt "
                                 f"(the first value is what gets replaced)")
            cell.params = replace(params, prompt=params.prompt.replace(search, value),
                                  negative_prompt=params.negative_prompt.replace(search, value))
        elif self.kind == "checkpoint":
            cell.checkpoint = value
        elif self.kind == "styles":
            cell.style_names += [name.strip() for name in value.split(",") if name.strip()]
        else:
            raise ValueError(f"unknown axis kind {self.kind!r}")


# The web UI's order of axis types. Field axes take their type, field, aliases and labelling from
# the schema (each params field's `axis=` metadata); the others act beyond one field.
AXIS_ORDER = ("Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R", "Sampler",
              "Schedule type", "Checkpoint name", "Eta", "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise",
              "Clip skip", "Denoising", "Hires upscaler", "Width", "Height", "Styles")
SPECIAL_AXES = {
    "Prompt S/R": AxisOption("Prompt S/R", str, kind="prompt_sr", show_label=False, aliases=("prompt sr", "s/r")),
    "Checkpoint name": AxisOption("Checkpoint name", str, kind="checkpoint", aliases=("checkpoint", "model")),
    "Styles": AxisOption("Styles", str, kind="styles", aliases=("style",)),
}


def schema_axes(*classes) -> dict[str, AxisOption]:
    """An AxisOption for every params field that declares an `axis`, by label (first class wins)."""
    options: dict[str, AxisOption] = {}
    for cls in classes:
        for f, kind in field_specs(cls):
            label = f.metadata.get("axis")
            if label and label not in options:
                options[label] = AxisOption(label, kind, f.name, show_label=f.metadata.get("axis_show_label", True),
                                            aliases=tuple(f.metadata.get("axis_aliases", ())))
    return options


def _all_axes() -> tuple[AxisOption, ...]:
    fields = schema_axes(Txt2ImgParams, OutpaintParams)
    known = {**fields, **SPECIAL_AXES}
    missing = set(fields) - set(AXIS_ORDER)
    if missing:  # a new `axis=` in the schema must get its place in AXIS_ORDER
        raise RuntimeError(f"axis types {sorted(missing)} are declared in the schema but not in AXIS_ORDER")
    return tuple(known[label] for label in AXIS_ORDER)


AXIS_OPTIONS: tuple[AxisOption, ...] = _all_axes()


def axis_options(params_cls) -> list[AxisOption]:
    """The axis types `params_cls` supports."""
    return [o for o in AXIS_OPTIONS if o.available_for(params_cls)]


def find_axis_option(name: str, params_cls) -> AxisOption:
    """The axis type called `name` (its label, an alias or the params field, any case)."""
    wanted = " ".join(name.split()).lower()
    for option in AXIS_OPTIONS:
        if wanted in {option.label.lower(), *option.aliases, (option.field or "").lower()}:
            if not option.available_for(params_cls):
                raise ParamError(f"axis type {option.label!r} does not apply to {params_cls.__name__} "
                                 f"(it has no {option.field} parameter)")
            return option
    available = ", ".join(o.label for o in axis_options(params_cls))
    raise ParamError(f"unknown axis type {name!r}; available: {available}")


# A number, possibly signed, with spaces allowed after the sign as the web UI allows them.
_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
_STEP_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\))?\s*")
_COUNT_RANGE = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*")


def split_values(text: str) -> list[str]:
    """Comma-separated values, CSV quoting honoured, each stripped, empty ones dropped."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as err:
        raise ParamError(f"cannot split {text!r} into values: {err}") from err
    return [value.strip() for row in rows for value in row if value.strip()]


def _number(text: str) -> float:
    return float(text.replace(" ", ""))


def _expand_step_range(start: float, end: float, step: float | None, what: str) -> list[float]:
    step = step if step is not None else (1.0 if end >= start else -1.0)
    if step == 0:
        raise ParamError(f"{what}: the step of a range cannot be 0")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count < 1:
        raise ParamError(f"{what}: the range is empty (a step of {step:g} never goes from {start:g} to {end:g})")
    return [round(start + i * step, 10) for i in range(count)]


def _expand(value: str, kind: type, what: str) -> list:
    """One typed value, or the values of a range."""
    if kind is str:
        return [value]
    count_match = _COUNT_RANGE.fullmatch(value)
    step_match = _STEP_RANGE.fullmatch(value)
    if count_match:
        start, end, count = _number(count_match[1]), _number(count_match[2]), int(count_match[3])
        if count < 1:
            raise ParamError(f"{what}: a range needs a count of at least 1, got {value!r}")
        numbers = [start + (end - start) * i / (count - 1) for i in range(count)] if count > 1 else [start]
    elif step_match:
        step = _number(step_match[3]) if step_match[3] else None
        numbers = _expand_step_range(_number(step_match[1]), _number(step_match[2]), step, what)
    else:
        numbers = None
    if numbers is not None:
        return [int(n) for n in numbers] if kind is int else [round(n, 10) for n in numbers]
    try:
        return [int(value) if kind is int else float(value)]
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise ParamError(f"{what}: {value!r} is not {noun} or a range such as 1-5, 1-9 (+2) or 10-20 [3]") from None


def parse_values(option: AxisOption, text: str) -> list:
    """The typed values of `text` for axis type `option`; ParamError when there are none or one is bad."""
    what = f"{option.label} values"
    values = [v for item in split_values(text) for v in _expand(item, option.type, what)]
    if not values:
        raise ParamError(f"{what}: none given (write them comma-separated, e.g. {_example(option)})")
    return values


def _example(option: AxisOption) -> str:
    return {int: "10,20,30 or 10-30 (+10)", float: "3,5.5,7 or 1-2 [5]"}.get(option.type, "a,b,c")


@dataclass
class Axis:
    option: AxisOption
    values: list
    text: str  # the values as given: the infotext's "X Values"

    @property
    def labels(self) -> list[str]:
        return [self.option.format(v) for v in self.values]


def make_axis(name: str, values: str | Sequence, params_cls) -> Axis | None:
    """An axis from a type name and its values (a string to parse, or a list); None for Nothing."""
    if name.strip().lower() == NOTHING.lower():
        return None
    option = find_axis_option(name, params_cls)
    if isinstance(values, str):
        return Axis(option, parse_values(option, values), values.strip())
    items = list(values)
    if not items:
        raise ParamError(f"{option.label} values: none given")
    text = ", ".join(map(str, items))
    return Axis(option, parse_values(option, _as_csv(items)) if option.type is not str else [str(v) for v in items],
                text)


def _as_csv(items: Sequence) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(items)
    return out.getvalue().strip()


def parse_axis(spec: str | None, params_cls) -> Axis | None:
    """An axis from `Type: values` (the CLI's --x/--y/--z); None for an empty spec or Nothing."""
    if spec is None or not spec.strip():
        return None
    name, sep, values = spec.partition(":")
    if not sep:
        if name.strip().lower() == NOTHING.lower():
            return None
        raise ParamError(f"axis {spec!r} needs the form 'Type: values', e.g. 'Steps: 10,20,30' or "
                         f"'Sampler: Euler a, DDIM'")
    return make_axis(name, values, params_cls)
