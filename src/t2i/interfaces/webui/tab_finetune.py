"""The Train tab's "Fine-tune" section: LoRA, DreamBooth, textual inversion, hypernetwork or full
fine-tuning of a model on a folder of captioned pictures, as `t2i finetune` runs it (its controls
are the CLI's options, finetune_form.py), started as the Train tab's one run at a time in
OUTDIR/train/NAME (a child process: training.Trainer), with the same loss curve, sample grids,
Stop and Resume. It reads a folder on the server's disk, so it is offered on loopback servers only.
"""
from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from t2i.errors import T2IError
from t2i.interfaces.webui.finetune_form import (
    SECTIONS,
    FinetuneField,
    config_data,
    finetune_fields,
)

# Shown open, in this order; every other option goes under "Advanced" or its method's section.
MAIN = ("model", "data", "name", "caption", "steps", "batch_size", "lr", "resolution", "seed", "log_every",
        "sample_every", "sample_steps", "sample_prompts")
# A run folder's name when the form names none: the data folder's (as the CLI names the output).
DEFAULT_RUN = "finetune"


def _control(f: FinetuneField, hints: dict):
    hints[f.elem_id] = f.help
    common = {"label": f.label, "elem_id": f.elem_id}
    if f.kind is bool:
        return gr.Checkbox(value=bool(f.default), **common)
    if f.choices:
        return gr.Dropdown(choices=list(f.choices), value=f.default, **common)
    if f.kind in (int, float) and f.default is None:
        # None: the config chooses for the method and model size. A text box, since an emptied
        # number box sends 0, which means something else (sample_every 0: no grids)
        return gr.Textbox(value="", placeholder="auto", min_width=120, **common)
    if f.kind in (int, float):
        return gr.Number(value=f.default, minimum=f.minimum, maximum=f.maximum, precision=0 if f.kind is int else None,
                         min_width=120, **common)
    if f.kind is tuple:
        value = ", ".join(f"{v:g}" for v in f.default) if f.item is float else "\n".join(f.default)
        return gr.Textbox(value=value, lines=1 if f.item is float else 2,
                          placeholder="one per line" if f.item is str else "1, 2, 1", **common)
    return gr.Textbox(value="" if f.default is None else str(f.default), **common)


def build(ctx, trainer, refresh, outputs) -> None:
    """The section's controls, inside the caller's Tab; `refresh()` gives `outputs` (the run's state)."""
    from t2i.training.finetune.config import METHODS

    fields = finetune_fields()
    by_key = {f.key: f for f in fields}
    components: dict[str, object] = {}
    if not ctx.loopback:
        gr.Markdown("Fine-tuning reads a folder of pictures on the server's disk: it is offered when the server "
                    "listens on this machine only (127.0.0.1). Run `t2i finetune` on the server instead.")
        return
    method = gr.Dropdown(list(METHODS), value="lora", label="Method", elem_id="finetune_method")
    ctx.hints["finetune_method"] = ("lora (LoRA/LoCon file), dreambooth (model folder), ti (textual-inversion "
                                    "embedding), hypernetwork, full (model folder)")
    with gr.Row(elem_classes=["t2i-compact-row"]):
        for key in ("model", "data", "name"):
            components[key] = _control(by_key[key], ctx.hints)
    components["caption"] = _control(by_key["caption"], ctx.hints)
    with gr.Row(elem_classes=["t2i-compact-row"]):
        for key in ("steps", "batch_size", "lr", "resolution"):
            components[key] = _control(by_key[key], ctx.hints)
    with gr.Row(elem_classes=["t2i-compact-row"]):
        for key in ("seed", "log_every", "sample_every", "sample_steps"):
            components[key] = _control(by_key[key], ctx.hints)
    components["sample_prompts"] = _control(by_key["sample_prompts"], ctx.hints)
    groups = {}
    for section, title in SECTIONS.items():
        with gr.Accordion(f"{title} options", open=section == "lora", visible=section in ("lora", "prior"),
                          elem_id=f"finetune_{section}_options") as group:
            for f in fields:
                if f.section == section:
                    components[f.key] = _control(f, ctx.hints)
        groups[section] = group
    with gr.Accordion("Advanced", open=False, elem_id="finetune_advanced"):
        for f in fields:
            if not f.section and f.key not in MAIN:
                components[f.key] = _control(f, ctx.hints)
    with gr.Row():
        start = gr.Button("Fine-tune", variant="primary", elem_id="finetune_start")
        resume = gr.Button("Resume", elem_id="finetune_resume")
    ctx.hints.update({"finetune_start": "start fine-tuning with these settings (one run at a time)",
                      "finetune_resume": "continue the fine-tuning run of this name from its last checkpoint"})

    def sections_for(chosen: str):
        return [gr.Accordion(visible=s == chosen or (s == "prior" and chosen != "ti")) for s in groups]

    method.change(sections_for, inputs=method, outputs=list(groups.values()), show_progress="hidden")
    keys = list(components)

    def launch(chosen: str, *values, resume_run: bool = False):
        from t2i.training.finetune.config import config_from

        try:
            data = config_data(chosen, dict(zip(keys, values)), fields)
            if not data.get("data") and not resume_run:
                raise ValueError("give the folder of pictures to fine-tune on (Data)")
            if data.get("data"):
                data["data"] = str(Path(data["data"]).expanduser().resolve())
            config_from(data, "the fine-tuning form")  # the CLI's validation, before a process starts
            name = data.get("name") or (Path(data["data"]).name if data.get("data") else DEFAULT_RUN)
            trainer.start_finetune(name, data, resume=resume_run)
        except (T2IError, ValueError, TypeError, OSError) as err:
            # in the page, not as a Gradio error: a user's mistake is no server error (no traceback in its log)
            return (f'<div class="t2i-error" data-points="0">Not started: {html.escape(str(err))}</div>',
                    *[gr.skip()] * (len(outputs) - 1))
        return refresh()

    inputs = [method, *components.values()]
    start.click(lambda *v: launch(*v), inputs=inputs, outputs=outputs, show_progress="hidden")
    resume.click(lambda *v: launch(*v, resume_run=True), inputs=inputs, outputs=outputs, show_progress="hidden")
