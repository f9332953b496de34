"""Schema -> Gradio controls: every control of the web UI is made here from a params field, so its
label, default, range, step, choices and help come from the one schema (pipelines/params.py).

    form = Form("txt2img", hints)
    steps = form.control(Txt2ImgParams, "steps")                 # a Slider 1..150 labelled "Sampling steps"
    form.controls(Txt2ImgParams, group="hires")                  # every field of a group, in schema order
    params_values = form.values(data)                            # {field: value} from an event's inputs

What the schema does not know is passed in, never invented here: choices that depend on the server
(samplers, styles, checkpoints), a default that depends on the model (the size), and the server's
limits, which narrow a range (the schema allows 1000 steps, a server 150). Help texts become hover
hints (`hints`: element id -> text; the page's script sets them as `title`).
"""
from __future__ import annotations

import dataclasses
import math

from t2i.errors import ParamError
from t2i.pipelines.params import field_default, field_specs, label_of

SLIDER_MAX_POSITIONS = 20_000  # a range with more positions than this is a number box (seeds)


def field_of(cls, name: str) -> tuple[dataclasses.Field, type]:
    for f, kind in field_specs(cls):
        if f.name == name:
            return f, kind
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _narrow(meta: dict, limit: dict | None) -> tuple:
    low, high = meta.get("minimum"), meta.get("maximum")
    if limit:
        if limit.get("minimum") is not None:
            low = limit["minimum"] if low is None else max(low, limit["minimum"])
        if limit.get("maximum") is not None:
            high = limit["maximum"] if high is None else min(high, limit["maximum"])
    return low, high


class Form:
    """Builds the controls of one tab (`prefix` names their element ids: `txt2img_steps`) and keeps
    them by field name, so an event's inputs map back to params fields."""

    def __init__(self, prefix: str, hints: dict[str, str], limits: dict[str, dict] | None = None):
        self.prefix = prefix
        self.hints = hints
        self.limits = limits or {}  # field -> {"minimum": .., "maximum": ..}: the server's narrower bounds
        self.components: dict[str, object] = {}

    def elem_id(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def control(self, cls, name: str, *, value=None, choices=None, label: str | None = None, kind: str | None = None,
                **kwargs):
        """The control of field `name` of `cls`. `value`: a default the schema cannot know (None:
        the schema's); `choices`: the server's list for a free-text field (samplers, styles);
        `kind`: force "number", "slider", "radio" or "textbox"; kwargs go to the Gradio component."""
        import gradio as gr

        f, base = field_of(cls, name)
        meta = f.metadata
        default = field_default(f) if value is None else value
        text = label or label_of(f)
        elem = kwargs.pop("elem_id", None) or self.elem_id(name)
        self.hints[elem] = meta.get("help", "")
        common = {"label": text, "elem_id": elem, **kwargs}
        options = choices if choices is not None else meta.get("choices")
        if base is bool and meta.get("infotext_values"):  # a bool the web UI shows in words: a radio
            words = list(meta["infotext_values"])
            component = gr.Radio(choices=words, value=words[bool(default)], **common)
        elif base is bool:
            component = gr.Checkbox(value=bool(default), **common)
        elif base is tuple:
            component = gr.Dropdown(choices=list(options or ()), value=list(default or ()), multiselect=True,
                                    **common)
        elif options and kind != "textbox":
            if kind == "radio":
                component = gr.Radio(choices=list(options), value=default, **common)
            else:
                component = gr.Dropdown(choices=list(options), value=default, **common)
        elif base in (int, float) and default is None:
            # "not given" (loopback's final strength): a slider or number box always sends a number
            component = gr.Textbox(value="", placeholder="none", **common)
        elif base in (int, float):
            component = self._number(f, base, default, kind, common)
        else:
            component = gr.Textbox(value="" if default is None else str(default), **common)
        self.components[name] = component
        return component

    def _number(self, f, base: type, default, kind: str | None, common: dict):
        import gradio as gr

        low, high = _narrow(f.metadata, self.limits.get(f.name))
        step = f.metadata.get("step") or (1 if base is int else None)
        if step is None and low is not None and high is not None:
            step = 10 ** math.floor(math.log10((high - low) / 100)) if high > low else 0.01
        if default is not None and low is not None and high is not None:
            default = min(max(default, low), high)
        bounded = low is not None and high is not None
        if kind == "slider" or (kind is None and bounded and (high - low) / (step or 1) <= SLIDER_MAX_POSITIONS):
            return gr.Slider(minimum=low, maximum=high, step=step, value=default, **common)
        return gr.Number(value=default, minimum=low, maximum=high, step=step or 1,
                         precision=0 if base is int else None, **common)

    def controls(self, cls, names=None, *, group: str | None = None, skip: tuple[str, ...] = (), **per_field) -> dict:
        """Controls for `names` (default: every field of `group`), in schema order; `per_field`:
        name -> kwargs for `control`."""
        if names is None:
            names = [f.name for f, _ in field_specs(cls) if group is None or f.metadata.get("group") == group]
        return {n: self.control(cls, n, **per_field.get(n, {})) for n in names if n not in skip}

    def values(self, data: dict, names=None) -> dict:
        """{field: value} of this form's controls in an event's `data` (inputs given as a set)."""
        names = names if names is not None else list(self.components)
        out = {}
        for name in names:
            component = self.components[name]
            if component in data:
                out[name] = data[component]
        return out


def shown(cls, name: str, value):
    """A params value as its control shows it (the inverse of `coerce`): bools in words, tuples as lists."""
    f, kind = field_of(cls, name)
    words = f.metadata.get("infotext_values")
    if kind is bool and words:
        return words[bool(value)]
    if isinstance(value, tuple):
        return list(value)
    return value


def coerce(cls, values: dict) -> dict:
    """Control values -> the field types: sliders give floats for int fields, number boxes None when
    emptied (then the field's default), multiselects lists for tuple fields."""
    out = {}
    for f, kind in field_specs(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        words = f.metadata.get("infotext_values")
        if value is None or (kind in (int, float) and isinstance(value, str) and not value.strip()):
            value = field_default(f)
        elif kind in (int, float) and isinstance(value, str):  # a number typed in a "none" box
            try:
                value = kind(value.strip())
            except ValueError:
                raise ParamError(f"{f.name} must be a number or empty; got {value.strip()!r}") from None
        elif kind is bool and words and isinstance(value, str):
            if value not in words:
                raise ParamError(f"{f.name} must be one of {', '.join(words)}; got {value!r}")
            value = value == words[1]
        elif kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif kind is tuple and isinstance(value, list):
            value = tuple(value)
        out[f.name] = value
    return out
