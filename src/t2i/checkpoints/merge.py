"""`t2i merge`: checkpoint merging as the web UI's checkpoint merger does it.

    weighted sum      (1 - alpha) * A + alpha * B        interpolates two models
    add difference    A + alpha * (B - C)                adds what B learned on top of C to A
                                                         (e.g. A = your model, B = an inpainting
                                                         model, C = the base B came from)

Inputs are state dicts of the same architecture: the same tensor names and shapes (checked
before anything is written; the first mismatch is named). Tensors are read one at a time with
safetensors' `safe_open` and written one at a time (t2i.checkpoints.atomic_write), so memory
holds a few tensors, not three models. Arithmetic runs in float32; each output tensor takes A's
dtype (float16 with `half`). Integer tensors (position ids) are copied from A.

The output's web-UI model hash is the first 10 hex digits of its sha256; images made with it
show `Model hash: <hash>, Model: <file stem>`. The file's metadata records the name
(`modelspec.title`) and the recipe in the web UI's form (`sd_merge_recipe`, `sd_merge_models`,
with each input's sha256), and keeps A's t2i configs so a merge of t2i exports loads in t2i.
"""
from __future__ import annotations

import json
import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from t2i.checkpoints.atomic_write import SAFETENSORS_DTYPES, TensorSpec, check_output, write_safetensors
from t2i.checkpoints.diffusers_folder import ModelLoadError, _t2i_version
from t2i.checkpoints.embedded import EMBEDDED_KEYS, VERSION_KEY
from t2i.checkpoints.loaded import file_hash
from t2i.checkpoints.safe_load import load_state_dict_file, read_safetensors_header, sniff_format

METHODS = ("weighted-sum", "add-difference")
_WEBUI_METHOD = {"weighted-sum": "Weighted sum", "add-difference": "Add difference"}


@dataclass
class MergeResult:
    path: Path
    hash: str  # the web UI's model hash: first 10 hex of the sha256
    sha256: str
    name: str
    tensors: int


class _SafetensorsReader:
    """Tensors of a `.safetensors` file, read lazily one at a time."""

    def __init__(self, path: Path, stack: ExitStack):
        from safetensors import safe_open

        self.path = path
        header, self.metadata = read_safetensors_header(path)  # a clear message for a damaged file
        self._handle = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        self._shapes = {name: tuple(entry["shape"]) for name, entry in header.items()}

    def keys(self) -> list[str]:
        return list(self._shapes)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def get(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)


class _PickleReader:
    """A weights-only pickle (`.ckpt`), which cannot be read lazily: loaded whole, safely."""

    def __init__(self, path: Path):
        self.path, self.metadata = path, {}
        self._state = load_state_dict_file(path)

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


def _open(path: Path, stack: ExitStack):
    if path.is_dir():
        raise ValueError(f"{path} is a folder; merge works on single files: convert it first with "
                         f"`t2i convert {path} {path.name}.safetensors --to single-file`")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return _SafetensorsReader(path, stack) if sniff_format(path) == "safetensors" else _PickleReader(path)


def check_same_architecture(readers: list) -> list[str]:
    """The tensor names of A (in order) after checking that every model has exactly the same
    names and shapes; ValueError naming the first mismatch."""
    first, names = readers[0], readers[0].keys()
    letters = "ABC"
    for i, other in enumerate(readers[1:], start=1):
        mine, theirs = set(names), set(other.keys())
        if mine != theirs:
            only_a, only_o = sorted(mine - theirs), sorted(theirs - mine)
            key, where, lacks = (only_a[0], "A", letters[i]) if only_a else (only_o[0], letters[i], "A")
            raise ValueError(f"the models are not the same architecture: tensor {key!r} is in {where} but not in "
                             f"{lacks} ({len(only_a) + len(only_o)} names differ); merge models of one kind "
                             f"(e.g. SD 1.x with SD 1.x, same layout)")
        for key in names:
            if first.shape(key) != other.shape(key):
                raise ValueError(f"the models are not the same architecture: tensor {key!r} has shape "
                                 f"{list(first.shape(key))} in A but {list(other.shape(key))} in {letters[i]}; "
                                 f"merge models of one kind (e.g. SD 1.x with SD 1.x)")
    return list(names)


