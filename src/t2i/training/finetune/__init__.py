"""Fine-tuning on your own pictures: LoRA / LoCon, DreamBooth, textual inversion, hypernetworks and
full fine-tuning of any model t2i loads (the bundled one, SD 1.x/2.x, SDXL), from a folder of
captioned images (t2i.data.captioned, preflight, buckets).

    from t2i.training.finetune import run_finetune
    path = run_finetune("lora", model="default", data="photos/", outdir="out/", rank=4)

One loop (loop.py) for every method (methods.py: lora.py, textual_inversion.py, the
hypernetwork of t2i.extra_networks.hypernetwork, full and DreamBooth), one typed config
(config.py). Outputs in OUTDIR: NAME.safetensors (LoRA, embedding) or NAME.pt (hypernetwork) or
model/ (DreamBooth, full), diffusers/ (diffusers' formats), finetune.ckpt (resume),
samples/step-*.png, loss.png, preflight.txt, config.yaml, cache/.
"""
from __future__ import annotations

from pathlib import Path

from t2i.training.finetune.config import METHODS, FinetuneConfig

__all__ = ["METHODS", "FinetuneConfig", "run_finetune", "config_with"]

_SECTIONS = ("lora", "ti", "dreambooth", "prior", "hypernetwork")


def config_with(base: dict, options: dict, where: str = "options") -> FinetuneConfig:
    """A FinetuneConfig from a mapping updated with `options`; in both, a method section's own
    keys (rank, init_word, class_prompts, layer_structure, ...) may be given flat. ConfigError for
    unknown keys."""
    import dataclasses

    from t2i.training.finetune.config import config_from

    data: dict = {}
    top = {f.name for f in dataclasses.fields(FinetuneConfig)}
    sections = {s: {f.name for f in dataclasses.fields(type(getattr(FinetuneConfig(), s)))} for s in _SECTIONS}
    for key, value in {**base, **options}.items():
        if key in _SECTIONS and isinstance(value, dict):
            data.setdefault(key, {}).update(value)
            continue
        owner = next((s for s in _SECTIONS if key in sections[s]), None) if key not in top else None
        if owner is None:
            data[key] = value
        else:
            data.setdefault(owner, {})[key] = value
    return config_from(data, where)


def run_finetune(method: str, *, model="default", data, outdir, resume: bool = False, **options) -> Path:
    """Fine-tune `model` with `method` on the images in `data`; returns the output path."""
    cfg = config_with({"method": method, "model": str(model or "default"), "data": str(data), "outdir": str(outdir)},
                      options)
    from t2i.training.finetune.loop import finetune

    return finetune(cfg, resume=resume)
