"""Textual inversion (Gal et al. 2022): learn N token vectors for a new word, NAME, while the
whole model stays frozen. Captions name the concept by writing NAME; each NAME becomes N
placeholder tokens whose embeddings are the learned vectors (SDXL: one set per text encoder).

Written as `NAME.safetensors` in the web UI's format (`emb_params` (N, D), or `clip_l` and
`clip_g` for SDXL) — t2i, the web UI and diffusers' load_textual_inversion read it — and in
diffusers' own format, `diffusers/learned_embeds.safetensors` ({NAME: (N, D)}; SDXL's second
encoder in `learned_embeds_2.safetensors`, as diffusers' SDXL script writes it).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn


class LearnedTokens(nn.Module):
    """The trained vectors: one (N, D) parameter per text encoder."""

    def __init__(self, init: list[Tensor]):
        super().__init__()
        self.vectors = nn.ParameterList([nn.Parameter(v.detach().float().clone()) for v in init])


def init_vectors(model, word: str, count: int) -> list[Tensor]:
    """(count, D) per text encoder: the embeddings of `word`'s tokens, repeated to fill."""
    encoders = [model.text_encoder] + ([model.text_encoder_2] if getattr(model, "text_encoder_2", None) else [])
    ids = model.tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"--init-word {word!r} has no tokens; give a word such as 'dog' or '*'")
    out = []
    for encoder in encoders:
        table = encoder.get_input_embeddings().weight.detach()
        out.append(torch.stack([table[ids[i % len(ids)]] for i in range(count)]))
    return out


def mentions(caption: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", caption, re.IGNORECASE) is not None


def token_ids(tokenizer, caption: str, name: str, count: int) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids of the caption with each NAME replaced by `count` placeholders, padded to the
    tokenizer's length; [(position, vector index)] of the placeholders)."""
    pieces = re.split(rf"(?<!\w){re.escape(name)}(?!\w)", caption, flags=re.IGNORECASE)
    ids, places = [tokenizer.bos_token_id], []
    for k, piece in enumerate(pieces):
        ids += tokenizer(piece, add_special_tokens=False).input_ids if piece.strip() else []
        if k < len(pieces) - 1:
            places += [(len(ids) + j, j) for j in range(count)]
            ids += [0] * count  # placeholder ids: the hook writes the vectors there
    length = tokenizer.model_max_length
    if places and places[-1][0] >= length - 1:
        raise ValueError(f"caption {caption!r} is too long: {name} falls past the text encoder's {length} tokens")
    ids = ids[:length - 1] + [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return ids + [pad] * (length - len(ids)), places


def caption_tokens(model, captions: list[str], name: str, count: int) -> tuple[list[Tensor], list[list]]:
    """Per text encoder (C, L) ids of every caption, and each caption's placeholder positions."""
    tokenizers = [model.tokenizer] + ([model.tokenizer_2] if getattr(model, "tokenizer_2", None) else [])
    ids, places = [], None
    for tokenizer in tokenizers:
        rows = [token_ids(tokenizer, c, name, count) for c in captions]
        ids.append(torch.tensor([r[0] for r in rows]))
        places = places or [r[1] for r in rows]
    return ids, places


def positions(places: list[list], rows: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(batch rows, token columns, vector indices) for a batch made of captions `rows`."""
    out = [(b, col, j) for b, caption in enumerate(rows) for col, j in places[caption]]
    if not out:
        return (torch.zeros(0, dtype=torch.long),) * 3
    return tuple(torch.tensor(x) for x in zip(*out))


def embedding(name: str, tokens: LearnedTokens):
    """The learned vectors as an embedding t2i's prompt encoder places (for sample grids)."""
    from t2i.extra_networks.embeddings import Embedding

    vectors = [v.detach().float().cpu().clone() for v in tokens.vectors]
    return Embedding(name, {"": vectors[0]} if len(vectors) == 1 else {"clip_l": vectors[0], "clip_g": vectors[1]})


def save_embedding(tokens: LearnedTokens, outdir: Path, name: str, metadata: dict[str, str]) -> Path:
    from t2i.checkpoints.atomic_write import write_state_dict

    vectors = [v.detach().float().cpu().contiguous() for v in tokens.vectors]
    webui = {"emb_params": vectors[0]} if len(vectors) == 1 else {"clip_l": vectors[0], "clip_g": vectors[1]}
    path = outdir / f"{name}.safetensors"
    write_state_dict(path, webui, {"format": "pt", "name": name, **metadata})
    (outdir / "diffusers").mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(vectors):
        suffix = "" if i == 0 else f"_{i + 1}"
        write_state_dict(outdir / "diffusers" / f"learned_embeds{suffix}.safetensors", {name: v}, {"format": "pt"})
    return path
