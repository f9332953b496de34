"""A CLIP as a scorer: unit-length image and text embeddings and their scaled similarities.

    scorer = load_scorer()                      # t2i's bundled CLIP (trained on `shapes`)
    scorer = load_scorer("path/to/clip-vit-b32") # a user's transformers CLIPModel folder
    logits = scorer.logits(scorer.embed_images(images), scorer.embed_texts(texts))   # (N, M)

The image side follows CLIP's preprocessing: centre-crop to a square, resize to the model's
input size, normalise with CLIP's mean and std (t2i.models.clip.pixel_values).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.checkpoints.clip_folder import bundled_clip_dir, load_clip_folder
from t2i.data.images import center_crop_resize
from t2i.models.clip import pixel_values
from t2i.models.text import load_tokenizer


@dataclass
class CLIPScorer:
    model: object  # transformers CLIPModel, eval mode
    tokenizer: object
    name: str  # the folder it came from, for messages and reports
    batch_size: int = 64
    _text_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def scale(self) -> float:
        """CLIP's learned temperature: logits = scale * cosine similarity."""
        return float(self.model.logit_scale.exp().clamp(max=100))

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit-length image embeddings."""
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [np.asarray(center_crop_resize(im.convert("RGB"), self.image_size)) for im in images[start:start + self.batch_size]]
            pixels = pixel_values(torch.from_numpy(np.stack(batch)), self.image_size)
            out.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return _unit(torch.cat(out))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit-length text embeddings (cached per text: candidate lists repeat)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        for start in range(0, len(missing), 4 * self.batch_size):
            chunk = missing[start:start + 4 * self.batch_size]
            ids = self.tokenizer(chunk, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
            feats = _unit(_features(self.model.get_text_features(input_ids=ids)))
            self._text_cache.update(zip(chunk, feats))
        return torch.stack([self._text_cache[t] for t in texts]) if texts else torch.zeros(0, 1)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(N, M) scaled similarities, image i against text j."""
        return self.scale * image_emb @ text_emb.T

    def similarity(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        """(N,) cosine similarity of image i with text i."""
        return (self.embed_images(images) * self.embed_texts(texts)).sum(-1)


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def load_scorer(folder: str | Path | None = None, batch_size: int = 64) -> CLIPScorer:
    """The CLIP in `folder` (a transformers CLIPModel folder, or a `t2i train` run folder holding
    one in clip/), or t2i's bundled CLIP when None."""
    folder = Path(folder) if folder else bundled_clip_dir()
    if not (folder / "config.json").is_file() and (folder / "clip" / "config.json").is_file():
        folder = folder / "clip"  # a run folder of configs/shapes-clip.yaml
    model, tokenizer_dir = load_clip_folder(folder)
    max_length = int(model.config.text_config.max_position_embeddings)
    tokenizer = load_tokenizer(tokenizer_dir, max_length=max_length)
    return CLIPScorer(model, tokenizer, str(folder), batch_size)
