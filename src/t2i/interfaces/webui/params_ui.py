"""The generation settings column, in the web UI's layout: sampler and schedule, steps, hires fix,
size with ⇅, batch count and size, CFG, seed with 🎲 and ♻️ and its extras, advanced options,
and the inpainting options. Every control comes from the params schema through `builder.Form`.
"""
from __future__ import annotations

import gradio as gr

from t2i.diffusion.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from t2i.interfaces.webui import results as results_ui
from t2i.interfaces.webui.builder import Form

RANDOM, REUSE, SWAP = "🎲", "♻️", "⇅"


def server_limits(limits) -> dict[str, dict]:
    """The server's bounds as control ranges (narrower than the schema's)."""
    size = {"minimum": limits.min_size, "maximum": limits.max_size}
    return {"steps": {"maximum": limits.max_steps}, "width": size, "height": size,
            "batch_size": {"maximum": limits.max_images}, "n_iter": {"maximum": limits.max_images},
            "hr_second_pass_steps": {"maximum": limits.max_steps},
            "hr_resize_x": {"maximum": limits.max_size}, "hr_resize_y": {"maximum": limits.max_size}}


def sampling(form: Form, cls, settings) -> None:
    with gr.Row(elem_classes=["t2i-compact-row"]):
        form.control(cls, "sampler", choices=SAMPLER_NAMES, value=settings.default_sampler, min_width=160)
        form.control(cls, "scheduler", choices=SCHEDULE_TYPES, value=settings.default_scheduler, min_width=160)
    form.control(cls, "steps", value=settings.default_steps)
    form.control(cls, "fast")  # the LCM-LoRA, 4 steps, CFG 1 (t2i.pipelines.fast)


def hires(form: Form, cls) -> None:
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{form.prefix}_hires_accordion"):
        form.control(cls, "enable_hr")
        with gr.Row(elem_classes=["t2i-compact-row"]):
            form.control(cls, "hr_upscaler", min_width=160)
            form.control(cls, "hr_second_pass_steps", min_width=160)
            form.control(cls, "denoising_strength", min_width=160)
        with gr.Row(elem_classes=["t2i-compact-row"]):
            form.control(cls, "hr_scale", min_width=160)
            form.control(cls, "hr_resize_x", min_width=160)
            form.control(cls, "hr_resize_y", min_width=160)


def size_and_batch(form: Form, cls, settings) -> None:
    with gr.Row(elem_classes=["t2i-compact-row"]):
        with gr.Column(scale=4, min_width=220):
            width = form.control(cls, "width", value=settings.default_width, label="Width", kind="slider")
            height = form.control(cls, "height", value=settings.default_height, label="Height", kind="slider")
        swap = gr.Button(SWAP, elem_id=f"{form.prefix}_swap", elem_classes=["t2i-tool"], scale=0, min_width=40)
        with gr.Column(scale=3, min_width=180):
            form.control(cls, "n_iter", kind="slider")
            form.control(cls, "batch_size", kind="slider")
    form.hints[f"{form.prefix}_swap"] = "swap width and height"
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], show_progress="hidden",
               queue=False)


def cfg(form: Form, cls, settings) -> None:
    form.control(cls, "cfg_scale", value=settings.default_cfg_scale)


def seed(form: Form, cls, state, selected) -> None:
    """Seed with 🎲 (-1: random) and ♻️ (the selected result's seed); 'Extra' shows the variation
    seed, its strength and 'resize seed from'."""
    p = form.prefix
    with gr.Row(elem_classes=["t2i-compact-row", "t2i-seed-row"]):
        seed_box = form.control(cls, "seed", kind="number", scale=4, min_width=160)
        random_button = gr.Button(RANDOM, elem_id=f"{p}_random_seed", elem_classes=["t2i-tool"], scale=0,
                                  min_width=40)
        reuse_button = gr.Button(REUSE, elem_id=f"{p}_reuse_seed", elem_classes=["t2i-tool"], scale=0, min_width=40)
        extra = gr.Checkbox(False, label="Extra", elem_id=f"{p}_seed_extra", scale=0, min_width=80)
    form.hints[f"{p}_random_seed"] = "set the seed to -1: a new random seed every time"
    form.hints[f"{p}_reuse_seed"] = "reuse the seed of the selected image (or of the first image of the last run)"
    form.hints[f"{p}_seed_extra"] = "variation seed and resizing the seed's noise"
    with gr.Group(visible=False, elem_id=f"{p}_seed_extras") as extras:
        with gr.Row(elem_classes=["t2i-compact-row"]):
            subseed = form.control(cls, "subseed", kind="number", min_width=160)
            sub_random = gr.Button(RANDOM, elem_id=f"{p}_random_subseed", elem_classes=["t2i-tool"], scale=0,
                                   min_width=40)
            form.control(cls, "subseed_strength", min_width=160)
        with gr.Row(elem_classes=["t2i-compact-row"]):
            form.control(cls, "seed_resize_from_w", kind="slider", min_width=160)
            form.control(cls, "seed_resize_from_h", kind="slider", min_width=160)
    random_button.click(lambda: -1, outputs=seed_box, show_progress="hidden", queue=False)
    sub_random.click(lambda: -1, outputs=subseed, show_progress="hidden", queue=False)
    extra.change(lambda on: gr.Group(visible=on), inputs=extra, outputs=extras, show_progress="hidden", queue=False)

    def reuse(state, index):
        found = results_ui.selected_seed(state, index)
        return found if found is not None else gr.skip()

    reuse_button.click(reuse, inputs=[state, selected], outputs=seed_box, show_progress="hidden")


def advanced(form: Form, cls, names: tuple[str, ...]) -> None:
    with gr.Accordion("Advanced", open=False, elem_id=f"{form.prefix}_advanced"):
        with gr.Row(elem_classes=["t2i-compact-row"]):
            for name in names[:2]:
                form.control(cls, name, min_width=160)
        for name in names[2:]:
            form.control(cls, name)


def inpaint_options(form: Form, cls):
    """Mask blur, mask mode, masked content, inpaint area, padding; shown for the inpaint modes."""
    with gr.Group(visible=False, elem_id=f"{form.prefix}_inpaint_controls") as group:
        form.control(cls, "mask_blur")
        form.control(cls, "inpainting_mask_invert", kind="radio")
        form.control(cls, "inpainting_fill", kind="radio")
        with gr.Row(elem_classes=["t2i-compact-row"]):
            form.control(cls, "inpaint_full_res", kind="radio", min_width=200)
            form.control(cls, "inpaint_full_res_padding", min_width=200)
    return group
