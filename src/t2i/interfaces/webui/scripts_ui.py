"""The Script dropdown and each script's controls (X/Y/Z plot, prompt matrix, loopback, poor man's
outpainting), built from their option dataclasses; at submit they become the API's `script_name`
and `script_args` (an object by t2i option name, which the API takes as well as the web UI's
positional lists)."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from t2i.interfaces.webui.builder import Form, coerce
from t2i.pipelines.generation_params import OutpaintParams
from t2i.pipelines.script_options import (
    LoopbackOptions,
    PromptMatrixOptions,
    XYZOptions,
)
from t2i.pipelines.xyz_axes import NOTHING, axis_options

NONE = "None"
XYZ, MATRIX, LOOPBACK, OUTPAINT = "X/Y/Z plot", "Prompt matrix", "Loopback", "Poor man's outpainting"
API_NAMES = {XYZ: "x/y/z plot", MATRIX: "prompt matrix", LOOPBACK: "loopback", OUTPAINT: "poor man's outpainting"}
OPTIONS = {XYZ: XYZOptions, MATRIX: PromptMatrixOptions, LOOPBACK: LoopbackOptions}
OUTPAINT_FIELDS = ("pixels", "mask_blur", "inpainting_fill", "directions")


@dataclass
class Scripts:
    choice: object
    forms: dict = field(default_factory=dict)  # script -> Form
    axis_types: dict = field(default_factory=dict)  # "x" -> Dropdown of axis types

    def inputs(self) -> set:
        items = {self.choice, *self.axis_types.values()}
        for form in self.forms.values():
            items |= set(form.components.values())
        return items

    def request(self, data: dict) -> dict:
        """`script_name` / `script_args` of the chosen script ({} for None)."""
        name = data.get(self.choice) or NONE
        if name == NONE:
            return {}
        form = self.forms[name]
        if name == OUTPAINT:
            values = coerce(OutpaintParams, form.values(data))
            args = {k: values[k] for k in OUTPAINT_FIELDS}
        else:
            args = coerce(OPTIONS[name], form.values(data))
        if name == XYZ:
            for axis, dropdown in self.axis_types.items():
                kind, values = data.get(dropdown) or NOTHING, (args.get(axis) or "").strip()
                args[axis] = f"{kind}: {values}" if kind != NOTHING and values else ""
        return {"script_name": API_NAMES[name], "script_args": args}


def build(ctx, prefix: str, params_cls, img2img: bool) -> Scripts:
    names = [NONE, *([LOOPBACK, OUTPAINT] if img2img else []), MATRIX, XYZ]
    choice = gr.Dropdown(names, value=NONE, label="Script", elem_id=f"{prefix}_script")
    ctx.hints[f"{prefix}_script"] = "run the generation through a script: a grid over parameters, a prompt matrix, ..."
    scripts = Scripts(choice)
    groups = {}
    for name in names[1:]:
        form = Form(f"{prefix}_script_{name.split()[0].lower().replace('/', '')}", ctx.hints)
        with gr.Group(visible=False, elem_id=f"{form.prefix}_group") as group:
            if name == XYZ:
                _xyz(form, scripts, params_cls)
            elif name == OUTPAINT:
                form.controls(OutpaintParams, OUTPAINT_FIELDS, directions={"kind": "textbox"})
            else:
                form.controls(OPTIONS[name])
        scripts.forms[name] = form
        groups[name] = group

    def show(selected):
        return [gr.Group(visible=name == selected) for name in groups]

    choice.change(show, inputs=choice, outputs=list(groups.values()), show_progress="hidden", queue=False)
    return scripts


def _xyz(form: Form, scripts: Scripts, params_cls) -> None:
    types = [NOTHING, *[option.label for option in axis_options(params_cls)]]
    for axis in ("x", "y", "z"):
        with gr.Row(elem_classes=["t2i-compact-row"]):
            scripts.axis_types[axis] = gr.Dropdown(types, value=NOTHING, label=f"{axis.upper()} type", scale=1,
                                                   min_width=150, elem_id=f"{form.prefix}_{axis}_type")
            form.control(XYZOptions, axis, label=f"{axis.upper()} values", scale=2, min_width=200,
                         placeholder="e.g. 10-30 (+10) or Euler a, DDIM")
    form.controls(XYZOptions, ("draw_legend", "include_sub_images", "include_sub_grids", "keep_random_seeds",
                               "margin_size"))
