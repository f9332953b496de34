"""The Extras tab: upscale one image or a batch, with a classic resize (Lanczos, Nearest, Bicubic)
or a t2i super-resolution model from the server's upscaler folders; queued like every job."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from starlette.concurrency import run_in_threadpool

from t2i.diffusion.samplers import SAMPLER_NAMES
from t2i.interfaces.api.catalog import CLASSIC_UPSCALERS
from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.webui import generate
from t2i.interfaces.webui import results as results_ui
from t2i.interfaces.webui.builder import Form
from t2i.interfaces.webui.context import b64_png, open_upload
from t2i.pipelines.upscale import UpscaleParams

MODEL_FIELDS = ("steps", "sampler", "seed", "noise_level", "eta")


@dataclass
class ExtrasTab:
    image: object  # the single image input ("Send to extras" fills it)
    tabs: object
    results: results_ui.Results


@dataclass
class _Row:  # what generate.stream toggles while a job runs
    generate: object
    interrupt: object
    skip: object


def upscaler_names(ctx) -> list[str]:
    return [*CLASSIC_UPSCALERS, *[item.name for item in ctx.catalog.upscalers()]]


def build(ctx) -> ExtrasTab:
    form = Form("extras", ctx.hints)
    state, selected = results_ui.new_state()
    mode = gr.State("single")
    with gr.Row(equal_height=False, elem_classes=["t2i-main-row"]):
        with gr.Column(scale=1, min_width=320):
            with gr.Tabs(elem_id="extras_mode_tabs") as tabs:
                with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Source", height=360,
                                     elem_id="extras_image")
                with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(file_count="multiple", file_types=["image"], label="Batch Process",
                                    elem_id="extras_batch_files")
            single_tab.select(lambda: "single", outputs=mode, queue=False)
            batch_tab.select(lambda: "batch", outputs=mode, queue=False)
            with gr.Row(elem_classes=["t2i-compact-row"]):
                upscaler = form.control(UpscaleParams, "upscaler", choices=upscaler_names(ctx), value="Lanczos",
                                        label="Upscaler 1", min_width=200)
                form.control(UpscaleParams, "scale", label="Resize", kind="slider", min_width=200)
            with gr.Accordion("Super-resolution model options", open=False):
                form.controls(UpscaleParams, MODEL_FIELDS, sampler={"choices": list(SAMPLER_NAMES)})
            with gr.Row():
                run_button = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                interrupt = gr.Button("Interrupt", variant="stop", visible=False, elem_id="extras_interrupt")
                skip = gr.Button("Skip", visible=False, elem_id="extras_skip")
        with gr.Column(scale=1, min_width=320):
            res = results_ui.build("extras", state, selected)
    ctx.targets["extras_image"] = image
    row = _Row(run_button, interrupt, skip)
    inputs = {*form.components.values(), image, files, mode}
    outputs = [run_button, interrupt, skip, res.progress, res.preview, res.gallery, res.info, res.state, res.selected]

    def make_request(data: dict) -> tuple[str, dict]:
        values = generate.request_values(UpscaleParams, form.values(data, MODEL_FIELDS))
        request = {**values, "upscaler_1": data[upscaler], "upscaling_resize": data[form.components["scale"]]}
        if data[mode] == "batch":
            paths = [Path(p) for p in (data[files] or [])]
            if not paths:
                raise ApiError(422, "upload images for the batch")
            items = [{"data": b64_png(open_upload(str(p), p.name, ctx.limits)), "name": p.stem} for p in paths]
            return "extra-batch-images", {**request, "imageList": items}
        picture = open_upload(data[image], "image", ctx.limits)
        if picture is None:
            raise ApiError(422, "upload an image to upscale")
        return "extra-single-image", {**request, "image": b64_png(picture)}

    async def run(data: dict, request: gr.Request):
        try:
            kind, req = await run_in_threadpool(make_request, data)
        except (ApiError, ValueError) as err:
            yield {res.info: results_ui.error_html(generate.user_error(err)), res.progress: generate.done_mark()}
            return
        async for out in generate.stream(ctx, request.session_hash, kind, [req], res, row):
            yield out

    run_button.click(run, inputs=inputs, outputs=outputs, show_progress="hidden", concurrency_limit=None)
    generate.wire_controls(ctx, row)
    return ExtrasTab(image, tabs, res)
