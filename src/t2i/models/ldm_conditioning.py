"""What a latent diffusion UNet cross-attends to when it is not (only) a text encoder.

- `class` (the LDM README's class-conditional ImageNet models): a learned table of K + 1 class
  embeddings, one token per image; row K is the "null class" that training swaps in for a random
  share of images, so sampling can use classifier-free guidance.
- `none` (the unconditional LDMs): the same table with no classes, only the null row: a single
  learned token, so the UNet keeps its cross-attention blocks (diffusers' UNet2DConditionModel
  always has one in the middle) and the architecture stays that of every other LDM.
- `layout` (Taming Transformers' scene synthesis from bounding boxes): one token per object,
  class embedding + an MLP of Fourier features of its box (x0, y0, x1, y1 as canvas fractions,
  the encoding GLIGEN uses for its grounding tokens), padded to `max_objects` with a learned
  "no object" token. These tokens follow the text encoder's states (the prompt carries the
  background), so the prompt syntax and the rest of the txt2img path stay as they are.
  With `layout_map` the UNet also sees the boxes as extra input channels, one per class, each
  latent cell holding the share of it that the class's boxes cover (`layout_map`; the LDM paper's
  concat conditioning, as its semantic-synthesis models take a map). Cross-attention alone has to
  learn where each cell is before it can match cells to boxes (the UNet has no position
  encoding); the map hands it that, so the model learns boxes far sooner (BENCHMARKS.md).
- `retrieval` (the LDM README's retrieval-augmented diffusion, RDM): the CLIP embeddings of k
  retrieved neighbours (or of the prompt's text, which lives in the same space), each projected
  to one token; a learned null token stands in for them when training drops the condition.

Objects are given as a (B, M, 5) float tensor: class index (-1: no object), x0, y0, x1, y1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

FOURIER_FREQUENCIES = 8  # 2^0 .. 2^7 cycles per canvas: fine enough for a 1/64 box edge


def null_objects(batch: int, max_objects: int) -> torch.Tensor:
    """A layout with no objects (every slot -1): the unconditional side of layout guidance."""
    objects = torch.zeros(batch, max_objects, 5)
    objects[..., 0] = -1
    return objects


def box_features(boxes: torch.Tensor, frequencies: int = FOURIER_FREQUENCIES) -> torch.Tensor:
    """(..., 4) boxes in [0, 1] -> (..., 4 + 8 * frequencies): the coordinates, their sines and cosines."""
    scales = (2.0 ** torch.arange(frequencies, dtype=boxes.dtype, device=boxes.device)) * math.pi
    angles = boxes.unsqueeze(-1) * scales  # (..., 4, F)
    return torch.cat([boxes, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


def layout_map(objects: torch.Tensor, num_classes: int, height: int, width: int) -> torch.Tensor:
    """Objects (B, M, 5) -> (B, num_classes, height, width): channel k of cell (i, j) is the share
    of that cell which boxes of class k cover (summed over objects, at most 1). Exact area
    coverage, not a hard mask, so a box edge inside a latent cell still moves the map."""
    objects = objects.float()
    batch, count = objects.shape[:2]
    labels = objects[..., 0].long()
    x0, y0, x1, y1 = (objects[..., i].clamp(0, 1) for i in range(1, 5))

    def overlap(lo: torch.Tensor, hi: torch.Tensor, cells: int) -> torch.Tensor:  # (B, M, cells)
        edges = torch.arange(cells + 1, dtype=torch.float32, device=objects.device) / cells
        start, end = edges[:-1], edges[1:]
        covered = torch.minimum(hi.unsqueeze(-1), end) - torch.maximum(lo.unsqueeze(-1), start)
        return covered.clamp(min=0) * cells

    cover = overlap(y0, y1, height).unsqueeze(-1) * overlap(x0, x1, width).unsqueeze(-2)  # (B, M, h, w)
    present = (labels >= 0) & (labels < num_classes)
    onehot = torch.zeros(batch, count, num_classes, device=objects.device)
    onehot[present] = nn.functional.one_hot(labels[present], num_classes).float()
    return torch.einsum("bmk,bmhw->bkhw", onehot, cover).clamp(max=1)


class LayoutChannels(nn.Module):
    """A layout-map UNet seen as an ordinary one: every call gets `objects`' map (t2i's
    `layout_map`, at the call's latent size) appended to its input channels. Under classifier-free
    guidance the batch is [uncond, cond] (t2i.diffusion.sampling.CFGDenoiser): the uncond half gets
    an empty map, as training's dropped layouts had. A wrapper, not a patch: it owns no weights.

    objects: (1 or B, M, 5); batch_size: the images per call (B)."""

    def __init__(self, unet: nn.Module, objects: torch.Tensor, num_classes: int, batch_size: int):
        super().__init__()
        self.unet, self.config = unet, unet.config
        self.objects, self.num_classes, self.batch_size = objects, num_classes, batch_size
        self._maps: dict[tuple, torch.Tensor] = {}  # one map per latent size, device and dtype: not per step

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[-2], x.shape[-1], x.device, x.dtype)
        if key not in self._maps:
            cond = layout_map(self.objects, self.num_classes, key[0], key[1]).to(x.device, x.dtype)
            self._maps[key] = cond.expand(self.batch_size, -1, -1, -1) if cond.shape[0] == 1 else cond
        return self._maps[key]

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs):
        b = self.batch_size
        cond = self._map(x)
        if x.shape[0] == 2 * b:
            extra = torch.cat([torch.zeros_like(cond), cond])
        elif x.shape[0] == b:
            extra = cond
        else:
            raise ValueError(f"a layout UNet for {b} images got a batch of {x.shape[0]}")
        return self.unet(torch.cat([x, extra], dim=1), t, encoder_hidden_states=encoder_hidden_states, **kwargs)


class ClassTokens(nn.Module):
    """Class labels (B,) -> one token each (B, 1, D); label `num_classes` is the null class."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.embedding.weight, std=1.0)  # unit scale, like a text encoder's normed states

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels.long().to(self.embedding.weight.device)).unsqueeze(1)


