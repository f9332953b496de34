"""Read weight files without ever running code from them.

Two formats reach this module: safetensors (a JSON header plus raw bytes, checked here before
the safetensors library sees it, so a lying header gives a message instead of a library
error) and pickles (`.ckpt`, `.pt`, `.pth`, `.bin`), which are loaded only through
`torch.load(weights_only=True)`: its restricted unpickler accepts tensors and plain containers
and refuses every other global, so a `__reduce__` that would call `os.system` never runs.

    state = load_state_dict_file("v1-5-pruned-emaonly.safetensors")   # {name: tensor} on the CPU
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from t2i.checkpoints.diffusers_folder import ModelLoadError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# A real header is a few MB even for SDXL (one JSON entry per tensor); anything far larger is a
# corrupt length field, and reading it would waste memory before failing.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# torch versions before 2.10 have published `weights_only` bypasses (see INTEROP.md).
MIN_TORCH_FOR_PICKLES = (2, 10)

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """{name: tensor} from a `.safetensors` file or a weights-only pickle, all on the CPU.

    A checkpoint that wraps its weights in a "state_dict" entry (as Lightning and the original
    Stable Diffusion `.ckpt` files do) is unwrapped. Raises ModelLoadError, naming the file, for
    a missing, corrupt, truncated or unsafe file.
    """
    path = Path(path)
    return _tensors_only(load_weights_object(path), path)


def load_weights_object(path: str | Path) -> object:
    """What a weights file holds, as stored (a safetensors file: {name: tensor}; a pickle: nested
    dicts, lists, strings, numbers and tensors, as textual-inversion `.pt` files are), on the CPU.
    Same safety and errors as `load_state_dict_file`."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file {path} does not exist")
    if path.stat().st_size < 8:
        raise ModelLoadError(f"{path} is empty or truncated ({path.stat().st_size} bytes); it is not a checkpoint")
    return _load_safetensors(path) if sniff_format(path) == "safetensors" else _load_pickle(path)


def sniff_format(path: Path) -> str:
    """'safetensors' or 'pickle', from the first bytes (the suffix only breaks ties), so a
    renamed file is still read by the right, safe reader."""
    with open(path, "rb") as f:
        head = f.read(16)
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < n <= MAX_HEADER_BYTES:  # before the pickle test: n's low byte may be 0x80
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip archive / pickle protocol >= 2
        return "pickle"
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return "safetensors"  # let the header check say what is wrong with it
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"
    raise ModelLoadError(f"{path} is neither a safetensors file nor a PyTorch checkpoint "
                         f"(expected {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)})")


def read_safetensors_header(path: str | Path) -> tuple[dict, dict[str, str]]:
    """({name: {"dtype", "shape", "data_offsets"}}, metadata) after checking that every entry is
    well formed and that the offsets tile the data section exactly, as the format requires."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise ModelLoadError(f"{path} is truncated: no safetensors header")
        (n,) = struct.unpack("<Q", raw_len)
        if n == 0 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise ModelLoadError(f"{path} is corrupt or truncated: its header claims {n} bytes but the file has "
                                 f"{size} bytes; re-download or re-export the file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path} has a corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelLoadError(f"{path} has a corrupt safetensors header (__metadata__ is not an object)")
    data_size = size - 8 - n
    spans = []
    for name, entry in header.items():
        spans.append((*_check_entry(path, name, entry, data_size), name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            what = "overlaps another tensor" if begin < end else "leaves a gap before it"
            raise ModelLoadError(f"{path} has a lying safetensors header: tensor {name!r} {what} "
                                 f"(offset {begin}, expected {end}); the file is corrupt")
        end = stop
    if end != data_size:
        raise ModelLoadError(f"{path} is corrupt or truncated: its header describes {end} bytes of tensor data "
                             f"but the file holds {data_size}; re-download or re-export the file")
    return header, {str(k): str(v) for k, v in metadata.items()}


def _check_entry(path: Path, name: str, entry, data_size: int) -> tuple[int, int]:
    bad = f"{path} has a lying safetensors header: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise ModelLoadError(f"{bad} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in _DTYPE_BYTES:
        raise ModelLoadError(f"{bad} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ModelLoadError(f"{bad} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise ModelLoadError(f"{bad} points at bytes {offsets!r} outside the {data_size} bytes of data "
                             f"(the file is truncated or corrupt)")
    numel = 1
    for d in shape:
        numel *= d
    if offsets[1] - offsets[0] != numel * _DTYPE_BYTES[dtype]:
        raise ModelLoadError(f"{bad} of shape {shape} and dtype {dtype} needs {numel * _DTYPE_BYTES[dtype]} "
                             f"bytes but its offsets span {offsets[1] - offsets[0]}")
    return offsets[0], offsets[1]


def _load_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    read_safetensors_header(path)  # clear messages for the common kinds of damage
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # the Rust reader raises SafetensorError and a few builtins
        raise ModelLoadError(f"cannot read {path} as safetensors: {err}") from err


def _load_pickle(path: Path) -> dict:
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    if version < MIN_TORCH_FOR_PICKLES:
        raise ModelLoadError(f"refusing to unpickle {path}: torch {torch.__version__} has known weights_only "
                             f"bypasses; upgrade torch to >= 2.10 or convert the file to safetensors")
    try:
        # mmap avoids a second copy of a multi-GB zip checkpoint; legacy (non-zip) pickles can't.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"refused to load {path}: it needs more than plain tensors to unpickle, which could run code "
            f"hidden in the file ({_first_line(err)}). t2i loads pickles only with torch.load(weights_only=True); "
            f"if you trust the file's source, convert it to .safetensors with a tool you trust"
        ) from err
    except Exception as err:  # corrupt zip, truncated stream, not a pickle at all
        raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint ({type(err).__name__}: "
                             f"{_first_line(err)}); the file is corrupt, truncated or not a checkpoint") from err


def _first_line(err: BaseException) -> str:
    """The line of torch's message that says what was refused (its advice to retry with
    weights_only=False is exactly what t2i must not suggest)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "unsupported" in line.lower() and "weights_only" not in line:
            return line
    return lines[0] if lines and "weights_only" not in lines[0] else type(err).__name__


def _tensors_only(state, path: Path) -> dict[str, Tensor]:
    """Unwrap nested "state_dict" entries; keep the tensors; fail if there are none."""
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} contains no tensors; it is not a model checkpoint")
    return tensors
