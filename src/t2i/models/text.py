"""Text side of latent diffusion: the real CLIP BPE tokenizer (offline) and a CLIP text model.

The tokenizer is built from the vocab.json / merges.txt shipped in t2i/assets (derived from
OpenAI CLIP's BPE file, see scripts/make_clip_tokenizer.py), so nothing reaches a hub.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

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
    hidden_size: int = 64  # also the UNet's cross_attention_dim
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_length: int = 32  # tokens incl. BOS/EOS; shapes captions need under 20

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


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The CLIP text model's last LayerNorm (transformers 5 may flatten `text_model`)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def text_hidden_states(text_encoder, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """(B, T, D) what the UNet cross-attends to, with the web UI's "Clip skip".

    clip_skip 1 is the last layer's output (after the final LayerNorm, as SD 1.x trained on);
    N > 1 takes the hidden states N layers from the end and passes them through the final
    LayerNorm, as the web UI does (2 = the penultimate layer, NovelAI-style models' setting).
    """
    if clip_skip == 1:
        return text_encoder(ids).last_hidden_state
    layers = text_encoder.config.num_hidden_layers
    if not 1 <= clip_skip <= layers:
        raise ValueError(f"clip skip must be between 1 and {layers} (the text encoder's layers), got {clip_skip}")
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
    return final_layer_norm(text_encoder)(hidden)
