"""The LDM recipe's retrieval conditioning (`model.conditioning: retrieval`; the Latent Diffusion
README's retrieval-augmented diffusion, Blattmann et al. 2022, "Semi-Parametric Neural Image
Synthesis").

Each training image cross-attends to the CLIP image embeddings of its k nearest neighbours in a
retrieval database (t2i.checkpoints.retrieval_db, built by `t2i rdm build-db`), the image itself
left out: the model learns to draw an image *like* its neighbours, not to copy one. When the
database holds this run's own training images (same data, same order: its `source` says so),
the neighbours are found from the stored embeddings and each image excludes its own index;
for another database the images are embedded with the database's CLIP and an entry that is the
image itself (cosine >= SELF_SIMILARITY) is left out. Neighbours are found once, before training.
Training drops the condition (all k tokens -> the learned null token) for `caption_dropout` of
the images, for classifier-free guidance. The database is copied into the model folder, so a
model samples on its own (`t2i sample RUN --prompt ...`, t2i.pipelines.rdm).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.checkpoints.retrieval_db import CLIPEmbedder, RetrievalDatabase, load_database, load_embedder, save_database
from t2i.errors import ConfigError

SELF_SIMILARITY = 0.999  # float16 storage keeps a unit vector's self-similarity within ~1e-3 of 1
DATABASE_IN_MODEL = Path("retrieval") / "database.safetensors"  # inside a model folder
SAMPLE_PROMPTS = ("a red circle", "a blue square on a white background")


def data_source(data, resolution: int) -> str:
    """What a DataConfig's images are, in a form a database records (`t2i rdm build-db` writes the
    same string for the same data, so a run recognises a database of its own images)."""
    if data.name == "folder":
        return f"folder {Path(data.folder).resolve()} r{resolution}"
    return f"shapes size={data.size} seed={data.seed} p_two={data.p_two} p_short={data.p_short} r{resolution}"


def prepare_retrieval(cfg) -> RetrievalDatabase:
    """Check an LDMTrainConfig's retrieval settings before anything trains; sets model.retrieval_dim
    from the database (recorded in config.yaml and the model's config)."""
    if cfg.retrieval_database is None:
        raise ConfigError("model.conditioning: retrieval needs retrieval_database: a database built with "
                          "`t2i rdm build-db --data shapes --out DB`")
    db = load_database(cfg.retrieval_database)
    if cfg.model.retrieval_dim not in (0, db.dim):
        raise ConfigError(f"model.retrieval_dim is {cfg.model.retrieval_dim} but {cfg.retrieval_database} holds "
                          f"{db.dim}-wide CLIP embeddings; leave retrieval_dim out (the recipe reads it)")
    if cfg.model.retrieval_k >= len(db):
        raise ConfigError(f"model.retrieval_k {cfg.model.retrieval_k} needs a database of more than that many "
                          f"images; {cfg.retrieval_database} has {len(db)}")
    cfg.model.retrieval_dim = db.dim
    return db


def training_neighbours(db: RetrievalDatabase, images: torch.Tensor, source: str, k: int,
                        embedder: CLIPEmbedder | None = None) -> torch.Tensor:
    """(N, k) database indices of each training image's neighbours, the image itself excluded."""
    if db.source == source and len(db) == len(images):
        queries, exclude = db.embeddings, torch.arange(len(db))
    else:
        embedder = embedder or load_embedder(db.clip)
        queries = embedder.embed_images(images)
        db.check_queries(queries, f"the embeddings of CLIP {embedder.source}")
        sims, idx = db.search(queries, 1)
        exclude = torch.where(sims[:, 0] >= SELF_SIMILARITY, idx[:, 0], torch.full_like(idx[:, 0], -1))
    return db.search(queries, k, exclude=exclude)[1]


@dataclass
class RetrievalConditions:
    embeddings: torch.Tensor  # (M, E) the database's
    neighbours: torch.Tensor  # (N, k) per training image


def retrieval_context(conditions: RetrievalConditions, dropout: float):
    """`context(modules, idx, generator) -> (B, k, D)`, like t2i.training.ldm_conditions.context_fn."""
    def context(modules, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        drop = torch.rand(len(idx), generator=generator) < dropout
        conditioner = modules["conditioner"]
        tokens = conditioner(conditions.embeddings[conditions.neighbours[idx]])
        null = conditioner.null(len(idx), tokens.shape[1]).to(tokens.dtype)
        return torch.where(drop.to(tokens.device).view(-1, 1, 1), null, tokens)

    return context


def build_retrieval_context(cfg, db: RetrievalDatabase, images: torch.Tensor):
    neighbours = training_neighbours(db, images, data_source(cfg.data, cfg.model.resolution), cfg.model.retrieval_k)
    print(f"[ldm] retrieval: {cfg.model.retrieval_k} neighbours per image from {len(db)} database entries "
          f"({cfg.retrieval_database})", flush=True)
    return retrieval_context(RetrievalConditions(db.embeddings, neighbours), cfg.unet.caption_dropout)


@torch.no_grad()
def retrieval_sample_rows(model, db: RetrievalDatabase, prompts: tuple[str, ...] = ()) -> list:
    """(cond, uncond) rows of the training sample grid: neighbours retrieved by each prompt's
    CLIP text embedding."""
    embedder = load_embedder(db.clip)
    k = model.config.retrieval_k
    queries = embedder.embed_texts(list(prompts or SAMPLE_PROMPTS))
    idx = db.search(queries, k)[1]
    return [(model.retrieval_context(db.embeddings[row].unsqueeze(0)), model.retrieval_context(None, 1, k))
            for row in idx]


def copy_database_into(db: RetrievalDatabase, model_folder: str | Path) -> Path:
    """The database beside the weights, so the model folder samples on its own."""
    return save_database(db, Path(model_folder) / DATABASE_IN_MODEL)