class LayoutTokens(nn.Module):
    """Objects (B, M, 5) -> tokens (B, M, D); see the module docstring."""

    def __init__(self, num_classes: int, dim: int, max_objects: int):
        super().__init__()
        self.num_classes, self.max_objects = num_classes, max_objects
        self.classes = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.classes.weight, std=1.0)
        self.boxes = nn.Sequential(nn.Linear(4 + 8 * FOURIER_FREQUENCIES, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.empty = nn.Parameter(torch.randn(dim))  # the "no object" token

    @staticmethod
    def approx_params(num_classes: int, dim: int) -> int:
        return num_classes * dim + (4 + 8 * FOURIER_FREQUENCIES + 1) * dim + (dim + 1) * dim + dim

    def forward(self, objects: torch.Tensor) -> torch.Tensor:
        weight = self.classes.weight
        objects = objects.to(weight.device, weight.dtype)
        if objects.ndim != 3 or objects.shape[-1] != 5 or objects.shape[1] != self.max_objects:
            raise ValueError(f"objects must be (B, {self.max_objects}, 5), got {tuple(objects.shape)}")
        labels = objects[..., 0].long()
        present = labels >= 0
        tokens = self.classes(labels.clamp(min=0)) + self.boxes(box_features(objects[..., 1:]))
        return torch.where(present.unsqueeze(-1), tokens, self.empty.to(tokens.dtype).expand_as(tokens))


class RetrievalTokens(nn.Module):
    """CLIP embeddings (B, T, E) -> tokens (B, T, D): a linear projection then a LayerNorm, so unit
    CLIP vectors become tokens of the scale a text encoder's normed states have. Neighbours are a
    set, not a sequence: no position embedding. `null(B, T)`: the dropped-condition tokens."""

    def __init__(self, clip_dim: int, dim: int):
        super().__init__()
        self.clip_dim = clip_dim
        self.proj = nn.Linear(clip_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.null_token = nn.Parameter(torch.randn(dim))

    @staticmethod
    def approx_params(clip_dim: int, dim: int) -> int:
        return (clip_dim + 1) * dim + 3 * dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        if embeddings.ndim != 3 or embeddings.shape[-1] != self.clip_dim:
            raise ValueError(f"retrieval embeddings must be (B, T, {self.clip_dim}), got {tuple(embeddings.shape)}")
        return self.norm(self.proj(embeddings.to(weight.device, weight.dtype)))

    def null(self, batch: int, tokens: int) -> torch.Tensor:
        return self.null_token.view(1, 1, -1).expand(batch, tokens, -1)
