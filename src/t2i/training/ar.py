"""Recipe: the autoregressive transformer over VQGAN codes (stage 2), `family: ar`.

Needs a trained first stage (`first_stage:`, the vqgan.safetensors of a `family: vqgan` run).
Every training image is encoded once into its code grid (cached in outdir/codes.pt, keyed by
the first stage's hash), then `t2i.training.trainer.Trainer` fits the transformer by next-code
cross-entropy. Conditions per `model.conditioning`:
- none:  every image;
- class: shapes: colour × shape of single-object scenes (24 classes; two-object scenes are left
  out); folder: the name of the image's sub-directory;
- text:  the captions (shapes captions or the folder's .txt sidecars).

Outputs in `outdir`: ar.ckpt (training state), ar.safetensors (the transformer) and a copy of
the first stage as vqgan.safetensors, so the folder alone can generate images.
"""
from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from t2i.atomic import atomic_path
from t2i.checkpoints.family_file import load_family_file, save_family_file
from t2i.checkpoints.loaded import file_hash
from t2i.config import BatchSize, Seed, save_yaml, to_dict
from t2i.data.cache import load_cache, save_cache
from t2i.data.images import ImageSource, load_image_source
from t2i.data.labels import SHAPES_CLASSES, folder_classes, shapes_class
from t2i.models.ar import ARConfig, CodeTransformer
from t2i.models.vqgan import VQGAN
from t2i.training.ldm import DataConfig, _to_model_range
from t2i.training.trainer import OptimConfig, Trainer


@dataclass
class AROptimConfig(OptimConfig):
    encode_batch_size: BatchSize = 128


