"""Captions by ranking with a CLIP: the `shapes` grammar attribute by attribute, and a user's
vocabulary the way the web UI's CLIP interrogator ranks its lists.

Shapes grammar: every full caption of the grammar is a candidate (2,520 single-object scenes,
6,048 two-object ones); an image's scaled similarities to all of them, softmaxed, are a joint
distribution over the attributes, and each attribute is read from its marginal (the sum over
every candidate that has that value). Marginals are steadier than the single best caption: a
wrong guess on one attribute does not drag the others along.

    ranked = rank_shapes(scorer, images)         # one RankedCaption per image
    ranked[0].caption                            # "a small red circle in the top left on a black background"
    ranked[0].scores                             # {"objects": ("1", 0.99), "color": ("red", 0.98), ...}
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from t2i.data.shapes import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES, article

SIZE_WORDS = tuple(SIZES)  # small, medium, large (medium has no word in a caption)
POSITION_PHRASES = tuple(POSITIONS)
SINGLE_ATTRIBUTES = ("color", "shape", "size", "position", "background")
PAIR_ATTRIBUTES = ("color", "shape", "relation", "color_b", "shape_b", "background")


def _noun(size: str | None, color: str, shape: str) -> str:
    words = [w for w in (size, color, shape) if w and w != "medium"]
    return f"{article(words[0])} {' '.join(words)}"


def single_caption(color: str, shape: str, size: str, position: str, background: str) -> str:
    return f"{_noun(size, color, shape)} {position} on {article(background)} {background} background"


def pair_caption(color: str, shape: str, relation: str, color_b: str, shape_b: str, background: str) -> str:
    return (f"{_noun(None, color, shape)} {relation} {_noun(None, color_b, shape_b)} "
            f"on {article(background)} {background} background")


def single_candidates() -> list[tuple[str, ...]]:
    """Every full single-object caption's attributes (the background differs from the object)."""
    return [c for c in itertools.product(COLORS, SHAPES, SIZE_WORDS, POSITION_PHRASES, COLORS) if c[0] != c[4]]


def pair_candidates() -> list[tuple[str, ...]]:
    """Every full two-object caption's attributes (three different colours)."""
    return [c for c in itertools.product(COLORS, SHAPES, RELATIONS, COLORS, SHAPES, COLORS)
            if len({c[0], c[3], c[5]}) == 3]


@dataclass
class RankedCaption:
    caption: str
    scores: dict[str, tuple[str, float]]  # attribute -> (value, marginal probability)

    def scores_text(self) -> str:
        return ", ".join(f"{name}={value}:{p:.3f}" for name, (value, p) in self.scores.items())


def _marginals(probs: torch.Tensor, candidates: list[tuple[str, ...]], names: tuple[str, ...]):
    """attribute -> (values, (N, V) marginal probabilities) from (N, C) probabilities over candidates."""
    out = {}
    for k, name in enumerate(names):
        values = list(dict.fromkeys(c[k] for c in candidates))
        index = torch.tensor([values.index(c[k]) for c in candidates])
        marginal = torch.zeros(probs.shape[0], len(values)).index_add_(1, index, probs)
        out[name] = (values, marginal)
    return out


def _pick(marginals, names, n: int, exclusive: tuple[tuple[str, ...], ...] = ()) -> dict[str, tuple[str, float]]:
    """Each attribute's most likely value for image n; attributes in an `exclusive` group (the
    colours of objects and background) take distinct values, the surest attribute first."""
    chosen: dict[str, tuple[str, float]] = {}
    order = sorted(names, key=lambda a: -float(marginals[a][1][n].max()))
    for name in order:
        values, marginal = marginals[name]
        taken = {chosen[o][0] for g in exclusive if name in g for o in g if o in chosen}
        ranked = marginal[n].argsort(descending=True).tolist()
        best = next(i for i in ranked if values[i] not in taken)
        chosen[name] = (values[best], float(marginal[n, best]))
    return {name: chosen[name] for name in names}


def rank_shapes(scorer, images, single_only: bool = False) -> list[RankedCaption]:
    """The `shapes` caption of each image, attribute by attribute (see the module docstring).
    `single_only`: rank single-object captions only (the zero-shot benchmark's held-out scenes)."""
    singles, pairs = single_candidates(), ([] if single_only else pair_candidates())
    texts = [single_caption(*c) for c in singles] + [pair_caption(*c) for c in pairs]
    logits = scorer.logits(scorer.embed_images(list(images)), scorer.embed_texts(texts))  # (N, C)
    probs = logits.double().softmax(-1).float()
    p_single = probs[:, :len(singles)]
    p_pair = probs[:, len(singles):]
    one = p_single.sum(-1)  # probability of a single-object scene
    m_single = _marginals(p_single / one.clamp_min(1e-30)[:, None], singles, SINGLE_ATTRIBUTES)
    m_pair = _marginals(p_pair / (1 - one).clamp_min(1e-30)[:, None], pairs, PAIR_ATTRIBUTES) if pairs else None
    results = []
    for n in range(len(probs)):
        if m_pair is None or one[n] >= 0.5:
            picked = _pick(m_single, SINGLE_ATTRIBUTES, n, (("color", "background"),))
            caption = single_caption(*(picked[a][0] for a in SINGLE_ATTRIBUTES))
            objects = ("1", float(one[n]))
        else:
            picked = _pick(m_pair, PAIR_ATTRIBUTES, n, (("color", "color_b", "background"),))
            caption = pair_caption(*(picked[a][0] for a in PAIR_ATTRIBUTES))
            objects = ("2", float(1 - one[n]))
        results.append(RankedCaption(caption, {"objects": objects, **picked}))
    return results


def rank_vocabulary(scorer, image_emb: torch.Tensor, terms: list[str], top: int) -> list[list[tuple[str, float]]]:
    """The web UI interrogator's ranking of one category: per image, the `top` terms by similarity,
    each with its softmax share over the category (the web UI's "ranks")."""
    if not terms:
        return [[] for _ in range(len(image_emb))]
    probs = scorer.logits(image_emb, scorer.embed_texts(terms)).softmax(-1)
    best = probs.topk(min(top, len(terms)), dim=-1)
    return [[(terms[i], float(p)) for p, i in zip(vals.tolist(), idx.tolist())]
            for vals, idx in zip(best.values, best.indices)]