def check_alpha(method: str, alpha: float) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha}")
    if method == "weighted-sum" and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"weighted-sum needs 0 <= alpha <= 1 (0 = A, 1 = B), got {alpha}")


def merge_tensor(method: str, alpha: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None,
                 out_dtype: torch.dtype) -> torch.Tensor:
    if not a.is_floating_point():
        return a.to(out_dtype) if out_dtype != a.dtype else a  # ids and counters: A's
    a32, b32 = a.float(), b.float()
    if method == "weighted-sum":
        merged = a32 if alpha == 0 else torch.lerp(a32, b32, alpha)  # (1 - alpha) a + alpha b
    else:
        merged = a32 + alpha * (b32 - c.float())
    return merged.to(out_dtype)


def _sha256(path: Path) -> str:
    return file_hash(path, chars=64)  # the whole digest


def _metadata(method: str, alpha: float, name: str, half: bool, inputs: list[Path], first_meta: dict) -> dict:
    hashes = [_sha256(p) for p in inputs]
    recipe = {"type": "webui", "primary_model_hash": hashes[0], "secondary_model_hash": hashes[1],
              "tertiary_model_hash": hashes[2] if len(hashes) > 2 else None, "interp_method": _WEBUI_METHOD[method],
              "multiplier": alpha, "save_as_half": half, "custom_name": name, "config_source": 0,
              "bake_in_vae": "None", "discard_weights": "", "is_inpainting": False, "is_instruct_pix2pix": False}
    models = {h: {"name": p.stem, "legacy_hash": None, "sd_merge_recipe": None} for h, p in zip(hashes, inputs)}
    meta = {k: v for k, v in first_meta.items() if k in EMBEDDED_KEYS}  # A's configs rebuild the merge
    meta.update({"format": "pt", "modelspec.title": name, "sd_merge_recipe": json.dumps(recipe),
                 "sd_merge_models": json.dumps(models), VERSION_KEY: _t2i_version()})
    return meta


def merge_models(a: str | Path, b: str | Path, c: str | Path | None = None, *, method: str = "weighted-sum",
                 alpha: float = 0.5, output: str | Path, name: str | None = None, half: bool = False,
                 overwrite: bool = False) -> MergeResult:
    """Merge A and B (and C for add-difference) into `output` (.safetensors)."""
    check_alpha(method, alpha)
    inputs = [Path(p) for p in (a, b, c) if p is not None]
    if method == "add-difference" and c is None:
        raise ValueError("add-difference needs three models: A + alpha * (B - C); give C")
    if method == "weighted-sum" and c is not None:
        raise ValueError("weighted-sum merges two models; a third (C) is only used by add-difference")
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"{output}: merges are written as .safetensors; name the output "
                         f"{output.with_suffix('.safetensors').name}")
    name = name or output.stem
    check_output(output, overwrite, inputs)
    with ExitStack() as stack:
        readers = [_open(p, stack) for p in inputs]
        names = check_same_architecture(readers)
        dtypes = {k: readers[0].get(k).dtype for k in names} if isinstance(readers[0], _PickleReader) else \
            _safetensors_dtypes(readers[0].path)
        out_dtype = {k: torch.float16 if half and dt.is_floating_point else dt for k, dt in dtypes.items()}
        specs = [TensorSpec(k, out_dtype[k], readers[0].shape(k)) for k in sorted(names)]

        def produce(spec: TensorSpec) -> torch.Tensor:
            parts = [r.get(spec.name) for r in readers]
            return merge_tensor(method, alpha, parts[0], parts[1], parts[2] if len(parts) > 2 else None, spec.dtype)

        metadata = _metadata(method, alpha, name, half, inputs, readers[0].metadata)
        digest = write_safetensors(output, specs, produce, metadata)
    return MergeResult(output, digest[:10], digest, name, len(specs))


def _safetensors_dtypes(path: Path) -> dict[str, torch.dtype]:
    by_name = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header = read_safetensors_header(path)[0]
    unknown = sorted({e["dtype"] for e in header.values()} - set(by_name))
    if unknown:
        raise ModelLoadError(f"{path} holds tensors of dtype {unknown[0]}, which t2i cannot merge")
    return {k: by_name[e["dtype"]] for k, e in header.items()}
