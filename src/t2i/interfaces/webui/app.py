"""The web UI: a Gradio app with the most used Stable Diffusion web UI's tabs, mounted at `/` in the
API's FastAPI app (`t2i serve`), sending its jobs to the same queue as the API.

    app = create_app(config)                    # interfaces/api/app.py
    mount_webui(app, config)                    # then uvicorn.run(app): the UI at /, the API beside it

Safety is the API's: its Guard middleware (Host check, --api-auth credentials, body limit) runs
before every Gradio route too. Gradio serves files from its own cache folder and t2i's image output
folders only (never the queue database or the settings file), refuses to proxy URLs through its
file route (webui/guard.py), and bounds uploads by the API's upload limit.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

log = logging.getLogger("t2i.webui")
CACHE_CLEAN = (3600, 3600)  # Gradio deletes its cached files older than an hour, every hour
OUTPUT_FOLDERS = ("txt2img", "img2img", "extras", "train", "merged")


@dataclass
class QuickSettings:
    checkpoint: object
    vae: object


def _asset(name: str) -> str:
    return (resources.files("t2i") / "assets" / "webui" / name).read_text(encoding="utf-8")


def _quicksettings(ctx):
    import gradio as gr

    settings = ctx.settings.get()
    titles = ctx.checkpoint_titles()
    start = settings.sd_model_checkpoint if settings.sd_model_checkpoint in titles else ctx.catalog.start_title()
    with gr.Row(elem_id="quicksettings", elem_classes=["t2i-compact-row"]):
        checkpoint = gr.Dropdown(titles, value=start, label="Stable Diffusion checkpoint", elem_id="t2i_checkpoint",
                                 scale=3, min_width=220)
        refresh = gr.Button("🔄", elem_id="t2i_refresh_checkpoints", elem_classes=["t2i-tool"], scale=0, min_width=40)
        vaes = ctx.vae_titles()
        vae = gr.Dropdown(vaes, value=settings.sd_vae if settings.sd_vae in vaes else "Automatic", label="SD VAE",
                          elem_id="t2i_vae", scale=2, min_width=180)
        # Set by webui.js when a checkpoint card is clicked (extra networks); off screen (a Gradio
        # component made invisible does not send its events).
        pick = gr.Textbox(elem_id="t2i_checkpoint_pick", elem_classes=["t2i-offscreen"], container=False)
    ctx.hints.update({"t2i_checkpoint": "the checkpoint your jobs use (only yours: each job names its model)",
                      "t2i_vae": "the VAE your jobs use; Automatic: the checkpoint's own",
                      "t2i_refresh_checkpoints": "scan the model folders again"})

    def rescan(current, current_vae):
        ctx.catalog.refresh_checkpoints()
        titles, vaes = ctx.checkpoint_titles(), ctx.vae_titles()
        return (gr.Dropdown(choices=titles, value=current if current in titles else ctx.catalog.start_title()),
                gr.Dropdown(choices=vaes, value=current_vae if current_vae in vaes else "Automatic"))

    refresh.click(rescan, inputs=[checkpoint, vae], outputs=[checkpoint, vae], show_progress="hidden")
    pick.change(lambda title: title if title in ctx.checkpoint_titles() else gr.skip(), inputs=pick,
               outputs=checkpoint, show_progress="hidden")
    return QuickSettings(checkpoint, vae)


def build_blocks(ctx):
    import gradio as gr

    from t2i.interfaces.webui import (
        sendto,
        tab_extras,
        tab_img2img,
        tab_merge,
        tab_pnginfo,
        tab_settings,
        tab_train,
        tab_txt2img,
    )

    with gr.Blocks(title="t2i web UI", analytics_enabled=False, delete_cache=CACHE_CLEAN) as blocks:
        quick = _quicksettings(ctx)
        with gr.Tabs(elem_id="tabs") as tabs:
            ctx.targets["tabs"] = tabs
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = tab_txt2img.build(ctx, quick)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = tab_img2img.build(ctx, quick)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = tab_extras.build(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = tab_pnginfo.build(ctx)
            with gr.Tab("Checkpoint Merger", id="merger", elem_id="tab_merger"):
                tab_merge.build(ctx, quick)
            with gr.Tab("Train", id="train", elem_id="tab_train") as train_tab:
                tab_train.build(ctx, train_tab)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                tab_settings.build(ctx, quick)
        sendto.wire(ctx, tabs, txt2img, img2img, extras, pnginfo)
        controls, defaults = tab_settings.page_defaults(ctx, [txt2img.form, img2img.form])

        def on_load():
            s = ctx.settings.get()
            titles = ctx.checkpoint_titles()
            checkpoint = s.sd_model_checkpoint if s.sd_model_checkpoint in titles else ctx.catalog.start_title()
            return [*defaults(), checkpoint, s.sd_vae if s.sd_vae in ctx.vae_titles() else "Automatic"]

        blocks.load(on_load, outputs=[*controls, quick.checkpoint, quick.vae], show_progress="hidden")
        blocks.load(None, js="() => { if (window.t2iStart) window.t2iStart(); }")
    return blocks


def head_html(hints: dict[str, str]) -> str:
    import json

    data = json.dumps(hints).replace("</", "<\\/")  # never closes the script element
    return f"<script>window.t2iHints = {data};</script><script>{_asset('webui.js')}</script>"


def mount_webui(app, config, *, settings_file: Path | None = None, train_configs: Path | None = None, path="/"):
    """Mount the web UI on `app` (made by interfaces/api/app.create_app, whose queue service it
    uses). `settings_file`: the UI settings JSON (default OUTDIR/webui-settings.json)."""
    import gradio as gr

    from t2i.interfaces.api.routes_interrogate import interrogator_of
    from t2i.interfaces.webui.bridge import JobBridge
    from t2i.interfaces.webui.context import UIContext, bundled_resolution
    from t2i.interfaces.webui.guard import FileRouteGuard
    from t2i.interfaces.webui.settings import SettingsStore, UISettings

    service = app.state.service
    outdir = Path(config.outdir).resolve()
    size = bundled_resolution() if not config.model else 512
    defaults = UISettings(sd_model_checkpoint=service.catalog.start_title(), default_width=size, default_height=size)
    store = SettingsStore(settings_file or outdir / "webui-settings.json", defaults, output_root=outdir)
    if store.problem:
        log.warning("web UI settings: %s", store.problem)
    ctx = UIContext(service, config, store, JobBridge(service), cache_dir=Path(gr.utils.get_upload_folder()),
                    train_configs=train_configs, interrogator=interrogator_of(app))
    blocks = build_blocks(ctx)
    ctx.cache_dir = Path(blocks.GRADIO_CACHE)
    for name in OUTPUT_FOLDERS:
        (outdir / name).mkdir(parents=True, exist_ok=True)
    blocked = [str(Path(config.queue_path).resolve()), str(store.path.resolve())]
    app.add_middleware(FileRouteGuard)
    gr.mount_gradio_app(
        app, blocks, path=path, server_name=config.host, server_port=config.port, footer_links=[], run_history=False,
        allowed_paths=[str(outdir / name) for name in OUTPUT_FOLDERS], blocked_paths=blocked,
        max_file_size=config.limits.max_upload_bytes, show_error=False, ssr_mode=False, mcp_server=False,
        theme=gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                                font_mono=["ui-monospace", "monospace"]),
        css=_asset("webui.css"), head=head_html(ctx.hints))
    # The token counter's tokenizer takes seconds to build: build it now, not at the first keystroke.
    threading.Thread(target=_warm, args=(ctx,), name="t2i-webui-warm", daemon=True).start()
    app.state.webui = ctx
    return ctx


def _warm(ctx) -> None:
    from t2i.interfaces.webui.tokens import counter_text

    try:
        counter_text("warm up", ctx.chunk_length(ctx.catalog.start_title()))
    except Exception as err:  # the counter then builds it on first use
        log.warning("token counter warm-up failed: %s", err)
