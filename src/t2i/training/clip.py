"""Recipe: a small CLIP trained contrastively from scratch on captioned images (`shapes` by default).

    t2i train configs/shapes-clip.yaml --outdir runs/clip     # -> runs/clip/clip/ (a transformers folder)

Each step draws a batch of images and their captions, embeds both, and pulls each image towards
every caption in the batch that is true of it (t2i.models.clip.contrastive_loss). On `shapes` the
truth is exact: a caption states some attributes of a scene (a short caption leaves some out),
and it is true of every scene that has those. On a folder, identical captions count as matches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from t2i.checkpoints.clip_folder import save_clip_folder
from t2i.config import BatchSize, LearningRate, Seed, Steps, at_least, between
from t2i.data.labels import ImageDataConfig
from t2i.data.shapes import (
    COLORS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapesDataset,
    scene_caption,
)
from t2i.models.clip import CLIPModelConfig, build_clip, contrastive_loss, pixel_values
from t2i.models.text import load_tokenizer, tokenize
from t2i.training.runs import open_run
from t2i.training.trainer import OptimConfig

FAMILY = "clip"
MODEL_FOLDER = "clip"  # the trained model's folder inside the run folder
FREE = -1  # a claim's "this attribute is not stated"


@dataclass
class CLIPOptimConfig(OptimConfig):
    steps: Steps = 3000
    batch_size: BatchSize = 256  # contrastive learning wants many negatives per step
    lr: LearningRate = 1e-3
    weight_decay: Annotated[float, at_least(0)] = 0.0  # decay would also shrink the never-used token rows
    # `shapes` only: per image, this many false captions that differ from its full caption in one
    # attribute (position, size, shape; for two objects their order or relation), as extra
    # negatives. Without them a batch rarely holds two images that differ only in position, and
    # CLIP learns colours and shapes but not where things are (a bag of words).
    hard_negatives: Annotated[int, between(0, 4)] = 2


@dataclass
class CLIPTrainConfig:
    model: CLIPModelConfig = field(default_factory=CLIPModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    train: CLIPOptimConfig = field(default_factory=CLIPOptimConfig)
    seed: Seed = 0


# ------------------------------------------------------------------------------------ truth
def _scene_codes(scene) -> tuple[list[int], list[int]]:
    """(what the scene is, what its caption claims) as integer codes over the same fields:
    objects, colour/shape of A and B, relation, size, position, background; FREE where a field
    does not apply (the scene) or is not stated (the claim)."""
    objs = scene.objects
    a, b = objs[0], objs[-1]
    two = len(objs) == 2
    codes = [len(objs), COLORS.index(a.color), SHAPES.index(a.shape),
             COLORS.index(b.color) if two else FREE, SHAPES.index(b.shape) if two else FREE,
             RELATIONS.index(scene.relation) if two else FREE,
             FREE if two else tuple(SIZES).index(scene.size),
             FREE if two else tuple(POSITIONS).index(scene.position),
             COLORS.index(scene.background)]
    claim = list(codes)
    stated = scene.stated
    if two or "size" not in stated:
        claim[6] = FREE
    if two or "position" not in stated:
        claim[7] = FREE
    if "background" not in stated:
        claim[8] = FREE
    return codes, claim


def shapes_truth_codes(data_cfg: ImageDataConfig, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scenes, claims): (N, 9) codes of the rendered `shapes` samples, in the loader's order."""
    dataset = ShapesDataset(data_cfg.size, data_cfg.seed, resolution, data_cfg.p_two, data_cfg.p_short)
    pairs = [_scene_codes(dataset.scene(i)) for i in range(len(dataset))]
    return torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])


FULL = frozenset({"size", "position", "background"})


def _false_variant(scene, rng: np.random.Generator, k: int):
    """A scene that differs from `scene` in one attribute (k picks which), its caption in full."""
    if len(scene.objects) == 2:
        a, b = scene.objects
        if k % 2 == 0:  # the other order: "B to the left of A"
            return dataclasses.replace(scene, objects=(b, a), stated=FULL)
        other = RELATIONS[1 - RELATIONS.index(scene.relation)]
        return dataclasses.replace(scene, relation=other, stated=FULL)
    kind = ("position", "position", "size", "shape")[(k + int(rng.integers(4))) % 4]
    if kind == "position":
        return dataclasses.replace(scene, position=str(rng.choice([p for p in POSITIONS if p != scene.position])), stated=FULL)
    if kind == "size":
        return dataclasses.replace(scene, size=str(rng.choice([s for s in SIZES if s != scene.size])), stated=FULL)
    obj = scene.objects[0]
    shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
    return dataclasses.replace(scene, objects=(dataclasses.replace(obj, shape=shape),), stated=FULL)


