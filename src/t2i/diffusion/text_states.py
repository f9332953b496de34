"""What a CLIP-style text encoder hands the UNet, for any model family: hidden states with the web
UI's "Clip skip", and textual-inversion vectors placed at their tokens.

The prompt encoder (t2i.diffusion.conditioning) works on this interface — `text_encoder(ids)`
with `last_hidden_state` / `hidden_states`, `config.num_hidden_layers`, `get_input_embeddings()`
— not on a model family or on embedding files: the files are read in t2i.extra_networks.embeddings,
and whatever is passed in as an embedding only needs a `name` and `for_width(width)` giving its
(N, width) vectors. Nothing here imports transformers.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor

PLACEHOLDER_ID = 0  # the token id written where an embedding's vectors go (the web UI uses 0 too)


# --------------------------------------------------------------------------- hidden states


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The CLIP text model's last LayerNorm (transformers 5 may flatten `text_model`)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def text_hidden_states(text_encoder, ids: Tensor, clip_skip: int = 1) -> Tensor:
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


# --------------------------------------------------------------------------- textual inversion


class TokenVectors(Protocol):
    """A textual-inversion embedding as the prompt encoder needs it (t2i.extra_networks.embeddings.Embedding)."""

    name: str

    def for_width(self, width: int) -> Tensor | None: ...


class EmbeddingMatcher:
    """Finds embeddings' names in token ids: an embedding matches where the ids of its name,
    tokenized alone, appear (longest name first, as the web UI matches)."""

    placeholder = PLACEHOLDER_ID

    def __init__(self, embeddings: list[TokenVectors], tokenizer):
        self.by_name = {e.name: e for e in embeddings}
        ids = tokenizer([e.name for e in embeddings], add_special_tokens=False).input_ids if embeddings else []
        self._by_first: dict[int, list[tuple[tuple[int, ...], TokenVectors]]] = {}
        for embedding, name_ids in zip(embeddings, ids):
            if name_ids:
                self._by_first.setdefault(name_ids[0], []).append((tuple(name_ids), embedding))
        for candidates in self._by_first.values():
            candidates.sort(key=lambda c: -len(c[0]))

    def match(self, tokens: list[int], i: int) -> tuple[TokenVectors, int] | None:
        """(embedding, number of name tokens) starting at tokens[i], or None."""
        for name_ids, embedding in self._by_first.get(tokens[i], ()):
            if tuple(tokens[i:i + len(name_ids)]) == name_ids:
                return embedding, len(name_ids)
        return None


@contextmanager
def placing_embeddings(text_encoder, chunks, embeddings: Mapping[str, TokenVectors]) -> Iterator[None]:
    """While inside, the text encoder's token-embedding layer outputs each chunk's embedding
    vectors at the chunk's `fixes` positions (chunks: the TokenChunks of one encoder call, in
    batch order). A forward hook, removed on exit: no change to the encoder's code or weights."""
    fixes = [(row, offset, name) for row, chunk in enumerate(chunks) for offset, name in getattr(chunk, "fixes", ())]
    if not fixes:
        yield
        return
    table = text_encoder.get_input_embeddings()
    width = table.embedding_dim
    placed = []
    for row, offset, name in fixes:
        vectors = embeddings[name].for_width(width)
        if vectors is None:
            raise ValueError(f"embedding {name!r} has no vectors of width {width} for this text encoder")
        placed.append((row, offset, vectors))

    def hook(module, args, output: Tensor) -> Tensor:
        out = output.clone()  # (n, L, D)
        for row, offset, vectors in placed:
            out[row, offset:offset + vectors.shape[0]] = vectors.to(out.device, out.dtype)
        return out

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
