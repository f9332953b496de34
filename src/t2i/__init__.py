"""t2i: train text-to-image models and generate images, offline.

    import t2i
    images = t2i.generate("a blue square", seed=1)     # bundled default model
    model = t2i.load()                                 # load once, generate many times
    images = t2i.generate("a red circle", model=model, steps=30, sampler="Euler a")

Importing t2i does nothing else: torch, diffusers and the model load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "generate", "train", "__version__"]


def load(model=None, *, precision: str = "auto", device: str | None = None, vae=None, lora_dirs=None,
         embedding_dirs=None):
    """Load a model folder or file (None: the bundled default) -> a LoadedModel for `generate`.
    `vae`: a separate VAE file or folder; `lora_dirs` / `embedding_dirs`: where `<lora:name>` tags
    and embedding names in prompts are looked up (default: loras/ and models/Lora/, embeddings/
    and models/embeddings/ in the working directory)."""
    from t2i.checkpoints.registry import load_model
    from t2i.extra_networks.library import configure_extra_networks
    from t2i.runtime import Runtime

    loaded = load_model(model, Runtime.auto(precision, device))
    configure_extra_networks(loaded, vae=vae, lora_dirs=lora_dirs, embedding_dirs=embedding_dirs)
    return loaded


def generate(prompt: str = "", *, model=None, callback=None, styles=None, styles_file=None, progress=None,
             control=None, **params) -> list:
    """Generate images for `prompt`; `params` are the fields of Txt2ImgParams (negative_prompt,
    steps, cfg_scale, sampler, scheduler, eta, seed, width, height, batch_size, n_iter, and
    loras={"name or path": weight} besides the prompt's `<lora:name:weight>` tags).
    `model` is a LoadedModel from `load`, a model folder, or None for the bundled model.
    `styles` names styles of `styles_file` (a web-UI styles CSV; default: ./styles.csv) to apply.
    `progress(p)` gets a t2i.pipelines.progress.Progress after every step (step, total, ETA,
    `p.preview()`); `control`, a GenerationControl, interrupts the run or skips a batch.
    Returns a list of PIL images, each carrying its infotext in `image.info["parameters"]`."""
    from t2i.checkpoints.registry import LoadedModel
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    loaded = model if isinstance(model, LoadedModel) else load(model)
    request = Txt2ImgParams(prompt=prompt, **params)
    if styles:
        from t2i.pipelines.styles import apply_styles, default_styles_file, load_styles

        path = styles_file or default_styles_file()
        request = apply_styles(request, styles, load_styles(path) if path else None)
    result = txt2img(loaded, request, callback=callback, progress=progress, control=control)
    for image, info in zip(result.images, result.infotexts):
        image.info["parameters"] = info
    return result.images


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
