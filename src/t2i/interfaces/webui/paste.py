"""An image's infotext -> a tab's controls: PNG Info's "Send to txt2img", the ↙ button (parameters
pasted into the prompt), an image dropped on the prompt, and "Send to img2img" from a result.

Only the controls whose infotext keys are in the text change (and the prompts, which every
infotext has): a control the image says nothing about keeps what the user set.
"""
from __future__ import annotations

import gradio as gr

from t2i.errors import ParamError
from t2i.interfaces.webui.builder import Form, shown
from t2i.metadata import parse_infotext
from t2i.pipelines.infotext import KEY_FIELDS, read_settings
from t2i.pipelines.params import field_specs

SEED_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")


def fields_in(text: str) -> set[str]:
    """The params fields an infotext sets (its keys through the schema's infotext table)."""
    present = {"prompt", "negative_prompt"}
    for key, value in parse_infotext(text).items():
        reader = KEY_FIELDS.get(key)
        if reader is None:
            continue
        try:
            present |= set(reader(value))
        except ValueError:
            continue
    return present


def updates(form: Form, cls, text: str, skip: tuple[str, ...] = ()) -> list:
    """One Gradio update per control of `form` (in its order): the infotext's value, or no change.
    Raises ParamError for text that is not a generation's infotext."""
    params = read_settings(text, cls).params
    present = fields_in(text) - set(skip)
    names = {f.name for f, _ in field_specs(cls)}
    out = []
    for name in form.components:
        if name in present and name in names:
            value = getattr(params, name)
            out.append(gr.update(value=shown(cls, name, value)) if value is not None else gr.skip())
        else:
            out.append(gr.skip())
    return out


def handler(form: Form, cls, skip: tuple[str, ...] = ()):
    """An event function text -> the form's updates, a user-facing error for bad text."""
    def apply(text):
        if not text or not text.strip():
            return [gr.skip()] * len(form.components)
        try:
            return updates(form, cls, text, skip)
        except (ParamError, ValueError) as err:
            raise gr.Error(f"these are not generation parameters: {err}") from None
    return apply
