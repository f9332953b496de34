"""Run-folder plumbing shared by the one-file families' recipes (GAN, VAE, pixel DDPM, AR).

A run folder holds `config.yaml` (with its `family:` key, so `t2i train` can rerun it),
`<family>.ckpt` (the training state, atomic), `cache/` (rendered `shapes`), `samples/` (periodic
grids) and, when training finishes, `model.safetensors` (EMA weights, see
t2i.checkpoints.family_file).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import yaml

from t2i.atomic import write_text
from t2i.checkpoints.family_file import save_family_file
from t2i.checkpoints.safe_load import check_tensor_kinds, load_checkpoint_dict, misfit_is_load_error
from t2i.config import from_dict, to_dict
from t2i.data.labels import LabelledImages, load_labelled_images
from t2i.errors import ModelConfigError
from t2i.metadata import write_png
from t2i.outputs import make_grid
from t2i.training.trainer import Trainer


def start_run(cfg, outdir: str | Path, family: str) -> tuple[Path, LabelledImages, object]:
    """Create the folder, load the data and fill the model config's class names from it.

    Returns (outdir, data, the model config to build): conditional models get the data's class
    list; a class list in the YAML must then agree with it."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    data = load_labelled_images(cfg.data, cfg.model.resolution, cache_dir=outdir / "cache")
    model_cfg = cfg.model
    declared = getattr(model_cfg, "class_names", None)
    if declared is None:
        if data.class_names:
            raise ValueError(f"the {family} model is unconditional; set data.classes: false")
        return outdir, data, model_cfg
    if declared and tuple(declared) != data.class_names:
        raise ValueError(f"model.class_names {list(declared)} differ from the data's classes "
                         f"{list(data.class_names)}; leave model.class_names empty (it is set from the data)")
    if data.class_names:
        model_cfg = dataclasses.replace(model_cfg, class_names=data.class_names)
    return outdir, data, model_cfg


def run_config(cfg, family: str, model_cfg) -> dict:
    """The config a checkpoint embeds: the training config with its family and final model config."""
    return {"family": family, **to_dict(dataclasses.replace(cfg, model=model_cfg))}


def save_run_config(config: dict, outdir: Path) -> None:
    write_text(outdir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def open_run(cfg, outdir: str | Path, family: str, model_cls: type, resume: bool):
    """Start (or, with `resume`, continue) a run trained by t2i.training.trainer.Trainer: the folder,
    the data, config.yaml, the model (initialised from cfg.seed) and its Trainer over `cfg.train`,
    the model registered under the family's name. Returns (outdir, data, model, trainer)."""
    outdir, data, model_cfg = start_run(cfg, outdir, family)
    config = run_config(cfg, family, model_cfg)
    save_run_config(config, outdir)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = model_cls(model_cfg)
    trainer = Trainer(family, {family: model}, cfg.train, outdir, cfg.seed, config)
    if resume:
        trainer.load()
    return outdir, data, model, trainer


def finish_run(trainer, model, outdir: Path):
    """After `trainer.fit`: a finished run puts the EMA weights into the model and writes
    model.safetensors; an unfinished one (stopped early) leaves only its checkpoint, unless the
    CPU budget stopped it: then it is written as if finished."""
    if trainer.step < trainer.cfg.steps and not trainer.stopped_on_budget:
        return model
    trainer.apply_ema()
    model.eval().requires_grad_(False)
    save_family_file(model, outdir / "model.safetensors")
    return model


def write_sample_grid(images: list, outdir: Path, step: int) -> Path:
    path = outdir / "samples" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(make_grid(images), path, f"step {step}")


def load_checkpoint(path: Path, family: str) -> dict:
    """A `<family>.ckpt` training state, read weights-only; ModelLoadError for anything else."""
    state = load_checkpoint_dict(path, f"{family} training checkpoint", ("config", "modules", "step"))
    config = state["config"]
    if not isinstance(config, dict) or config.get("family") != family:  # a ValueError too: callers try the next family
        raise ModelConfigError(f"{path} is not a {family} training checkpoint (its config names another family)")
    return state


def copy_ema(params: list[torch.nn.Parameter], ema_state: dict | None) -> None:
    """Put a checkpoint's EMA shadow weights into `params` (same order as at training time)."""
    if not ema_state:
        return
    with torch.no_grad():
        for p, shadow in zip(params, ema_state["shadow"], strict=True):
            if shadow.shape != p.shape:  # copy_ would broadcast a wrong-shaped shadow silently
                raise ValueError(f"an EMA tensor of shape {tuple(shadow.shape)} for a parameter of shape {tuple(p.shape)}")
            p.copy_(shadow)


def model_from_checkpoint(path: str | Path, family: str, model_cls: type, config_cls: type,
                          parts: dict[str, str] | None = None, ema_part: str = "", use_ema: bool = True):
    """The model in a (possibly unfinished) run's `<family>.ckpt`, EMA weights by default.

    parts: the checkpoint's module names -> the model's attribute holding each ("" = the model
    itself; default {family: ""}); ema_part: the attribute whose parameters the EMA shadows."""
    state = load_checkpoint(Path(path), family)
    with misfit_is_load_error(path, f"a {family} model"):
        model = model_cls(from_dict(config_cls, state["config"]["model"], where=f"{path}: model"))
        for name, attr in (parts or {family: ""}).items():
            module = getattr(model, attr) if attr else model
            check_tensor_kinds(module.state_dict(), state["modules"][name], path, f"a {family} model")
            module.load_state_dict(state["modules"][name], strict=True)
        if use_ema:
            copy_ema(list((getattr(model, ema_part) if ema_part else model).parameters()), state.get("ema"))
    return model.eval()
