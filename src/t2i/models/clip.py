"""A small CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision"): a ViT image encoder and a causal text transformer, trained so that an image and
its caption land close together in a shared embedding space.

The module is transformers' `CLIPModel` built from a small config, so t2i's own CLIP and real
OpenAI/OpenCLIP weights in transformers format are the same kind of object, and the real CLIP
BPE tokenizer (t2i.models.text.load_tokenizer) encodes its text.

    cfg = CLIPModelConfig()                      # a 64 px ViT, a 3-layer text transformer
    clip = build_clip(cfg)
    loss = contrastive_loss(clip(input_ids=ids, pixel_values=pixels).logits_per_image, truth)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from t2i.config import Depth, Heads, Resolution, Width, between, check_model_size
from t2i.models.sizes import clip_text_params
from t2i.models.text import BOS_ID, CLIP_VOCAB_SIZE, EOS_ID

# OpenAI CLIP's pixel normalisation: t2i's CLIP uses it too, so one preprocessing serves both
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class CLIPModelConfig:
    resolution: Resolution = 64  # image side the ViT sees (shapes renders at it)
    patch_size: Annotated[int, between(1, 1024)] = 8  # 64 px / 8 = 8 x 8 = 64 patch tokens
    vision_width: Width = 64
    vision_layers: Depth = 4
    vision_heads: Heads = 4
    vision_mlp: Annotated[int, between(1, 32768)] = 256
    text_width: Width = 48  # the 49408-token embedding table dominates the file: keep it narrow
    text_layers: Depth = 3
    text_heads: Heads = 4
    text_mlp: Annotated[int, between(1, 32768)] = 192
    max_length: Annotated[int, between(2, 1024)] = 32  # tokens incl. BOS/EOS; shapes captions need under 20
    projection_dim: Width = 64  # the shared embedding space

    def __post_init__(self):
        if self.resolution % self.patch_size:
            raise ValueError(f"model.resolution {self.resolution} must be a multiple of model.patch_size {self.patch_size}")
        for side in ("vision", "text"):
            width, heads = getattr(self, f"{side}_width"), getattr(self, f"{side}_heads")
            if width % heads:
                raise ValueError(f"model.{side}_width {width} must be divisible by model.{side}_heads {heads}")
        check_model_size("CLIP", self.approx_params())

    def approx_params(self) -> int:
        tokens = (self.resolution // self.patch_size) ** 2 + 1
        w = self.vision_width
        vision = self.vision_layers * (4 * w * w + 2 * w * self.vision_mlp) + 3 * self.patch_size ** 2 * w + tokens * w
        text = clip_text_params(self.text_width, self.text_layers, self.text_mlp, self.max_length, CLIP_VOCAB_SIZE)
        return vision + text + self.projection_dim * (self.vision_width + self.text_width)

    def to_hf_config(self) -> CLIPConfig:
        text = {"vocab_size": CLIP_VOCAB_SIZE, "hidden_size": self.text_width, "intermediate_size": self.text_mlp,
                "num_hidden_layers": self.text_layers, "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.max_length, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
                "pad_token_id": EOS_ID, "projection_dim": self.projection_dim}
        vision = {"hidden_size": self.vision_width, "intermediate_size": self.vision_mlp,
                  "num_hidden_layers": self.vision_layers, "num_attention_heads": self.vision_heads,
                  "image_size": self.resolution, "patch_size": self.patch_size, "projection_dim": self.projection_dim}
        return CLIPConfig(text_config=text, vision_config=vision, projection_dim=self.projection_dim)


def build_clip(config: CLIPModelConfig) -> CLIPModel:
    return CLIPModel(config.to_hf_config())


def pixel_values(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, size, size) float, CLIP-normalised; resized (bicubic,
    antialiased) when H or W differ from `size` (a 224 px real CLIP, or a 128 px image)."""
    x = images.permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def contrastive_loss(logits_per_image: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with soft targets.

    logits_per_image: (B, B) scaled similarities, image i against caption j. truth: (B, B) bool,
    caption j is true of image i (the diagonal always). Plain CLIP takes the diagonal as the only
    match; `shapes` has a few thousand distinct scenes, so a batch of 256 holds several identical
    or compatible captions, and counting those as negatives would teach the model to separate
    what cannot be separated."""
    target = truth.float()
    image_loss = torch.sum(-target / target.sum(1, keepdim=True) * F.log_softmax(logits_per_image, dim=1), 1)
    text_loss = torch.sum(-target.T / target.T.sum(1, keepdim=True) * F.log_softmax(logits_per_image.T, dim=1), 1)
    return 0.5 * (image_loss.mean() + text_loss.mean())
