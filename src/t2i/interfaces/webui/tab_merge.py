"""The Checkpoint Merger tab: weighted sum or add difference of up to three checkpoint files of the
server's model folders (t2i.checkpoints.merge), written into the first model folder and listed
at once. A merge reads and writes tensor by tensor, in a thread beside the queue."""
from __future__ import annotations

import html
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from starlette.concurrency import run_in_threadpool

from t2i.errors import T2IError
from t2i.interfaces.webui.builder import Form, coerce
from t2i.pipelines.params import param

METHODS = ("Weighted sum", "Add difference")
_METHOD_IDS = {"Weighted sum": "weighted-sum", "Add difference": "add-difference"}
NONE = ""


@dataclass
class MergeOptions:
    primary: str = param("", "model A: the base of the merge", label="Primary model (A)", group="model")
    secondary: str = param("", "model B", label="Secondary model (B)", group="model")
    tertiary: str = param("", "model C: only for add difference (A + M x (B - C))", label="Tertiary model (C)",
                          group="model")
    name: str = param("", "file name of the result (.safetensors is added); default: the inputs' names and M",
                      label="Custom Name (Optional)", group="output")
    alpha: float = param(0.3, "Multiplier M: weighted sum (1 - M) x A + M x B; add difference A + M x (B - C)",
                         label="Multiplier (M) - set to 0 to get model A", minimum=0.0, maximum=1.0, step=0.05)
    method: str = param("Weighted sum", "how the models are combined", label="Interpolation Method",
                        choices=METHODS)
    half: bool = param(False, "store the result's floating-point tensors as float16 (half the size)",
                       label="Save as float16", group="output")


def _files(ctx) -> dict[str, str]:
    """Checkpoint title -> path, for the single-file checkpoints (merging reads files)."""
    return {item.title: item.path for item in ctx.catalog.checkpoints()
            if item.path and Path(item.path).is_file()}


def build(ctx, quick) -> None:
    form = Form("merger", ctx.hints)
    titles = [NONE, *_files(ctx)]
    folder = Path(ctx.config.ckpt_dirs[0]) if ctx.config.ckpt_dirs else None
    lock = threading.Lock()
    with gr.Row(equal_height=False):
        with gr.Column(min_width=320):
            if folder is None:
                gr.Markdown("Merged models are written into the first model folder: start the server with "
                            "`--ckpt-dir FOLDER` to merge the checkpoints in it.")
            with gr.Row(elem_classes=["t2i-compact-row"]):
                for name in ("primary", "secondary", "tertiary"):
                    form.control(MergeOptions, name, choices=titles, value=NONE, min_width=180)
                refresh = gr.Button("🔄", elem_classes=["t2i-tool"], elem_id="merger_refresh", scale=0, min_width=40)
            form.controls(MergeOptions, ("name", "alpha"))
            form.control(MergeOptions, "method", kind="radio")
            form.control(MergeOptions, "half")
            merge = gr.Button("Merge", variant="primary", elem_id="merger_merge", interactive=folder is not None)
        with gr.Column(min_width=320):
            result = gr.HTML("", elem_id="merger_result")
    ctx.hints["merger_refresh"] = "scan the model folders again"

    def rescan():
        ctx.catalog.refresh_checkpoints()
        choices = [NONE, *_files(ctx)]
        return [gr.Dropdown(choices=choices) for _ in range(3)]

    refresh.click(rescan, outputs=[form.components[n] for n in ("primary", "secondary", "tertiary")],
                  show_progress="hidden")

    def run_merge(data: dict):
        from t2i.checkpoints.merge import merge_models
        from t2i.outputs import safe_filename_part

        o = MergeOptions(**coerce(MergeOptions, form.values(data)))
        files = _files(ctx)
        chosen = [files.get(t) for t in (o.primary, o.secondary, o.tertiary) if t]
        if not o.primary or not o.secondary or None in chosen:
            raise ValueError("choose a primary and a secondary model (checkpoint files of the model folders)")
        third = files.get(o.tertiary) if o.method == "Add difference" else None
        if o.method == "Add difference" and third is None:
            raise ValueError("add difference needs a tertiary model (C)")
        stem = safe_filename_part(o.name, 80) if o.name.strip() else safe_filename_part(
            f"{Path(o.primary).stem}_{Path(o.secondary).stem}_{o.alpha:g}", 80)
        with lock:  # one merge at a time: each reads and writes whole models
            done = merge_models(files[o.primary], files[o.secondary], third, method=_METHOD_IDS[o.method],
                                alpha=o.alpha, output=folder / f"{stem}.safetensors", half=o.half)
        ctx.catalog.refresh_checkpoints()
        return done

    async def on_merge(data: dict):
        yield '<div class="t2i-info">Merging...</div>', *[gr.skip()] * 2
        try:
            done = await run_in_threadpool(run_merge, data)
        except (T2IError, ValueError, OSError) as err:
            yield f'<div class="t2i-error">{html.escape(str(err))}</div>', gr.skip(), gr.skip()
            return
        titles = ctx.checkpoint_titles()
        saved = (f'<div class="t2i-info">Saved <code>{html.escape(done.path.name)}</code> ({done.tensors} tensors, '
                 f'hash {html.escape(done.hash)}); it is in the checkpoint list now.</div>')
        yield saved, gr.Dropdown(choices=titles), gr.skip()

    merge.click(on_merge, inputs=set(form.components.values()), outputs=[result, quick.checkpoint, quick.vae],
                show_progress="hidden", concurrency_limit=1)
