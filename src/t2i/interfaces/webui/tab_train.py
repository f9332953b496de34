"""The Train tab: start a training run of any family from a config (the `shapes` dataset the
configs name, or a folder of captioned images on a loopback server), or fine-tune a model
(tab_finetune.py), watch its loss curve and sample grids as they are written, stop it and resume
it. One run at a time; runs live in OUTDIR/train/NAME."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from starlette.concurrency import run_in_threadpool

from t2i.errors import T2IError
from t2i.interfaces.webui import tab_finetune
from t2i.interfaces.webui.builder import Form, coerce
from t2i.interfaces.webui.training import Trainer
from t2i.pipelines.params import param

REFRESH_S = 2.0


@dataclass
class TrainOptions:
    config: str = param("", "the training config (YAML): its `family:` picks the model family (ldm, gan, vae, "
                            "ddpm, vqgan, ar, sr, ...)", label="Training config", group="model")
    name: str = param("run", "the run's folder under the output folder's train/", label="Run name", group="output")
    steps: int = param(0, "optimizer steps of every stage; 0 = the config's", label="Steps", minimum=0,
                       maximum=10_000_000, group="family")
    batch_size: int = param(0, "images per step; 0 = the config's", label="Batch size", minimum=0, maximum=4096,
                            group="family")
    lr: float = param(0.0, "learning rate; 0 = the config's", label="Learning rate", minimum=0.0, maximum=1.0,
                      group="family")
    log_every: int = param(10, "steps between loss points of the curve (the log's lines)", label="Log every N steps",
                           minimum=1, maximum=100_000, group="output")
    sample_every: int = param(0, "steps between sample grids; 0 = the config's (some configs write none)",
                              label="Sample grid every N steps", minimum=0, maximum=1_000_000, group="output")
    budget_minutes: float = param(0.0, "stop every stage after this many CPU-minutes of the training process "
                                       "(it still writes a model that samples); 0 = no budget",
                                  label="Budget, CPU-minutes", minimum=0.0, maximum=100_000.0, step=0.5,
                                  group="output")
    data_folder: str = param("", "a folder of images with .txt captions on the server instead of the config's "
                                 "data (loopback servers only)", label="Data folder (optional)", group="family")


def config_files(folder: Path | None) -> list[str]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.name for p in folder.glob("*.yaml"))


def build(ctx, tab) -> None:
    folder = ctx.train_configs or (Path("configs") if Path("configs").is_dir() else None)
    names = config_files(folder)
    trainer = Trainer(Path(ctx.config.outdir) / "train", ctx.config.threads)
    form = Form("train", ctx.hints)
    # The run's state, shared by both kinds of run (one at a time): made first, placed below.
    status = gr.HTML("", elem_id="train_status", render=False)
    log_tail = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="train_log", render=False)
    plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Training loss", height=300,
                       elem_id="train_loss_plot", render=False)
    samples = gr.Gallery(label="Sample grids", columns=3, height=300, elem_id="train_samples", interactive=False,
                         render=False)
    timer = gr.Timer(REFRESH_S, active=False)

    def refresh():
        import pandas as pd

        # Whether to keep polling is read before the state: a run that ends between the two reads
        # then gets one more tick, which shows it finished. The other order could stop the timer
        # on a page that still says "running" (seen once in CI: the run had finished in 8 s).
        still = trainer.running()
        state, losses, grids, tail = trainer.status()
        frame = pd.DataFrame(losses, columns=["series", "step", "loss"]) if losses else None
        return (f'<div class="t2i-info" data-points="{len(losses)}">{html.escape(state)}</div>', frame, grids[-9:],
                tail, gr.Timer(active=still))

    outputs = [status, plot, samples, log_tail, timer]
    with gr.Row(equal_height=False, elem_classes=["t2i-main-row"]):
        with gr.Column(scale=1, min_width=320):
            with gr.Tabs(elem_id="train_mode_tabs"):
                with gr.Tab("Train a model", id="family", elem_id="train_family_tab"):
                    if not names:
                        gr.Markdown("No training configs found: start the server where a `configs/` folder of "
                                    "YAML files is (t2i's repository has one), or pass the folder to mount_webui.")
                    form.control(TrainOptions, "config", choices=names, value=names[0] if names else None)
                    form.control(TrainOptions, "name")
                    with gr.Row(elem_classes=["t2i-compact-row"]):
                        for name in ("steps", "batch_size", "lr"):
                            form.control(TrainOptions, name, kind="number", min_width=120)
                    with gr.Row(elem_classes=["t2i-compact-row"]):
                        for name in ("log_every", "sample_every", "budget_minutes"):
                            form.control(TrainOptions, name, kind="number", min_width=120)
                    if ctx.loopback:
                        form.control(TrainOptions, "data_folder")
                    with gr.Row():
                        start = gr.Button("Train", variant="primary", elem_id="train_start")
                        resume = gr.Button("Resume", elem_id="train_resume")
                with gr.Tab("Fine-tune", id="finetune", elem_id="train_finetune_tab"):
                    tab_finetune.build(ctx, trainer, refresh, outputs)
            stop = gr.Button("Stop", variant="stop", elem_id="train_stop")
            status.render()
            log_tail.render()
        with gr.Column(scale=1, min_width=320):
            plot.render()
            samples.render()
    ctx.hints.update({"train_start": "start a new run with these settings", "train_stop": "stop the run (its last "
                      "checkpoint stays; Resume continues from it)", "train_resume": "continue the named run"})
    timer.tick(refresh, outputs=outputs, show_progress="hidden")
    tab.select(refresh, outputs=outputs, show_progress="hidden")  # a run started before this page loaded

    def launch(data: dict, resume_run: bool):
        values = coerce(TrainOptions, form.values(data))
        o = TrainOptions(**{k: v for k, v in values.items() if v is not None})
        if not resume_run and o.config not in config_files(folder):
            raise gr.Error("choose a training config")
        try:
            trainer.start(o.name, (folder or Path(".")) / o.config, {k: getattr(o, k) for k in (
                "steps", "batch_size", "lr", "log_every", "sample_every")}, data_folder=o.data_folder or None,
                resume=resume_run, budget_minutes=o.budget_minutes)
        except (T2IError, ValueError, OSError) as err:
            raise gr.Error(str(err)) from None
        return refresh()

    inputs = set(form.components.values())
    start.click(lambda data: launch(data, False), inputs=inputs, outputs=outputs, show_progress="hidden")
    resume.click(lambda data: launch(data, True), inputs=inputs, outputs=outputs, show_progress="hidden")

    async def on_stop():
        await run_in_threadpool(trainer.stop)
        return refresh()

    stop.click(on_stop, outputs=outputs, show_progress="hidden")
