"""From the controls to a queued job and back: the API request a tab's controls make, and the
async loop (a Gradio generator) that runs it through the queue and streams progress, previews
and results into the results column; Generate forever repeats it until cancelled."""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import gradio as gr
from starlette.concurrency import run_in_threadpool

from t2i.errors import T2IError
from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.webui import output_dirs
from t2i.interfaces.webui import results as results_ui
from t2i.interfaces.webui.bridge import Progress
from t2i.interfaces.webui.builder import coerce
from t2i.pipelines.params import api_name, field_specs

log = logging.getLogger("t2i.webui")


def request_values(cls, values: dict) -> dict:
    """Params field values -> the web UI API's JSON keys (the schema's `api` names)."""
    values = coerce(cls, values)
    out = {}
    for f, _ in field_specs(cls):
        name = api_name(f)
        if name is None or f.name not in values:
            continue
        value = values[f.name]
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def job_options(ctx, checkpoint: str | None, vae: str | None) -> dict:
    """What every UI job carries besides its parameters: the quicksettings' checkpoint and VAE (for
    this job only: another user's choice never changes yours). The saving flags are `stream`'s."""
    return {"override_settings": {"sd_model_checkpoint": checkpoint or ctx.catalog.start_title(),
                                  "sd_vae": vae or "Automatic"}}


def saving(ctx, kind: str) -> tuple[dict, dict]:
    """(the requests' saving flags, the folders the UI saves into itself) from one reading of the
    settings, so a settings change while a job runs never saves an image twice or not at all."""
    group = "extras" if kind.startswith("extra-") else kind  # both extras routes save alike
    if group not in ("txt2img", "img2img", "extras"):
        return {}, {"images": None, "grids": None}
    s, root = ctx.settings.get(), Path(ctx.config.outdir)
    return output_dirs.job_flags(s, root, group), output_dirs.ui_saves(s, root, group)


def user_error(err: Exception) -> str:
    """The message of an error a user can fix (the API's 422 detail, a t2i error)."""
    if isinstance(err, ApiError):
        return err.detail
    return str(err)


async def checked(ctx, kind: str, requests: list[dict]) -> str | None:
    """None when every request passes the API's checks, else the first error's message."""
    for request in requests:
        try:
            await run_in_threadpool(ctx.bridge.check, kind, request)
        except (ApiError, T2IError, ValueError) as err:
            return user_error(err)
    return None


def done_mark() -> str:
    """An invisible mark that a generation is over (scripts and tests wait for a new one)."""
    return f'<div class="t2i-done" data-run="{uuid.uuid4().hex[:12]}"></div>'


def running_buttons(row, running: bool) -> dict:
    return {row.generate: gr.Button(visible=not running), row.interrupt: gr.Button(visible=running),
            row.skip: gr.Button(visible=running)}


async def stream(ctx, owner: str, kind: str, requests: list[dict], res: results_ui.Results, row):
    """Run `requests` one after the other (several: batch img2img) through the queue, and again
    while Generate forever is on; yields Gradio updates."""
    flags, folders = saving(ctx, kind)
    requests = [{**r, **flags} for r in requests]
    error = await checked(ctx, kind, requests)
    if error is not None:
        yield {res.info: results_ui.error_html(error), res.progress: done_mark()}
        return
    ctx.bridge.begin(owner)
    yield {**running_buttons(row, True), res.progress: results_ui.progress_html(None), res.info: "",
           res.preview: gr.Image(value=None, visible=ctx.settings.get().live_preview_every > 0)}
    try:
        async for out in _rounds(ctx, owner, kind, requests, res, folders):
            yield out
    except Exception as err:  # the page must come back to its idle state whatever happened
        log.exception("web UI generation failed")
        yield {res.info: results_ui.error_html(f"the generation failed inside the server ({type(err).__name__}); "
                                               f"the server log has the details")}
    yield {**running_buttons(row, False), res.progress: done_mark(), res.preview: gr.Image(visible=False)}


async def _rounds(ctx, owner: str, kind: str, requests: list[dict], res: results_ui.Results, folders: dict):
    while True:
        state = {"images": [], "infotexts": [], "seeds": [], "grids": 0}
        errors = []
        for index, request in enumerate(requests):
            if ctx.bridge.stopped(owner):
                break
            note = f" - image {index + 1}/{len(requests)}" if len(requests) > 1 else ""
            async for update in ctx.bridge.run(owner, kind, request,
                                               preview_every=ctx.settings.get().live_preview_every):
                if isinstance(update, Progress):
                    out = {res.progress: results_ui.progress_html(update, note)}
                    if update.preview is not None:
                        out[res.preview] = ctx.write_png(update.preview, "preview")
                    yield out
                elif update.ok:
                    if any(folders.values()):
                        names = [item.get("name", "") for item in request.get("imageList", ())]
                        await run_in_threadpool(output_dirs.save_answer, folders, update, names)
                    state = results_ui.collect(ctx, update, state, prefix=f"{index:03d}-")
                    yield {res.gallery: state["images"], res.state: state, res.selected: 0,
                           res.info: results_ui.info_html(results_ui.selected_infotext(state, 0))}
                else:
                    errors.append(update.error)
        if errors:
            yield {res.info: results_ui.error_html("; ".join(dict.fromkeys(errors)))}
        elif not state["images"]:
            yield {res.gallery: [], res.state: state, res.info: results_ui.error_html(
                "no image: the job was interrupted or skipped before its first image was done")}
        if not ctx.bridge.forever(owner) or ctx.bridge.stopped(owner):
            break


def wire_controls(ctx, row) -> None:
    """Interrupt, Skip and Generate forever act on this browser session's own job only."""
    def interrupt(request: gr.Request):
        ctx.bridge.interrupt(request.session_hash)

    def skip(request: gr.Request):
        ctx.bridge.skip(request.session_hash)

    def forever(on: bool):
        def toggle(request: gr.Request):
            ctx.bridge.set_forever(request.session_hash, on)
            gr.Info("Generate forever: on (right-click Generate to cancel)" if on else "Generate forever: off")
        return toggle

    row.interrupt.click(interrupt, show_progress="hidden", concurrency_limit=None)
    row.skip.click(skip, show_progress="hidden", concurrency_limit=None)
    if hasattr(row, "forever_on"):
        # Generate forever switches the mode on; webui.js then clicks Generate unless a generation
        # runs already, which then repeats when it ends.
        row.forever_on.click(forever(True), show_progress="hidden", concurrency_limit=None)
        row.forever_off.click(forever(False), show_progress="hidden", concurrency_limit=None)
