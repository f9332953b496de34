"""The retrieval database of retrieval-augmented diffusion (Blattmann et al. 2022, "Semi-Parametric
Neural Image Synthesis", the Latent Diffusion README's RDM): L2-normalised CLIP image embeddings
of a set of images, their captions and ids, and exact nearest-neighbour search by cosine
similarity (the embeddings are unit length, so cosine = dot product).

    embedder = load_embedder("default")                       # t2i's bundled CLIP, or a CLIPModel folder
    db = RetrievalDatabase.build(embedder, images, captions, ids, source="shapes ...")
    save_database(db, "runs/rdm/shapes.db.safetensors")
    sims, idx = load_database(path).search(embedder.embed_texts(["a red circle"]), k=4)

On disk: one safetensors file, `embeddings` (N, D) float16, and in its metadata the captions, the
ids, the CLIP it was built with and its width D (a query from another CLIP is refused: its
space is not this one). Search is a chunked matmul + top-k in torch; faiss (`IndexFlatIP`, also
exact) is used when it is importable — it is optional and never a dependency.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from t2i.atomic import atomic_path
from t2i.checkpoints.clip_folder import bundled_clip_dir, load_clip_folder
from t2i.errors import ModelLoadError, ParamError
from t2i.models.clip import pixel_values
from t2i.models.text import load_tokenizer

FORMAT = "t2i-retrieval-db"
VERSION = "1"
SEARCH_CHUNK = 4096  # queries per matmul: bounds the (chunk, N) similarity block


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is the projected embedding; 4.x a tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class CLIPEmbedder:
    """Unit-length CLIP image and text embeddings in the shared space (projection_dim wide)."""

    model: object  # transformers CLIPModel, eval mode, frozen
    tokenizer: object
    source: str  # "default" (the bundled CLIP) or the folder it came from
    batch_size: int = 256

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, D) float32 unit vectors (resized to the CLIP's input size)."""
        out = [_features(self.model.get_image_features(
            pixel_values=pixel_values(images[i:i + self.batch_size], self.image_size))).float()
            for i in range(0, len(images), self.batch_size)]
        return _unit(torch.cat(out)) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(N, D) float32 unit vectors of the texts."""
        ids = self.tokenizer(list(texts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return _unit(_features(self.model.get_text_features(input_ids=ids)).float())


def load_embedder(clip: str | Path | None = None) -> CLIPEmbedder:
    """A CLIP (transformers CLIPModel folder, a `t2i train` CLIP run folder holding clip/, or
    None / "default" for t2i's bundled CLIP) as an embedder."""
    source = "default" if clip in (None, "default") else str(Path(clip).resolve())
    folder = bundled_clip_dir() if source == "default" else Path(source)
    if not (folder / "config.json").is_file() and (folder / "clip" / "config.json").is_file():
        folder = folder / "clip"  # a run folder of configs/shapes-clip.yaml
    model, tokenizer_dir = load_clip_folder(folder)
    tokenizer = load_tokenizer(tokenizer_dir, max_length=int(model.config.text_config.max_position_embeddings))
    return CLIPEmbedder(model, tokenizer, source)


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _topk(keys: torch.Tensor, queries: torch.Tensor, k: int,
          use_faiss: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner products: faiss when importable (or `use_faiss`), else torch in chunks of
    queries. Both are exact, so they agree but for the order of equal scores."""
    if faiss_available() if use_faiss is None else use_faiss:
        import faiss  # optional accelerator: an exact flat inner-product index

        index = faiss.IndexFlatIP(keys.shape[1])
        index.add(keys.numpy())
        sims, idx = index.search(queries.numpy(), k)
        return torch.from_numpy(sims), torch.from_numpy(idx).long()
    parts = [(queries[i:i + SEARCH_CHUNK] @ keys.T).topk(k, dim=1) for i in range(0, len(queries), SEARCH_CHUNK)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


@dataclass
class RetrievalDatabase:
    embeddings: torch.Tensor  # (N, D) float32 unit vectors (float16 on disk)
    captions: list[str]
    ids: list[str]
    clip: str  # the CLIP that embedded the images: "default" or its folder
    source: str  # what the images were (e.g. "shapes size=20000 seed=0 ..."): a run over the same data
    # excludes each image itself by index

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def build(cls, embedder: CLIPEmbedder, images: torch.Tensor, captions: list[str], ids: list[str],
              source: str) -> RetrievalDatabase:
        if not len(images) == len(captions) == len(ids):
            raise ValueError(f"{len(images)} images, {len(captions)} captions and {len(ids)} ids: one each per image")
        if len(images) == 0:
            raise ParamError("no images to build a retrieval database from")
        # stored as float16: round now, so a fresh database searches exactly like a reloaded one
        emb = embedder.embed_images(images).half().float()
        return cls(emb, list(captions), list(ids), embedder.source, source)

    def check_queries(self, queries: torch.Tensor, what: str = "the query embeddings") -> None:
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ModelLoadError(f"{what} are {tuple(queries.shape)[-1:]} wide but this retrieval database holds "
                                 f"{self.dim}-wide CLIP embeddings (built with CLIP {self.clip}); rebuild it with "
                                 f"`t2i rdm build-db --clip` naming the same CLIP")

    def search(self, queries: torch.Tensor, k: int, exclude: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarities and indices (Q, k) of the k nearest entries of each query (Q, D),
        best first. `exclude` (Q,): a database index to leave out per query (-1: none), e.g.
        the query image itself when the database holds the training images."""
        self.check_queries(queries)
        extra = 0 if exclude is None else 1
        if not 1 <= k <= len(self) - extra:
            raise ParamError(f"cannot retrieve {k} neighbours from a database of {len(self)} images"
                             f"{' (one left out: the query itself)' if extra else ''}")
        sims, idx = _topk(self.embeddings, _unit(queries.float()), k + extra)
        if exclude is not None:
            dropped = (idx == exclude.view(-1, 1)).to(torch.int8)
            order = torch.argsort(dropped, dim=1, stable=True)[:, :k]  # kept entries first, in rank order
            sims, idx = sims.gather(1, order), idx.gather(1, order)
        return sims, idx


def save_database(db: RetrievalDatabase, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "clip": db.clip, "clip_width": str(db.dim), "source": db.source,
            "captions": json.dumps(db.captions), "ids": json.dumps(db.ids)}
    with atomic_path(path) as tmp:
        save_file({"embeddings": db.embeddings.half().contiguous()}, str(tmp), metadata=meta)
    return path


def load_database(path: str | Path) -> RetrievalDatabase:
    """A database written by `save_database`; a clear ModelLoadError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"retrieval database {path} does not exist; build one with "
                             f"`t2i rdm build-db --data shapes --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ModelLoadError(f"{path} is not a t2i retrieval database (build one with `t2i rdm build-db`)")
            emb = f.get_tensor("embeddings").float()
        captions, ids = json.loads(meta["captions"]), json.loads(meta["ids"])
        width = int(meta["clip_width"])
    except ModelLoadError:
        raise
    except Exception as err:  # safetensors raises several kinds on a damaged header or tensor
        raise ModelLoadError(f"{path} is not a readable retrieval database ({err}); rebuild it with "
                             f"`t2i rdm build-db`") from err
    if emb.ndim != 2 or emb.shape[1] != width or not len(emb) == len(captions) == len(ids) \
            or not all(isinstance(s, str) for s in captions + ids) or not torch.isfinite(emb).all():
        raise ModelLoadError(f"{path}: the embeddings, captions and ids do not agree; the file is damaged, "
                             f"rebuild it with `t2i rdm build-db`")
    return RetrievalDatabase(emb, captions, ids, meta.get("clip", "default"),
                             meta.get("source", ""))
