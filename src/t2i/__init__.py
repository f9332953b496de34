"""t2i: train text-to-image models and generate images, offline.

    import t2i
    images = t2i.generate("a blue square", seed=1)     # bundled default model
    session = t2i.Session()                            # load once (cached), generate many times
    images = t2i.generate("a red circle", model=session, steps=30, sampler="Euler a")
    model = t2i.load()                                 # or a LoadedModel
    images = t2i.generate("a red circle", model=model, steps=30, sampler="Euler a")

Importing t2i does nothing else: torch, diffusers and the model load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Session", "load", "generate", "train", "finetune", "__version__"]


def __getattr__(name: str):
    """`t2i.Session` without importing the pipelines (and torch) at `import t2i`."""
    if name == "Session":
        from t2i.pipelines.session import Session

        return Session
    raise AttributeError(f"module 't2i' has no attribute {name!r}")


def _settings(model=None, *, precision: str = "auto", device: str | None = None, vae=None, lora_dirs=None,
              embedding_dirs=None):
    from t2i.pipelines.load_settings import LoadSettings

    as_tuple = lambda dirs: () if dirs is None else tuple(map(str, [dirs] if isinstance(dirs, (str, bytes)) or hasattr(  # noqa: E731
        dirs, "__fspath__") else dirs))
    return LoadSettings(model=None if model is None else str(model), vae=None if vae is None else str(vae),
                        lora_dirs=as_tuple(lora_dirs), embedding_dirs=as_tuple(embedding_dirs), precision=precision,
                        device=device)


def load(model=None, *, precision: str = "auto", device: str | None = None, vae=None, lora_dirs=None,
         embedding_dirs=None):
    """Load a model folder or file (None or "default": the bundled model) -> a LoadedModel for
    `generate`. `vae`: a separate VAE file or folder; `lora_dirs` / `embedding_dirs`: where
    `<lora:name>` tags and embedding names in prompts are looked up (default: loras/ and
    models/Lora/, embeddings/ and models/embeddings/ in the working directory). For many runs,
    threads or a server, hold a `t2i.Session` instead: it caches models and locks each one."""
    from t2i.pipelines.session import Session

    settings = _settings(model, precision=precision, device=device, vae=vae, lora_dirs=lora_dirs,
                         embedding_dirs=embedding_dirs)
    return Session(settings).model().loaded


def _session_for(model):
    """A Session for `model`: a Session as it is, a LoadedModel adopted, else loaded from a path."""
    from t2i.checkpoints.registry import LoadedModel
    from t2i.pipelines.session import Session

    if isinstance(model, Session):
        return model
    if isinstance(model, LoadedModel):
        session = Session(_settings(model.path))
        session.adopt(model)
        return session
    return Session(_settings(model))


def generate(prompt: str = "", *, model=None, callback=None, styles=None, styles_file=None, progress=None,
             control=None, **params) -> list:
    """Generate images for `prompt`; `params` are the fields of Txt2ImgParams (negative_prompt,
    steps, cfg_scale, sampler, scheduler, eta, seed, width, height, batch_size, n_iter, and
    loras={"name or path": weight} besides the prompt's `<lora:name:weight>` tags).
    `model` is a `t2i.Session`, a LoadedModel from `load`, a model folder or file, or None (or
    "default") for the bundled model. `styles` names styles of `styles_file` (a web-UI styles
    CSV; default: ./styles.csv) to apply.
    `progress(p)` gets a t2i.pipelines.progress.Progress after every step (step, total, ETA,
    `p.preview()`); `control`, a GenerationControl, interrupts the run or skips a batch;
    `callback(step, total, latents)` is the older per-step hook (return "interrupt" or "skip").
    Returns a list of PIL images, each carrying its infotext in `image.info["parameters"]`."""
    from t2i.pipelines.generation_params import Txt2ImgParams
    from t2i.pipelines.progress import GenerationControl

    session = _session_for(model)
    if styles_file is not None:
        session.styles_file = styles_file
    request = Txt2ImgParams(prompt=prompt, styles=tuple(styles or ()), **params)
    if callback is not None:
        control = control or GenerationControl()
        progress = _with_callback(progress, callback, control)
    result = session.run(request, progress=progress, control=control)
    for image, info in zip(result.images, result.infotexts):
        image.info["parameters"] = info
    return result.images


def _with_callback(progress, callback, control):
    def on_progress(event):
        answer = callback(event.step - 1, event.total, event.latents)
        if answer == "interrupt":
            control.interrupt()
        elif answer == "skip":
            control.skip()
        if progress is not None:
            progress(event)
    return on_progress


def train(config, outdir, *, resume: bool = False, budget_minutes: float | None = None, budget_clock: str = "cpu"):
    """Train from a YAML path (its `family:` key picks the recipe; default ldm) or a typed
    training config (an LDMTrainConfig, ...); returns the trained model. `budget_minutes`: stop
    every stage once this process has used that many CPU-minutes, or wall minutes with
    budget_clock="wall" (t2i.training.budget)."""
    from t2i.training.registry import RECIPES, load_training_config

    if isinstance(config, (str, bytes)) or hasattr(config, "__fspath__"):
        _, cfg, train_fn = load_training_config(config)
    else:
        matches = [fn for cls, fn in (entry() for entry in RECIPES.values()) if isinstance(config, cls)]
        if not matches:
            raise TypeError(f"cannot train from a {type(config).__name__}; pass a YAML path or a training config")
        cfg, train_fn = config, matches[0]
    if budget_minutes is not None:
        from t2i.training.budget import train_on_budget

        return train_on_budget(train_fn, cfg, outdir, resume=resume, minutes=budget_minutes, clock=budget_clock)
    return train_fn(cfg, outdir, resume=resume)


def finetune(method: str, *, model="default", data, outdir, resume: bool = False, **options):
    """Fine-tune `model` ("default" = the bundled model, a model folder or SD file) on the captioned
    images in the folder `data` with `method` (lora, dreambooth, ti, hypernetwork, full); returns the
    output path (OUTDIR/NAME.safetensors, OUTDIR/NAME.pt or the OUTDIR/model folder). `options` are
    FinetuneConfig fields (steps, lr, batch_size, ...) and its method's (rank, init_word,
    class_prompt, ...; t2i.training.finetune.config)."""
    from t2i.training.finetune import run_finetune

    return run_finetune(method, model=model, data=data, outdir=outdir, resume=resume, **options)
