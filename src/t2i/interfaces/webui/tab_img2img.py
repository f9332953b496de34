"""The img2img tab: the image modes (img2img, sketch, inpaint, inpaint sketch, inpaint upload,
batch), resize mode, denoising strength, the inpainting options, and the same generation settings
as txt2img. An inpaint mode sends a mask: the API runs inpainting; "Poor man's outpainting" in the
Script dropdown extends the image."""
from __future__ import annotations

import gradio as gr

from t2i.errors import T2IError
from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.webui import (
    gentab,
    img2img_inputs,
    params_ui,
    scripts_ui,
)
from t2i.interfaces.webui import results as results_ui
from t2i.interfaces.webui.context import b64_png, open_upload
from t2i.interfaces.webui.generate import request_values
from t2i.pipelines.generation_params import InpaintParams

ADVANCED = ("clip_skip", "tiling", "eta", "s_churn", "s_tmin", "s_tmax", "s_noise")


def _mode_setter(mode: str):
    def select():
        return mode, gr.Group(visible=mode in img2img_inputs.INPAINT_MODES)
    return select


def _interrogator(ctx):
    """The "Interrogate CLIP" button: the img2img image's caption (in the `shapes` grammar, by
    t2i's CLIP) becomes the prompt, as the web UI's button does."""
    def caption(path):
        if not path:
            raise gr.Error("Interrogate CLIP: put an image in the img2img box first")
        try:
            return ctx.interrogator.caption(open_upload(path, "image", ctx.limits))
        except (ApiError, T2IError) as err:
            raise gr.Error(str(err)) from None
    return caption


def build(ctx, quick) -> gentab.GenerationTab:
    cls = InpaintParams
    top = gentab.build_top(ctx, quick, "img2img", cls)
    settings, form, state, selected, row, drop = top.settings, top.form, top.state, top.selected, top.row, top.drop
    with gr.Row(equal_height=False, elem_classes=["t2i-main-row"]):
        with gr.Column(scale=1, min_width=320, elem_id="img2img_settings"):
            inputs = img2img_inputs.build(ctx)
            interrogate = gr.Button("Interrogate CLIP", size="sm", elem_id="img2img_interrogate")
            form.control(cls, "resize_mode", kind="radio")
            inpaint_group = params_ui.inpaint_options(form, cls)
            params_ui.sampling(form, cls, settings)
            params_ui.size_and_batch(form, cls, settings)
            params_ui.cfg(form, cls, settings)
            form.control(cls, "denoising_strength")
            params_ui.seed(form, cls, state, selected)
            params_ui.advanced(form, cls, ADVANCED)
            scripts = scripts_ui.build(ctx, "img2img", cls, img2img=True)
        with gr.Column(scale=1, min_width=320, elem_id="img2img_results"):
            res = results_ui.build("img2img", state, selected)
    for mode_tab, mode in inputs.mode_tabs:
        mode_tab.select(_mode_setter(mode), outputs=[inputs.mode, inpaint_group], show_progress="hidden", queue=False)
    interrogate.click(_interrogator(ctx), inputs=[inputs.components["image"]], outputs=[row.prompt],
                      show_progress="minimal")
    ctx.targets.update({"img2img_mode_tabs": inputs.tabs, "img2img_mode": inputs.mode,
                        "img2img_inpaint_group": inpaint_group,
                        "img2img_image": inputs.components["image"], "img2img_inpaint": inputs.components["inpaint"],
                        "img2img_sketch": inputs.components["sketch"]})
    tab = gentab.GenerationTab("img2img", cls, form, row, res, scripts, drop)
    gentab.wire_paste(ctx, tab)

    def make_requests(data: dict) -> list[dict]:
        values = request_values(cls, form.values(data))
        pairs, _mode = img2img_inputs.pairs(ctx, inputs, data)
        out = []
        for image, mask, _name in pairs:
            request = {**values, "init_images": [b64_png(image)]}
            if mask is not None:
                request["mask"] = b64_png(mask)
            out.append(request)
        return out

    gentab.wire_generate(ctx, tab, quick, "img2img", make_requests, extra_inputs=inputs.inputs())
    return tab
