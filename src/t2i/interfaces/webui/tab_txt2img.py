"""The txt2img tab: prompts on top, generation settings on the left, results on the right."""
from __future__ import annotations

import gradio as gr

from t2i.interfaces.webui import (
    generate,
    gentab,
    params_ui,
    scripts_ui,
)
from t2i.interfaces.webui import results as results_ui
from t2i.pipelines.generation_params import Txt2ImgParams

ADVANCED = ("clip_skip", "tiling", "eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "deepcache_interval")


def build(ctx, quick) -> gentab.GenerationTab:
    cls = Txt2ImgParams
    top = gentab.build_top(ctx, quick, "txt2img", cls)
    settings, form, state, selected, row, drop = top.settings, top.form, top.state, top.selected, top.row, top.drop
    with gr.Row(equal_height=False, elem_classes=["t2i-main-row"]):
        with gr.Column(scale=1, min_width=320, elem_id="txt2img_settings"):
            params_ui.sampling(form, cls, settings)
            params_ui.hires(form, cls)
            params_ui.size_and_batch(form, cls, settings)
            params_ui.cfg(form, cls, settings)
            params_ui.seed(form, cls, state, selected)
            params_ui.advanced(form, cls, ADVANCED)
            scripts = scripts_ui.build(ctx, "txt2img", cls, img2img=False)
        with gr.Column(scale=1, min_width=320, elem_id="txt2img_results"):
            res = results_ui.build("txt2img", state, selected)
    tab = gentab.GenerationTab("txt2img", cls, form, row, res, scripts, drop)
    gentab.wire_paste(ctx, tab)
    gentab.wire_generate(ctx, tab, quick, "txt2img",
                         lambda data: [generate.request_values(cls, form.values(data))])
    return tab
