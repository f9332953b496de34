"""Prompt text → text-encoder inputs: 75-token chunks with BOS, EOS, padding and per-token weights.

The web UI's (AUTOMATIC1111) tokenisation of long prompts, used by t2i.diffusion.conditioning:
tokens are cut into chunks of `model_max_length - 2` (75 for SD), each encoded with BOS, EOS and
padding; `BREAK` closes a chunk; a chunk that fills up with a comma within its last
`COMMA_BACKTRACK` tokens moves the words after the comma to the next chunk. A textual-inversion
embedding's name becomes its N vectors' placeholder tokens (`TokenChunk.fixes` records where),
which never straddle two chunks. `apply_weights` applies the `(text:1.3)` weights to the encoded
chunks ("Original" emphasis).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from t2i.prompts import BREAK_WEIGHT

COMMA_BACKTRACK = 20  # the web UI's default "comma padding backtrack", in tokens


@dataclass(frozen=True)
class TokenChunk:
    """One text encoder input: BOS, up to `chunk_length` tokens, EOS, padding."""

    ids: tuple[int, ...]  # (chunk_length + 2,)
    weights: tuple[float, ...]  # (chunk_length + 2,) 1.0 at BOS, EOS and padding
    # textual-inversion embeddings: (index in ids of the first of its vectors, embedding name)
    fixes: tuple[tuple[int, str], ...] = ()


def chunk_length_for(tokenizer, text_encoder=None) -> int:
    """Tokens per chunk without BOS/EOS: model_max_length − 2, capped by the encoder's positions."""
    limit = tokenizer.model_max_length
    positions = getattr(getattr(text_encoder, "config", None), "max_position_embeddings", None)
    if positions is not None and (limit is None or limit > positions):
        limit = positions  # tokenizers saved without a limit report a huge model_max_length
    if limit is None or limit < 3:
        raise ValueError(f"the tokenizer's model_max_length is {limit}; set it to the text encoder's "
                         f"context length (77 for Stable Diffusion)")
    return int(limit) - 2


def chunk_tokens(tokenizer, pieces: list[tuple[str, float]], *, comma_backtrack: int = COMMA_BACKTRACK,
                 chunk_length: int | None = None, embeddings=None) -> list[TokenChunk]:
    """Tokenize `parse_attention` output into chunks of `chunk_length` tokens (default
    model_max_length − 2), each with BOS, EOS and padding; ("BREAK", -1.0) closes a chunk.

    Always at least one chunk (an empty prompt is BOS, EOS, padding). The layout equals the
    tokenizer's own `padding="max_length"` output for a prompt that fits in one chunk.
    `embeddings` (an EmbeddingMatcher): a textual-inversion name becomes its N vectors'
    placeholders, which count toward the chunk and never straddle two chunks (as in the web UI).
    """
    size = chunk_length or chunk_length_for(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    # verbose=False: pieces longer than model_max_length are expected here, not an error.
    piece_ids = tokenizer([text for text, _ in pieces], add_special_tokens=False, truncation=False,
                          verbose=False).input_ids
    chunks: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, str]] = []  # (index in `ids`, embedding name) of the current chunk
    last_comma = -1  # index in `ids` of the last comma of the current chunk

    def close() -> None:
        nonlocal last_comma
        n_pad = size - len(ids)
        chunks.append(TokenChunk(tuple([bos, *ids, eos] + [pad] * n_pad), tuple([1.0, *weights, 1.0] + [1.0] * n_pad),
                                 tuple((1 + at, name) for at, name in fixes)))  # 1 +: after BOS
        ids.clear()
        weights.clear()
        fixes.clear()
        last_comma = -1

    for (text, weight), tokens in zip(pieces, piece_ids):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            close()
            continue
        i = 0
        while i < len(tokens):
            token = tokens[i]
            found = embeddings.match(tokens, i) if embeddings is not None else None
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == size and last_comma != -1 and len(ids) - last_comma <= comma_backtrack:
                # A full chunk with a comma near its end: move the words after the comma on, so
                # that a phrase is not cut in two between chunks.
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                moved_fixes = [(at - cut, name) for at, name in fixes if at >= cut]
                del ids[cut:], weights[cut:]
                fixes[:] = [(at, name) for at, name in fixes if at < cut]
                close()
                ids.extend(moved_ids)
                weights.extend(moved_weights)
                fixes.extend(moved_fixes)
            if len(ids) == size:
                close()
            if found is None:
                ids.append(token)
                weights.append(weight)
                i += 1
                continue
            embedding, name_tokens = found
            if embedding.count > size:
                raise ValueError(f"embedding {embedding.name!r} has {embedding.count} vectors, more than the {size} "
                                 f"tokens of a prompt chunk; it cannot be used with this model")
            if len(ids) + embedding.count > size:
                close()
            fixes.append((len(ids), embedding.name))
            ids.extend([embeddings.placeholder] * embedding.count)
            weights.extend([weight] * embedding.count)
            i += name_tokens
    if ids or not chunks:
        close()
    return chunks


def apply_weights(z: Tensor, weights: Tensor) -> Tensor:
    """(n, L, D) hidden states × (n, L) token weights, each chunk rescaled to its old mean."""
    z32 = z.float()
    before = z32.mean(dim=(1, 2), keepdim=True)
    weighted = z32 * weights.to(z.device, torch.float32)[..., None]
    after = weighted.mean(dim=(1, 2), keepdim=True)
    return (weighted * (before / after)).to(z.dtype)
