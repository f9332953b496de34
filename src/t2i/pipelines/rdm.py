"""Retrieval-augmented diffusion (RDM) at sampling time, and `t2i rdm build-db`.

A retrieval model (`model.conditioning: retrieval`, t2i.training.ldm_retrieval) cross-attends to
CLIP embeddings. From a prompt, as the RDM paper's text-to-image mode does, the prompt's CLIP
*text* embedding either queries the database (its k nearest image embeddings are the context:
`neighbours`, the default), is the context itself (`text`: CLIP's text and image embeddings
share one space), or both (`both`: the text embedding, then its k - 1 nearest images).

    retriever = load_retriever(model, folder)                 # the model folder's own database
    cond, uncond = retrieval_conditioning(model, retriever, ["a red circle"], "neighbours")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.checkpoints.retrieval_db import CLIPEmbedder, RetrievalDatabase, load_database, load_embedder, save_database
from t2i.data.shapes import ShapesDataset
from t2i.errors import ModelLoadError, ParamError
from t2i.training.ldm import DataConfig
from t2i.training.ldm_retrieval import DATABASE_IN_MODEL, data_source

MODES = ("neighbours", "text", "both")


@dataclass
class Retriever:
    database: RetrievalDatabase
    embedder: CLIPEmbedder


def load_retriever(model, folder: str | Path | None = None, database: str | Path | None = None) -> Retriever:
    """The database (`database`, else the model folder's own copy) and the CLIP it was built with,
    checked against the model's CLIP width."""
    if database is None and folder is None:
        raise ParamError("a retrieval model needs a database: give --database DB")
    path = Path(database) if database is not None else Path(folder) / DATABASE_IN_MODEL
    db = load_database(path)
    width = model.config.retrieval_dim
    if db.dim != width:
        raise ModelLoadError(f"{path} holds {db.dim}-wide CLIP embeddings but this retrieval model was trained on "
                             f"{width}-wide ones; use a database built with the model's CLIP")
    embedder = load_embedder(db.clip)
    if embedder.dim != db.dim:
        raise ModelLoadError(f"{path} says it was built with CLIP {db.clip}, whose embeddings are {embedder.dim} "
                             f"wide, not {db.dim}: the CLIP changed; rebuild the database")
    return Retriever(db, embedder)


@torch.no_grad()
def retrieval_embeddings(retriever: Retriever, prompts: list[str], mode: str, k: int) -> torch.Tensor:
    """(B, T, E) CLIP embeddings a retrieval model attends to for each prompt (see MODES)."""
    if mode not in MODES:
        raise ParamError(f"retrieval mode must be one of {', '.join(MODES)}, got {mode!r}")
    text = retriever.embedder.embed_texts(prompts)  # (B, E)
    if mode == "text":
        return text.unsqueeze(1)
    want = k if mode == "neighbours" else k - 1
    if want == 0:
        return text.unsqueeze(1)
    idx = retriever.database.search(text, want)[1]  # (B, want)
    found = retriever.database.embeddings[idx]
    return found if mode == "neighbours" else torch.cat([text.unsqueeze(1), found], dim=1)


def retrieval_conditioning(model, retriever: Retriever, prompts: list[str], mode: str = "neighbours"):
    """(cond, uncond) contexts for `prompts`; uncond: the null tokens, as many."""
    if any(not p.strip() for p in prompts):
        raise ParamError("a retrieval model samples from a prompt: give --prompt \"a red circle\"")
    emb = retrieval_embeddings(retriever, prompts, mode, model.config.retrieval_k)
    return model.retrieval_context(emb), model.retrieval_context(None, len(prompts), emb.shape[1])


def build_database(clip: str | Path | None, data: str, out: str | Path, size: int = 20_000, seed: int = 0,
                   resolution: int = 64, p_two: float = 0.4, p_short: float = 0.3) -> RetrievalDatabase:
    """`t2i rdm build-db`: embed `shapes` (the first `size` images of seed `seed`, drawn at
    `resolution`: as an LDM run with that data config loads them) or an image folder."""
    from t2i.data.images import IMAGE_SUFFIXES, load_folder, render_shapes

    embedder = load_embedder(clip)
    if data == "shapes":
        cfg = DataConfig(name="shapes", size=size, seed=seed, p_two=p_two, p_short=p_short)
        source = render_shapes(ShapesDataset(size, seed, resolution, p_two, p_short))
        ids = [f"shapes:{seed}:{i}" for i in range(size)]
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise ParamError(f"--data must be `shapes` or an image folder; {folder} is neither")
        cfg = DataConfig(name="folder", folder=str(folder))
        source = load_folder(folder, resolution)
        # the same sorted walk as load_folder, so id i names image i
        ids = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    db = RetrievalDatabase.build(embedder, source.images, list(source.captions), ids, data_source(cfg, resolution))
    save_database(db, out)
    return db
