"""Textual-inversion embeddings (Gal et al. 2022, "An Image is Worth One Word: Personalizing
Text-to-Image Generation using Textual Inversion"): learned token vectors used by writing the
embedding's name in a prompt.

File formats, all read through t2i.checkpoints.safe_load (pickles weights-only):

| format                       | content                                                       |
|------------------------------|---------------------------------------------------------------|
| web UI `.pt`                 | `{"string_to_param": {"*": (N, D)}, "name": ..., "step": ...}` |
| web UI `.safetensors`        | `{"emb_params": (N, D)}`                                      |
| SDXL (`.safetensors`)        | `{"clip_l": (N, 768), "clip_g": (N, 1280)}`                   |
| diffusers `learned_embeds.*` | `{"<token>": (D,) or (N, D)}`                                  |
An embedding is named after its file's stem, as in the web UI; a diffusers `learned_embeds`
file, whose stem says nothing, after the token stored in it.

Use in a prompt, as the web UI does it (t2i.diffusion.text_states): the name's tokens are found
in the prompt's token ids (longest name first) and replaced by N placeholder tokens that count
toward the 75-token chunk; an embedding that does not fit in the current chunk starts the next one.
While the text encoder runs, a forward hook on its token-embedding layer writes the N vectors at
those positions, so the rest of the encoder (positions, attention, clip skip) treats them as
ordinary tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from t2i.checkpoints.registry import file_hash
from t2i.checkpoints.safe_load import load_weights_object
# Finding names in prompts and placing the vectors is the prompt encoder's part (t2i.diffusion);
# the names stay importable from here.
from t2i.diffusion.text_states import PLACEHOLDER_ID, EmbeddingMatcher, placing_embeddings  # noqa: F401
from t2i.errors import ModelLoadError

EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
_SDXL_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True, eq=False)
class Embedding:
    name: str
    vectors: dict[str, Tensor]  # "" for one text encoder; "clip_l", "clip_g" for SDXL's two; each (N, D)
    path: Path | None = None
    hash: str = ""  # the web UI's short hash: the first 12 hex digits of the file's sha256

    @property
    def count(self) -> int:
        """N, the number of vectors (tokens) the embedding takes in a prompt."""
        return int(next(iter(self.vectors.values())).shape[0])

    def for_width(self, width: int) -> Tensor | None:
        """(N, width) vectors for a text encoder of that width, or None (made for another model)."""
        fitting = [v for v in self.vectors.values() if v.shape[-1] == width]
        return fitting[0] if len(fitting) == 1 else None


def _as_matrix(value, path: Path, what: str) -> Tensor:
    if not isinstance(value, Tensor) or value.ndim not in (1, 2) or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ModelLoadError(f"{path}: {what} is {shape}, expected a float tensor of shape (vectors, width)")
    return value.detach().float().reshape(-1, value.shape[-1]).clone()


def embedding_from_data(data, path: Path, name: str | None = None, file_hash: str = "") -> Embedding:
    """An Embedding from a loaded file's content (see the module docstring for the formats)."""
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a textual-inversion embedding")
    stem = name or path.stem
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ModelLoadError(f"{path}: string_to_param must hold exactly one tensor (a web UI embedding)")
        vectors = {"": _as_matrix(next(iter(params.values())), path, "string_to_param")}
    elif "emb_params" in data:
        vectors = {"": _as_matrix(data["emb_params"], path, "emb_params")}
    elif any(key in data for key in _SDXL_KEYS):
        if not all(key in data for key in _SDXL_KEYS):
            raise ModelLoadError(f"{path}: an SDXL embedding needs both clip_l and clip_g vectors")
        vectors = {key: _as_matrix(data[key], path, key) for key in _SDXL_KEYS}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise ModelLoadError(f"{path}: clip_l and clip_g hold different numbers of vectors")
    elif len(data) == 1 and isinstance(next(iter(data.values())), Tensor):  # diffusers: {token: vector}
        token, value = next(iter(data.items()))
        vectors = {"": _as_matrix(value, path, f"the vector of {token!r}")}
        if name is None and path.stem == "learned_embeds":
            stem = str(token)
    else:
        raise ModelLoadError(f"{path} is not a textual-inversion embedding: expected string_to_param (web UI .pt), "
                             f"emb_params, clip_l/clip_g (SDXL) or one token -> tensor (diffusers), found "
                             f"{', '.join(map(str, list(data)[:4]))}")
    if next(iter(vectors.values())).shape[0] == 0:
        raise ModelLoadError(f"{path} holds an embedding of zero vectors")
    return Embedding(stem, vectors, path, file_hash)


def load_embedding(path: str | Path, name: str | None = None) -> Embedding:
    """Read one embedding file safely; ModelLoadError naming the file for anything else."""
    path = Path(path)
    return embedding_from_data(load_weights_object(path), path, name, file_hash(path, 12))