@dataclass
class ARTrainConfig:
    first_stage: str = ""  # path of a trained VQGAN (.safetensors)
    # num_codes / code_shape / class_names: leave at 0 / [0, 0] / [] to take them from the first
    # stage and the data; values given must match them
    model: ARConfig = field(default_factory=ARConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: AROptimConfig = field(default_factory=AROptimConfig)
    seed: Seed = 0


def _file_hash(path: Path) -> str:
    return file_hash(path, chars=64)  # the whole sha256: the code cache is keyed on the exact first stage


@torch.no_grad()
def encode_codes(vqgan: VQGAN, images_uint8: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, h, w) int32 code grids, on the CPU."""
    device = next(vqgan.parameters()).device
    return torch.cat([vqgan.encode_codes(_to_model_range(images_uint8[i:i + batch_size]).to(device)).int().cpu()
                      for i in range(0, len(images_uint8), batch_size)])


def _load_or_encode(vqgan: VQGAN, first_stage: Path, source: ImageSource, cfg: ARTrainConfig,
                    outdir: Path) -> torch.Tensor:
    path, key = outdir / "codes.pt", _file_hash(first_stage)
    cached = load_cache(path, lambda c: c["first_stage"] == key and len(c["codes"]) == len(source.images))
    if cached is not None:
        return cached["codes"]
    codes = encode_codes(vqgan, source.images, cfg.optim.encode_batch_size)
    save_cache({"first_stage": key, "codes": codes}, path)
    return codes


def class_labels(data: DataConfig, captions: list[str]) -> tuple[list[int | None], tuple[str, ...]]:
    """Per-image class ids (None: the image has no class) and the class names, with the classes
    the GAN and DDPM recipes use (t2i.data.labels)."""
    if data.name == "shapes":
        classes, names = [shapes_class(c) for c in captions], SHAPES_CLASSES
    else:
        classes = folder_classes(data.folder)
        names = tuple(sorted(set(classes)))
        if len(classes) != len(captions):
            raise ValueError(f"{data.folder} changed while loading; try again")
    return [None if c is None else names.index(c) for c in classes], names


def _resolve_model_config(cfg: ARTrainConfig, vqgan: VQGAN, class_names: tuple[str, ...]) -> ARConfig:
    m = cfg.model
    given = {"num_codes": (m.num_codes, 0, vqgan.num_codes),  # (value, "unset" value, actual)
             "code_shape": (tuple(m.code_shape), (0, 0), vqgan.code_shape),
             "class_names": (m.class_names, (), class_names)}
    for name, (value, unset, actual) in given.items():
        if value != unset and value != actual:
            raise ValueError(f"model.{name} is {value} but the first stage / data give {actual}; "
                             f"leave it out of the config to take it from them")
    return dataclasses.replace(m, num_codes=vqgan.num_codes, code_shape=vqgan.code_shape, class_names=class_names)


def ar_loss_fn(codes: torch.Tensor, cond_ids: torch.Tensor, batch_size: int, dropout: bool):
    codes = codes.reshape(len(codes), -1).long()

    def loss_fn(modules, step, generator):
        model = modules["ar"]
        idx = torch.randint(0, len(codes), (batch_size,), generator=generator)
        target = codes[idx]
        # GPT-2's dropout draws from torch's global generator: seed it from this step's stream
        # (inside fork_rng, restored afterwards) so that resumed runs replay exactly
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            if dropout:
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            logits = model(cond_ids[idx], target)
        target = target.to(logits.device)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1)), batch_size

    return loss_fn


def train_ar(cfg: ARTrainConfig, outdir: str | Path, resume: bool = False,
             stop_after: int | None = None, budget=None) -> CodeTransformer:
    """Train the transformer on the codes of `cfg.first_stage`; returns it (EMA weights if any).
    A spent `budget` (t2i.training.budget.CPUBudget; code encoding counts) stops training early
    and still writes the model."""
    if not cfg.first_stage:
        raise ValueError("first_stage is not set: train a VQGAN first (t2i train configs/shapes-vqgan.yaml) "
                         "and point first_stage at its vqgan.safetensors")
    outdir, first_stage = Path(outdir), Path(cfg.first_stage)
    outdir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, outdir / "config.yaml")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vqgan = load_family_file(VQGAN, first_stage).to(device)
    source = load_image_source(cfg.data, vqgan.config.resolution, cache_dir=outdir / "cache")
    codes = _load_or_encode(vqgan, first_stage, source, cfg, outdir)

    class_names: tuple[str, ...] = ()
    conditions: list = list(source.captions)
    if cfg.model.conditioning == "class":
        labels, class_names = class_labels(cfg.data, list(source.captions))
        keep = [i for i, label in enumerate(labels) if label is not None]
        codes, conditions = codes[keep], [labels[i] for i in keep]
    if len(codes) == 0:
        raise ValueError("no training images with a condition: check data and model.conditioning")
    model_cfg = _resolve_model_config(cfg, vqgan, class_names)
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = CodeTransformer(model_cfg)
    cond_ids = model.condition_ids(conditions)
    print(f"[ar] {len(codes)} code grids of {model_cfg.code_shape}, {model_cfg.conditioning}-conditional, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters", file=sys.stderr)

    run_config = {"family": "ar", **to_dict(cfg)}  # the family key: t2i sample reads unfinished runs by it
    run_config["model"] = to_dict(model_cfg)
    trainer = Trainer("ar", {"ar": model}, cfg.optim, outdir, cfg.seed, run_config)
    if resume:
        trainer.load()
    trainer.fit(ar_loss_fn(codes, cond_ids, cfg.optim.batch_size, model_cfg.dropout > 0), stop_after=stop_after,
                budget=budget)
    if trainer.step < cfg.optim.steps and not trainer.stopped_on_budget:
        return model
    trainer.apply_ema()
    model.eval().requires_grad_(False)
    save_family_file(model, outdir / "ar.safetensors")
    if first_stage.resolve() != (outdir / "vqgan.safetensors").resolve():
        with atomic_path(outdir / "vqgan.safetensors") as tmp:
            shutil.copyfile(first_stage, tmp)
    return model
