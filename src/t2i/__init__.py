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


def load(model=None, *, precision: str = "auto", device: str | None = None):
    """Load a model folder (None: the bundled default) -> a LoadedModel for `generate`."""
    from t2i.checkpoints.registry import load_model
    from t2i.runtime import Runtime

    return load_model(model, Runtime.auto(precision, device))


def generate(prompt: str = "", *, model=None, callback=None, **params) -> list:
    """Generate images for `prompt`; `params` are the fields of Txt2ImgParams (negative_prompt,
    steps, cfg_scale, sampler, scheduler, eta, seed, width, height, batch_size, n_iter).
    `model` is a LoadedModel from `load`, a model folder, or None for the bundled model.
    Returns a list of PIL images, each carrying its infotext in `image.info["parameters"]`."""
    from t2i.checkpoints.registry import LoadedModel
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    loaded = model if isinstance(model, LoadedModel) else load(model)
    result = txt2img(loaded, Txt2ImgParams(prompt=prompt, **params), callback=callback)
    for image, info in zip(result.images, result.infotexts):
        image.info["parameters"] = info
    return result.images


def train(config, outdir, *, resume: bool = False):
    """Train from a YAML path (its `family:` key picks the recipe; default ldm) or a typed
    training config (an LDMTrainConfig, ...); returns the trained model."""
    from t2i.training.registry import RECIPES, load_training_config

    if isinstance(config, (str, bytes)) or hasattr(config, "__fspath__"):
        _, cfg, train_fn = load_training_config(config)
    else:
        matches = [fn for cls, fn in (entry() for entry in RECIPES.values()) if isinstance(config, cls)]
        if not matches:
            raise TypeError(f"cannot train from a {type(config).__name__}; pass a YAML path or a training config")
        cfg, train_fn = config, matches[0]
    return train_fn(cfg, outdir, resume=resume)
