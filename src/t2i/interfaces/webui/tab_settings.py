"""The Settings tab: the UI settings (settings.py), built from their dataclass like every control,
saved to the settings JSON by "Apply settings" and used from then on without a restart: jobs read
them when they start; the txt2img/img2img defaults apply when the page is (re)loaded."""
from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from t2i.diffusion.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from t2i.errors import ParamError
from t2i.interfaces.webui.builder import Form, coerce
from t2i.interfaces.webui.settings import UISettings

# A setting -> the generation field whose control it is the default of, on page load.
PAGE_DEFAULTS = {"default_sampler": "sampler", "default_scheduler": "scheduler", "default_steps": "steps",
                 "default_cfg_scale": "cfg_scale", "default_width": "width", "default_height": "height"}


def build(ctx, quick) -> None:
    s = ctx.settings.get()
    form = Form("settings", ctx.hints)
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=200)
        reload_button = gr.Button("Reload UI", elem_id="settings_reload", scale=0, min_width=140)
    status = gr.HTML(_status(ctx), elem_id="settings_result")
    with gr.Row(equal_height=False):
        with gr.Column(min_width=320):
            gr.Markdown("### Stable Diffusion")
            form.control(UISettings, "sd_model_checkpoint", choices=ctx.checkpoint_titles(),
                         value=s.sd_model_checkpoint if s.sd_model_checkpoint in ctx.checkpoint_titles()
                         else ctx.catalog.start_title())
            form.control(UISettings, "sd_vae", choices=ctx.vae_titles(), value=s.sd_vae)
            gr.Markdown("### Live previews and saving")
            form.controls(UISettings, group="output", **{n: {"value": getattr(s, n)} for n in
                                                       ("live_preview_every", "save_images", "save_grids")})
            gr.Markdown("### Paths for saving")
            form.controls(UISettings, group="paths", **{n: {"value": getattr(s, n)} for n in (
                "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_txt2img_grids", "outdir_img2img_grids",
                "outdir_extras_samples")})
            gr.Markdown(f"Folders inside the server's output folder `{html.escape(Path(ctx.config.outdir).name)}/` "
                        f"(set when the server starts: `t2i serve --outdir`); the server saves nowhere else.")
        with gr.Column(min_width=320):
            gr.Markdown("### Defaults of txt2img and img2img")
            form.control(UISettings, "default_sampler", choices=SAMPLER_NAMES, value=s.default_sampler)
            form.control(UISettings, "default_scheduler", choices=SCHEDULE_TYPES, value=s.default_scheduler)
            for name in ("default_steps", "default_cfg_scale", "default_width", "default_height"):
                limit = {"default_steps": {"maximum": ctx.limits.max_steps}}.get(name)
                if name in ("default_width", "default_height"):
                    limit = {"minimum": ctx.limits.min_size, "maximum": ctx.limits.max_size}
                form.limits[name] = limit or {}
                form.control(UISettings, name, value=getattr(s, name))

    def save(data: dict):
        try:
            ctx.settings.update(coerce(UISettings, form.values(data)))
        except (ParamError, ValueError, OSError) as err:
            return f'<div class="t2i-error">Settings not saved: {html.escape(str(err))}</div>', gr.skip(), gr.skip()
        new = ctx.settings.get()
        return (_status(ctx, saved=True), gr.Dropdown(value=new.sd_model_checkpoint),
                gr.Dropdown(value=new.sd_vae))

    apply.click(save, inputs=set(form.components.values()), outputs=[status, quick.checkpoint, quick.vae],
                show_progress="hidden")
    reload_button.click(None, js="() => { window.location.reload(); }")


def _status(ctx, saved: bool = False) -> str:
    problem = ctx.settings.problem
    if problem:
        return f'<div class="t2i-error">{html.escape(problem)}</div>'
    name = html.escape(ctx.settings.path.name)
    return f'<div class="t2i-info">{"Settings saved to " if saved else "Settings file: "}<code>{name}</code>' \
           f'{"; they apply to the next job, page defaults on the next page load." if saved else ""}</div>'


def page_defaults(ctx, forms: list) -> tuple[list, Callable[[], list]]:
    """(controls, fn) for the page's load event: the settings' defaults into txt2img and img2img."""
    targets = [(form, field) for form in forms for field in PAGE_DEFAULTS.values() if field in form.components]
    controls = [form.components[field] for form, field in targets]
    by_field = {field: setting for setting, field in PAGE_DEFAULTS.items()}

    def load():
        s = ctx.settings.get()
        return [getattr(s, by_field[field]) for _, field in targets]

    return controls, load
