"""The LDM recipe's conditions beyond text: class labels, nothing, or layouts (t2i.models.ldm_conditioning).

- `class`: `shapes` -> the (colour, shape) of the scene's first object, among all 24 pairs;
  `folder` -> each image's top-level sub-directory (as ImageNet's class-conditional LDM).
- `none`: no labels; the UNet sees one learned token.
- `layout` (`shapes` only, whose scenes have exact boxes): every object's class and box, and the
  background as a short prompt ("on a white background"), since the prompt carries it at
  generation time.

Training drops the condition for `caption_dropout` of the images (null class, empty prompt and no
objects), so sampling can use classifier-free guidance; layout models also drop only the prompt
as often, so a layout alone (no background named) is in the training distribution.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from t2i.data.labels import SHAPES_CLASSES, folder_classes
from t2i.data.shapes import ShapesDataset, article
from t2i.models.ldm_conditioning import layout_map, null_objects
from t2i.models.text import tokenize


@dataclass
class Conditions:
    """Per training image: class labels (N,), layout objects (N, M, 5) with their prompts' token ids."""

    labels: torch.Tensor | None = None
    objects: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    empty_ids: torch.Tensor | None = None


def background_prompt(background: str) -> str:
    return f"on {article(background)} {background} background"


def scene_objects(scene, max_objects: int) -> torch.Tensor:
    """(max_objects, 5) rows of class index, x0, y0, x1, y1 for a `shapes` Scene (-1: no object)."""
    rows = null_objects(1, max_objects)[0]
    for k, obj in enumerate(scene.objects[:max_objects]):
        half = obj.side / 2
        rows[k] = torch.tensor([SHAPES_CLASSES.index(f"{obj.color} {obj.shape}"), obj.cx - half, obj.cy - half,
                                obj.cx + half, obj.cy + half])
    return rows


def _scenes(data) -> list:
    dataset = ShapesDataset(data.size, data.seed, 16, data.p_two, data.p_short)  # scenes only: nothing drawn
    return [dataset.scene(i) for i in range(data.size)]


def class_names_of(cfg) -> tuple[str, ...]:
    """The classes a class or layout model learns from `cfg.data` (an LDMTrainConfig's)."""
    if cfg.data.name == "folder":
        if cfg.model.conditioning == "layout":
            raise ValueError("layout models learn from `shapes` scenes (exact boxes); an image folder has no boxes")
        names = tuple(sorted(set(folder_classes(cfg.data.folder))))
        if len(names) < 2:
            raise ValueError(f"{cfg.data.folder} has only the class {names}; class-conditional training needs at "
                             f"least two sub-directories")
        return names
    return SHAPES_CLASSES


def build_conditions(cfg, model, count: int) -> Conditions:
    """The conditions of the `count` training images of `cfg.data`, in the order they are loaded."""
    kind = cfg.model.conditioning
    if kind == "none":
        return Conditions()
    if kind == "class" and cfg.data.name == "folder":
        names = folder_classes(cfg.data.folder)
        if len(names) != count:
            raise ValueError(f"{cfg.data.folder} changed while loading; try again")
        return Conditions(labels=torch.tensor([model.config.class_names.index(n) for n in names]))
    scenes = _scenes(cfg.data)
    if kind == "class":
        first = [f"{s.objects[0].color} {s.objects[0].shape}" for s in scenes]
        return Conditions(labels=torch.tensor([SHAPES_CLASSES.index(c) for c in first]))
    objects = torch.stack([scene_objects(s, model.config.max_objects) for s in scenes])
    ids = tokenize(model.tokenizer, [background_prompt(s.background) for s in scenes])
    return Conditions(objects=objects, ids=ids, empty_ids=tokenize(model.tokenizer, [""])[0])


def context_fn(model, conditions: Conditions, dropout: float):
    """`context(modules, idx, generator) -> (B, T, D)`: what the UNet cross-attends to for the
    training images `idx`, with the recipe's condition dropout; for layout-map models the pair
    (that, the (B, K, h, w) layout map its input channels get)."""
    kind = model.config.conditioning
    null = getattr(model.conditioner, "null_class", None)

    def context(modules, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(idx)
        drop = torch.rand(n, generator=generator) < dropout
        conditioner = modules["conditioner"]
        if kind in ("class", "none"):
            labels = torch.full((n,), null) if kind == "none" else conditions.labels[idx].clone()
            labels[drop] = null
            return conditioner(labels)
        objects, tokens = conditions.objects[idx].clone(), conditions.ids[idx].clone()
        objects[drop] = null_objects(int(drop.sum()), objects.shape[1])
        tokens[drop | (torch.rand(n, generator=generator) < dropout)] = conditions.empty_ids
        device = next(modules["unet"].parameters()).device
        text = modules["text_encoder"](tokens.to(device)).last_hidden_state
        hidden = torch.cat([text, conditioner(objects)], dim=1)
        if not model.config.layout_map:
            return hidden
        size = model.config.latent_size  # a dropped layout is an empty map, as guidance's uncond half
        return hidden, layout_map(objects, len(model.config.class_names), size, size).to(device)

    return context


SAMPLE_LAYOUTS = (  # the training grid's layouts: one object, then two
    ("on a white background", (("red circle", (0.1, 0.1, 0.45, 0.45)),)),
    ("on a black background", (("blue square", (0.1, 0.35, 0.4, 0.65)), ("yellow triangle", (0.6, 0.35, 0.9, 0.65)))),
)


@torch.no_grad()
def sample_contexts(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(cond, uncond) rows of the training sample grid for a class, unconditional or layout model;
    a layout model's rows add their objects (1, M, 5), for `LatentDiffusion.layout_unet`."""
    kind = model.config.conditioning
    if kind == "none":
        return [(model.class_context(None), model.class_context(None))]
    if kind == "class":
        return [(model.class_context(torch.tensor([k])), model.class_context(None))
                for k in range(min(2, len(model.config.class_names)))]
    rows = []
    for prompt, objects in SAMPLE_LAYOUTS:
        layout = null_objects(1, model.config.max_objects)
        for k, (name, box) in enumerate(objects[:model.config.max_objects]):
            layout[0, k] = torch.tensor([SHAPES_CLASSES.index(name), *box])
        rows.append((model.layout_context([prompt], layout),
                     model.layout_context([""], null_objects(1, model.config.max_objects)), layout))
    return rows
