"""A safety checker the CompVis way on t2i's CLIP: concept embeddings and thresholds.

CompVis's checker (the Stable Diffusion scripts' `check_safety`) embeds an image with CLIP and
compares it, by cosine similarity, with fixed concept embeddings, each with its own threshold:
an image whose similarity passes any concept's threshold is flagged (and blacked out). "Special
care" concepts, when one of them is passed, lower every threshold by 0.01 (CompVis's adjustment).
This is that rule over t2i's CLIP (or a user's CLIP), with concepts in a small file:

    folder/concepts.safetensors      concept_embeds (K, D), concept_thresholds (K,),
                                     special_care_embeds (S, D), special_care_thresholds (S,);
                                     metadata: concept names (JSON)
    folder/config.json + model.safetensors   optional: the CLIP; else t2i's bundled CLIP

`--safety-checker FOLDER` picks this checker when the folder holds concepts.safetensors (the
real checker's folder otherwise: t2i.pipelines.safety). Off by default, as the real one is.
Concept embeddings may come from texts (`concepts_from_texts`: CLIP's spaces are shared) or from
example images (`scorer.embed_images`), as CompVis's came from images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from t2i.atomic import atomic_path
from t2i.checkpoints.safe_load import load_state_dict_file, read_safetensors_header
from t2i.errors import ModelLoadError

CONCEPTS_FILE = "concepts.safetensors"
SPECIAL_CARE_ADJUSTMENT = 0.01  # CompVis: a special-care match makes every concept this much easier to hit
_KEYS = ("concept_embeds", "concept_thresholds", "special_care_embeds", "special_care_thresholds")


@dataclass
class ConceptSafetyChecker:
    scorer: object  # t2i.evaluate.clip_scorer.CLIPScorer
    path: Path  # the folder (configure_image_tools compares it with the setting)
    names: list[str]
    special_names: list[str]
    concept_embeds: torch.Tensor  # (K, D) unit length
    concept_thresholds: torch.Tensor  # (K,)
    special_embeds: torch.Tensor  # (S, D)
    special_thresholds: torch.Tensor  # (S,)

    def scores(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """((N, K) concept scores, (N, S) special-care scores): cosine - threshold (+ adjustment);
        a score above 0 is a match."""
        emb = self.scorer.embed_images([im.convert("RGB") for im in images])  # (N, D)
        special = emb @ self.special_embeds.T - self.special_thresholds if len(self.special_names) \
            else torch.zeros(len(images), 0)
        adjustment = (special > 0).any(-1, keepdim=True).float() * SPECIAL_CARE_ADJUSTMENT  # (N, 1)
        return emb @ self.concept_embeds.T - self.concept_thresholds + adjustment, special

    def check(self, images: list[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """The images with every flagged one replaced by a black image of its size, and the flags."""
        if not images:
            return [], []
        with torch.no_grad():
            concept, _ = self.scores(images)
        flags = [bool(f) for f in (concept > 0).any(-1)]
        return [Image.new("RGB", im.size) if flagged else im for im, flagged in zip(images, flags)], flags


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def concepts_from_texts(scorer, texts: dict[str, list[str]]) -> tuple[list[str], torch.Tensor]:
    """(names, (K, D) embeddings): each concept the normalised mean of its texts' embeddings."""
    names = list(texts)
    return names, torch.stack([_unit(scorer.embed_texts(texts[n]).mean(0)) for n in names]) if names \
        else torch.zeros(0, 1)


def save_concepts(folder: str | Path, names: list[str], embeds: torch.Tensor, thresholds: list[float],
                  special_names: list[str] = (), special_embeds: torch.Tensor | None = None,
                  special_thresholds: list[float] = ()) -> Path:
    """Write folder/concepts.safetensors (atomically)."""
    if len(names) != len(embeds) or len(names) != len(thresholds) or not names:
        raise ValueError(f"need one embedding and one threshold per concept, and at least one concept "
                         f"({len(names)} names, {len(embeds)} embeddings, {len(thresholds)} thresholds)")
    dim = embeds.shape[-1]
    special_embeds = special_embeds if special_embeds is not None else torch.zeros(0, dim)
    if len(special_names) != len(special_embeds) or len(special_names) != len(special_thresholds):
        raise ValueError("need one embedding and one threshold per special-care concept")
    tensors = {"concept_embeds": _unit(embeds.float()), "concept_thresholds": torch.tensor(thresholds, dtype=torch.float32),
               "special_care_embeds": _unit(special_embeds.float()).reshape(-1, dim),
               "special_care_thresholds": torch.tensor(list(special_thresholds), dtype=torch.float32)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"concepts": json.dumps(list(names)), "special_care": json.dumps(list(special_names))}
    with atomic_path(folder / CONCEPTS_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return folder / CONCEPTS_FILE


def is_concept_folder(folder: str | Path) -> bool:
    return (Path(folder) / CONCEPTS_FILE).is_file()


def _names(metadata: dict, key: str, count: int, path: Path) -> list[str]:
    try:
        names = json.loads(metadata.get(key, "[]"))
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != count:
        raise ModelLoadError(f"{path}: the {key} names do not match its {count} embeddings; the file is damaged")
    return names


def load_concept_checker(folder: str | Path, device: str = "cpu") -> ConceptSafetyChecker:
    """The concept checker of `folder` (see the module docstring); its CLIP is the folder's own when
    it holds config.json, else t2i's bundled CLIP. Runs on the CPU (the CLIP is small)."""
    from t2i.evaluate.clip_scorer import load_scorer

    folder = Path(folder)
    path = folder / CONCEPTS_FILE
    metadata = read_safetensors_header(path)[1]
    state = load_state_dict_file(path)
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise ModelLoadError(f"{path} is not a concepts file: it lacks {', '.join(missing)}")
    embeds, thresholds = state["concept_embeds"].float(), state["concept_thresholds"].float()
    special, special_thresholds = state["special_care_embeds"].float(), state["special_care_thresholds"].float()
    if embeds.ndim != 2 or thresholds.shape != (len(embeds),) or special.ndim != 2 \
            or special_thresholds.shape != (len(special),) or (len(special) and special.shape[1] != embeds.shape[1]):
        raise ModelLoadError(f"{path}: concept embeddings and thresholds do not fit together; the file is damaged")
    scorer = load_scorer(folder if (folder / "config.json").is_file() else None)
    dim = int(scorer.model.config.projection_dim)
    if embeds.shape[1] != dim:
        raise ModelLoadError(f"{path} holds {embeds.shape[1]}-wide concept embeddings, but its CLIP "
                             f"({scorer.name}) embeds into {dim}: the concepts were made with another CLIP")
    return ConceptSafetyChecker(scorer, folder, _names(metadata, "concepts", len(embeds), path),
                                _names(metadata, "special_care", len(special), path),
                                _unit(embeds), thresholds, _unit(special) if len(special) else special,
                                special_thresholds)
