"""Interrogate: a caption for each image, by ranking text candidates with a CLIP.

Two ways, as in the web UI's CLIP interrogator:
- the `shapes` grammar (default): every full caption of the grammar is scored and each attribute
  is read from its marginal (t2i.evaluate.clip_captions.rank_shapes); with t2i's bundled CLIP,
  or any CLIP that knows the words;
- vocabularies (`vocabularies=[file, ...]`, a user's CLIP): each file is a category, one term a
  line; its `top` best terms (the web UI's `name.topN.txt` rule: N from the file name, else 1)
  joined with ", ", as the web UI appends them to its caption.

    results = interrogate(images)                          # the bundled CLIP, shapes grammar
    results[0].caption, results[0].scores_text()
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from t2i.errors import ParamError
from t2i.evaluate.clip_captions import rank_shapes, rank_vocabulary

MAX_VOCABULARY_TERMS = 200_000  # a category list bigger than this is not a vocabulary


@dataclass
class Interrogation:
    caption: str
    scores: list[tuple[str, str, float]] = field(default_factory=list)  # (attribute or category, value, score)

    def scores_text(self) -> str:
        return ", ".join(f"{name}={value}:{score:.3f}" for name, value, score in self.scores)


@dataclass
class Vocabulary:
    name: str  # the category: the file's stem without its .topN part
    terms: list[str]
    top: int


def read_vocabulary(path: str | Path, top: int | None = None) -> Vocabulary:
    """A category file: one term a line (blank lines and surrounding spaces dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"vocabulary file {path} does not exist; give a text file with one term a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ParamError(f"cannot read vocabulary file {path}: {err}") from err
    terms = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not terms:
        raise ParamError(f"vocabulary file {path} has no terms; put one term on each line")
    if len(terms) > MAX_VOCABULARY_TERMS:
        raise ParamError(f"vocabulary file {path} has {len(terms):,} terms; at most {MAX_VOCABULARY_TERMS:,}")
    match = re.search(r"\.top(\d+)$", path.stem)
    if top is None:
        top = int(match.group(1)) if match else 1
    if top < 1:
        raise ParamError(f"the number of terms to take from a vocabulary must be at least 1, got {top}")
    name = path.stem[:match.start()] if match else path.stem
    return Vocabulary(name, terms, top)


def load_clip(clip: str | Path | None = None):
    """The scorer of a CLIP folder (None: t2i's bundled CLIP)."""
    from t2i.evaluate.clip_scorer import load_scorer

    return load_scorer(clip)


class Interrogator:
    """A CLIP loaded on first use and shared by a server's requests (the API route and the web UI's
    button): one ranking at a time, because the scorer's text-embedding cache is shared."""

    def __init__(self, clip: str | Path | None = None):
        self._clip = clip
        self._scorer = None
        self._lock = threading.Lock()

    def caption(self, image) -> str:
        with self._lock:
            if self._scorer is None:
                self._scorer = load_clip(self._clip)
            return interrogate([image.convert("RGB")], self._scorer)[0].caption


def interrogate(images: list, clip=None, vocabularies: list[Vocabulary] | None = None) -> list[Interrogation]:
    """One Interrogation per PIL image. `clip`: a folder, a loaded scorer, or None (bundled)."""
    scorer = clip if hasattr(clip, "embed_images") else load_clip(clip)
    if not images:
        return []
    if not vocabularies:
        return [Interrogation(r.caption, [(k, v, p) for k, (v, p) in r.scores.items()])
                for r in rank_shapes(scorer, images)]
    image_emb = scorer.embed_images(images)
    per_category = [rank_vocabulary(scorer, image_emb, v.terms, v.top) for v in vocabularies]
    results = []
    for n in range(len(images)):
        matches = [(v.name, term, p) for v, ranked in zip(vocabularies, per_category) for term, p in ranked[n]]
        results.append(Interrogation(", ".join(term for _, term, _ in matches), matches))
    return results
