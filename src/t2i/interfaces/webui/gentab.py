"""What txt2img and img2img share beyond their controls: the tab's parts, reading parameters into
the controls (↙, an image dropped on the prompt), and the Generate event."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from starlette.concurrency import run_in_threadpool

from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.webui import (
    generate,
    networks,
    params_ui,
    paste,
    prompts_ui,
    scripts_ui,
)
from t2i.interfaces.webui import results as results_ui
from t2i.interfaces.webui.builder import Form
from t2i.interfaces.webui.context import open_upload


@dataclass
class GenerationTab:
    name: str
    cls: type
    form: Form
    row: prompts_ui.PromptRow
    results: results_ui.Results
    scripts: scripts_ui.Scripts
    drop: object  # hidden image input an image dropped on the prompt goes to (webui.js)


@dataclass
class TabTop:
    """What both generation tabs build first, in this order: the form, the results state, the
    prompt row, the hidden drop target for an image dropped on the prompt, the extra-networks panel."""
    settings: object
    form: Form
    state: object
    selected: object
    row: prompts_ui.PromptRow
    drop: object


def build_top(ctx, quick, name: str, cls) -> TabTop:
    form = Form(name, ctx.hints, params_ui.server_limits(ctx.limits))
    state, selected = results_ui.new_state()
    row = prompts_ui.build(ctx, form, cls, quick.checkpoint)
    drop = drop_target(name)
    networks.build(ctx, name, row.networks_toggle)
    return TabTop(ctx.settings.get(), form, state, selected, row, drop)


def drop_target(name: str):
    return gr.Image(type="filepath", elem_id=f"{name}_prompt_image", sources=["upload"], elem_classes=["t2i-offscreen"],
                    show_label=False, container=False)


def wire_paste(ctx, tab: GenerationTab) -> None:
    """↙ reads an infotext pasted into the prompt; an image dropped on the prompt gives its own."""
    outputs = list(tab.form.components.values())
    apply = paste.handler(tab.form, tab.cls)

    def from_prompt(text):
        if text and "Steps:" in text:
            return apply(text)
        raise gr.Error("paste an image's generation parameters (its infotext) into the prompt first")

    tab.row.read_params.click(from_prompt, inputs=tab.row.prompt, outputs=outputs, show_progress="hidden")

    def from_image(path):
        from t2i.metadata import read_infotext

        if not path:
            return [gr.skip()] * len(outputs)
        try:
            text = read_infotext(open_upload(path, "image", ctx.limits))
        except ApiError as err:
            raise gr.Error(err.detail) from None
        if not text:
            raise gr.Error("the image holds no generation parameters")
        return apply(text)

    tab.drop.upload(from_image, inputs=tab.drop, outputs=outputs, show_progress="hidden")


def wire_generate(ctx, tab: GenerationTab, quick, kind: str, make_requests, extra_inputs=()) -> None:
    """Generate: `make_requests(data) -> [request]` (the params part; options added here)."""
    inputs = {*tab.form.components.values(), *tab.scripts.inputs(), quick.checkpoint, quick.vae, *extra_inputs}
    outputs = [tab.row.generate, tab.row.interrupt, tab.row.skip, tab.results.progress, tab.results.preview,
               tab.results.gallery, tab.results.info, tab.results.state, tab.results.selected]

    async def run(data: dict, request: gr.Request):
        try:
            options = generate.job_options(ctx, data[quick.checkpoint], data[quick.vae])
            made = await run_in_threadpool(make_requests, data)  # decodes and encodes images: not on the loop
            requests = [{**r, **tab.scripts.request(data), **options} for r in made]
        except (ApiError, ValueError, TypeError) as err:
            yield {tab.results.info: results_ui.error_html(generate.user_error(err)),
                   tab.results.progress: generate.done_mark()}
            return
        async for out in generate.stream(ctx, request.session_hash, kind, requests, tab.results, tab.row):
            yield out

    tab.row.generate.click(run, inputs=inputs, outputs=outputs, show_progress="hidden", concurrency_limit=None)
    generate.wire_controls(ctx, tab.row)