def shapes_hard_negatives(data_cfg: ImageDataConfig, resolution: int, count: int) -> tuple[list[str], torch.Tensor]:
    """(N * count captions, (N * count, 9) claim codes): sample i's false variants at i * count + j."""
    dataset = ShapesDataset(data_cfg.size, data_cfg.seed, resolution, data_cfg.p_two, data_cfg.p_short)
    captions, claims = [], []
    for i in range(len(dataset)):
        scene = dataset.scene(i)
        rng = np.random.default_rng([data_cfg.seed, i, 7])
        for k in range(count):
            variant = _false_variant(scene, rng, k)
            captions.append(scene_caption(variant))
            claims.append(_scene_codes(variant)[1])
    return captions, torch.tensor(claims).reshape(-1, 9)


def caption_codes(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Folder data: a caption is true of the images that carry the same caption."""
    ids: dict[str, int] = {}
    codes = torch.tensor([[ids.setdefault(c, len(ids))] for c in captions])
    return codes, codes


def truth_matrix(scenes: torch.Tensor, claims: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: claim j is true of scene i (every stated field agrees)."""
    c = claims.unsqueeze(0)  # (1, B, K)
    return ((c == FREE) | (c == scenes.unsqueeze(1))).all(-1)


# ------------------------------------------------------------------------------------ train
def clip_loss_fn(images: torch.Tensor, ids: torch.Tensor, scenes: torch.Tensor, claims: torch.Tensor,
                 cfg: CLIPOptimConfig, resolution: int, negatives: tuple[torch.Tensor, torch.Tensor] | None = None):
    """negatives: (ids, claims) of the hard negatives, `count` per sample in sample order."""
    def loss_fn(modules, step, generator):
        clip = modules[FAMILY]
        device = next(clip.parameters()).device
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=generator)
        out = clip(input_ids=ids[idx].to(device), pixel_values=pixel_values(images[idx], resolution).to(device))
        truth = truth_matrix(scenes[idx], claims[idx]).to(device)  # (B, B)
        loss = contrastive_loss(out.logits_per_image, truth)
        if negatives is None:
            return loss, cfg.batch_size
        neg_ids, neg_claims = negatives
        count = len(neg_ids) // len(images)
        rows = (idx[:, None] * count + torch.arange(count)).reshape(-1)  # (B * count,)
        text = clip.get_text_features(input_ids=neg_ids[rows].to(device))
        text = getattr(text, "pooler_output", text)
        text = text / text.norm(dim=-1, keepdim=True)
        image = out.image_embeds  # (B, D) unit length
        logits = torch.cat([out.logits_per_image, clip.logit_scale.exp() * image @ text.T], 1)  # (B, B + B * count)
        truth = torch.cat([truth, truth_matrix(scenes[idx], neg_claims[rows]).to(device)], 1).float()
        image_loss = torch.sum(-truth / truth.sum(1, keepdim=True) * torch.log_softmax(logits, 1), 1).mean()
        # the caption-to-image half of CLIP's loss stays over the batch's true captions
        by_text = truth[:, :cfg.batch_size].T.float()
        text_loss = torch.sum(-by_text / by_text.sum(1, keepdim=True) * torch.log_softmax(out.logits_per_text, 1), 1).mean()
        return 0.5 * image_loss + 0.5 * text_loss, cfg.batch_size

    return loss_fn


def train_clip(cfg: CLIPTrainConfig, outdir: str | Path, resume: bool = False,
               stop_after: int | None = None, budget=None):
    """Train; writes `outdir/clip.ckpt` and, once finished (or stopped by `budget`), the model as a
    transformers folder `outdir/clip/` (config.json, model.safetensors: EMA weights when
    train.ema_decay > 0), which `t2i interrogate --clip` and CLIPModel.from_pretrained open."""
    if cfg.data.classes:
        raise ValueError("CLIP trains on captions, not class labels; set data.classes: false")
    outdir, data, model, trainer = open_run(cfg, outdir, FAMILY, build_clip, resume)
    tokenizer = load_tokenizer(max_length=cfg.model.max_length)
    ids = tokenize(tokenizer, data.captions)  # (N, L), padded with EOS
    negatives = None
    if cfg.data.name == "shapes":
        scenes, claims = shapes_truth_codes(cfg.data, cfg.model.resolution)
        if cfg.train.hard_negatives:
            texts, neg_claims = shapes_hard_negatives(cfg.data, cfg.model.resolution, cfg.train.hard_negatives)
            negatives = (tokenize(tokenizer, texts), neg_claims)
    else:
        scenes, claims = caption_codes(data.captions)
    trainer.fit(clip_loss_fn(data.images, ids, scenes, claims, cfg.train, cfg.model.resolution, negatives),
                stop_after=stop_after, budget=budget)
    if trainer.step < trainer.cfg.steps and not trainer.stopped_on_budget:
        return model
    trainer.apply_ema()
    model.eval().requires_grad_(False)
    save_clip_folder(model, outdir / MODEL_FOLDER)
    return model
