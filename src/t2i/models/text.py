"""Text side of latent diffusion: the real CLIP BPE tokenizer (offline) and a CLIP text model.

The tokenizer is built from the vocab.json / merges.txt shipped in t2i/assets (derived from
OpenAI CLIP's BPE file, see scripts/make_clip_tokenizer.py), so nothing reaches a hub.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from t2i.config import Depth, Heads, Width, between

# What the UNet sees of the encoder (clip skip) is the prompt encoder's, for any family: its home
# is t2i.diffusion.text_states; the names stay importable from here.
from t2i.diffusion.text_states import final_layer_norm, text_hidden_states  # noqa: F401
from t2i.models.sizes import clip_text_params

CLIP_VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407


def bundled_tokenizer_dir() -> Path:
    return Path(str(resources.files("t2i") / "assets" / "clip_tokenizer"))


def load_tokenizer(directory: str | Path | None = None, max_length: int = 77) -> CLIPTokenizer:
    """CLIP tokenizer from a folder holding vocab.json and merges.txt (the bundled one by default).

    transformers 5 ignores `vocab_file=`/`merges_file=` keyword paths (it silently builds a
    3-token vocabulary), so the files are read here and passed as data.
    """
    import json

    folder = Path(directory) if directory else bundled_tokenizer_dir()
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    for path in (vocab_path, merges_path):
        if not path.is_file():
            raise FileNotFoundError(f"CLIP tokenizer file {path} is missing; expected vocab.json and merges.txt in {folder}")
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merge_lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in merge_lines if line and not line.startswith("#version")]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer built with {len(tokenizer)} tokens, expected {len(vocab)}")
    return tokenizer


@dataclass
class TextEncoderConfig:
    hidden_size: Width = 64  # also the UNet's cross_attention_dim
    num_layers: Depth = 3
    num_heads: Heads = 4
    intermediate_size: Annotated[int, between(1, 32768)] = 256
    max_length: Annotated[int, between(2, 1024)] = 32  # tokens incl. BOS/EOS; shapes captions need under 20

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"text.hidden_size {self.hidden_size} must be divisible by "
                             f"text.num_heads {self.num_heads}")

    def approx_params(self) -> int:
        return clip_text_params(self.hidden_size, self.num_layers, self.intermediate_size, self.max_length,
                                CLIP_VOCAB_SIZE)

    def to_clip_config(self) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.max_length,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
            projection_dim=self.hidden_size,
        )


def build_text_encoder(config: TextEncoderConfig) -> CLIPTextModel:
    return CLIPTextModel(config.to_clip_config())


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, max_length) ids, padded with EOS and truncated, as Stable Diffusion does."""
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
