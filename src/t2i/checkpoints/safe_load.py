"""Read weight files without ever running code from them, with bounded time and memory.

Every weight file t2i opens (models, VAEs, LoRAs, embeddings, tiny decoders, family files,
feature nets, training checkpoints on `--resume`) comes through here. Two formats:

* safetensors (a little-endian u64 length, a JSON header, raw bytes). Before anything is parsed,
  cheap byte-level limits bound the work: header length, number of JSON objects (one per tensor)
  and nesting depth (a valid header is at most {name: {"shape": [...]}} deep), so a 1M-entry or
  100k-deep header is refused in milliseconds. The safetensors library's own parser then decides
  validity (dtypes, shapes, offsets that tile the data section, total size = file size): t2i
  never rejects a file the library accepts. Only if the library refuses does t2i look at the
  header itself, to say in plain words what is wrong (t2i_safetensors_faults).
* pickles (`.ckpt`, `.pt`, `.pth`, `.bin`), loaded only through `torch.load(weights_only=True)`:
  its restricted unpickler accepts tensors and plain containers and refuses every other global,
  so a `__reduce__` that would call `os.system` never runs. Refusals never suggest turning that off.

Every failure is a t2i.errors.ModelLoadError that names the file and says what is wrong.

    state = load_state_dict_file("v1-5-pruned-emaonly.safetensors")   # {name: tensor} on the CPU
"""
from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from t2i.checkpoints.safe_pickle import load_pickle, short_message
from t2i.checkpoints.safetensors_faults import explain_refusal
from t2i.errors import ModelLoadError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# The safetensors library's own ceiling on the header; real headers are far smaller (SDXL: ~0.3 MB).
MAX_HEADER_BYTES = 100_000_000
# One JSON object per tensor. SDXL checkpoints hold ~2,500 tensors, a full-network LyCORIS up to
# ~15,000; a larger count is a forged header, whose parsing alone takes seconds (1M entries: 6 s in
# the library) and whose loading takes ~5 s per 100,000 tensors on a CPU core.
MAX_TENSORS = 50_000
# A header is {name: {"dtype", "shape": [...], "data_offsets": [...]}, "__metadata__": {str: str}}:
# depth 3. Two bracket-peeling passes (each removes up to one level of [] and one of {}) empty
# every valid header; what remains is nested too deep (Python's json would hit RecursionError).
_PEEL_PASSES = 2

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """{name: tensor} from a `.safetensors` file or a weights-only pickle, all on the CPU.

    A checkpoint that wraps its weights in a "state_dict" entry (as Lightning and the original
    Stable Diffusion `.ckpt` files do) is unwrapped. Raises ModelLoadError, naming the file, for
    a missing, corrupt, truncated, oversized or unsafe file.
    """
    path = Path(path)
    return _tensors_only(load_weights_object(path), path)


def load_weights_object(path: str | Path) -> object:
    """What a weights file holds, as stored (a safetensors file: {name: tensor}; a pickle: nested
    dicts, lists, strings, numbers and tensors, as textual-inversion `.pt` files are), on the CPU.
    Same safety and errors as `load_state_dict_file`."""
    path = Path(path)
    if sniff_format(path) == "safetensors":
        return _load_safetensors(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:  # a pickle posing as the safe format: never unpickled
        raise ModelLoadError(f"refused to load {path}: it is named like a safetensors file but is not one (it looks "
                             f"like a pickle, which can carry code); re-download or re-export the file")
    return load_pickle(path)


def load_checkpoint_dict(path: str | Path, what: str, required: tuple[str, ...] = ()) -> dict:
    """A checkpoint that is a dictionary (a training state t2i wrote, read weights-only) holding
    the `required` keys; ModelLoadError naming the file otherwise. `what` names it in messages,
    e.g. "vae training checkpoint"."""
    path = Path(path)
    state = load_weights_object(path)
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} is not a {what}: it holds a {type(state).__name__}, not a dictionary")
    missing = [key for key in required if key not in state]
    if missing:
        raise ModelLoadError(f"{path} is not a {what}: it lacks {', '.join(map(repr, missing))}; "
                             f"the file is damaged or was written by something else")
    return state


@contextmanager
def misfit_is_load_error(path: str | Path, what: str, hint: str = ""):
    """While applying a loaded file's content (strict load_state_dict, a missing key, a value of
    the wrong type), turn the errors that content can cause into a ModelLoadError naming the
    file: the content is untrusted data, so a misfit is the file's fault, not a bug to trace."""
    try:
        yield
    except ModelLoadError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        raise ModelLoadError(f"{path} does not fit {what} ({type(err).__name__}: {short_message(err)})"
                             + (f"; {hint}" if hint else "")) from err


def check_tensor_kinds(expected: dict[str, Tensor], state: dict[str, Tensor], path: str | Path, what: str) -> None:
    """ModelLoadError when a tensor of `state` is of another kind (float, complex, integer, bool)
    than the module's tensor of that name: copying would convert its values silently, and
    assigning would fail deep in torch. (A file whose F16 tensors were relabelled I16 is one.)"""
    wrong = [f"{name} ({state[name].dtype}, expected {slot.dtype})" for name, slot in expected.items()
             if name in state and isinstance(state[name], Tensor) and not same_kind(state[name], slot)]
    if wrong:
        raise ModelLoadError(f"{path} does not fit {what}: {len(wrong)} tensors of the wrong kind of dtype "
                             f"(e.g. {'; '.join(wrong[:3])}); the file is damaged or of another model")


def same_kind(a: Tensor, b: Tensor) -> bool:
    """Both float, both complex, both integer or both bool (a cast between kinds changes values)."""
    return _kind(a) == _kind(b)


def _kind(tensor: Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "bool"
    return "float" if tensor.is_floating_point() else "complex" if tensor.is_complex() else "integer"


def sniff_format(path: str | Path) -> str:
    """'safetensors' or 'pickle', from the first bytes (the suffix only breaks ties), so a
    renamed file is still read by the right, safe reader."""
    path = Path(path)
    head = _head(path, 16)
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 0 < n <= MAX_HEADER_BYTES:  # before the pickle test: n's low byte may be 0x80
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip archive / pickle protocol >= 2
        return "pickle"
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        return "safetensors"  # let the header checks say what is wrong with it
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return "pickle"
    raise ModelLoadError(f"{path} is neither a safetensors file nor a PyTorch checkpoint "
                         f"(expected {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)})")


def _head(path: Path, count: int) -> bytes:
    """The first `count` bytes; ModelLoadError for a missing, unreadable or < 8-byte file."""
    try:
        with open(path, "rb") as f:
            head = f.read(count)
    except FileNotFoundError:
        raise ModelLoadError(f"checkpoint file {path} does not exist") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a folder, not a weights file") from None
    except OSError as err:
        raise ModelLoadError(f"cannot read {path}: {err.strerror or err}") from err
    if len(head) < 8:
        raise ModelLoadError(f"{path} is empty or truncated ({len(head)} bytes); it is not a checkpoint")
    return head


# ----------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: str | Path) -> tuple[dict, dict[str, str]]:
    """({name: {"dtype", "shape", "data_offsets"}}, metadata) of a file the safetensors library
    accepts, after the limits above; ModelLoadError naming the file and the fault otherwise."""
    path = Path(path)
    header = _parse_header(_validated_header(path), path)
    if not isinstance(header, dict):  # the library refuses these; kept for a clear type below
        raise ModelLoadError(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    return header, {str(k): str(v) for k, v in metadata.items()}


def _validated_header(path: Path) -> bytes:
    """The header bytes of a file that passed the limits and the safetensors library's validation."""
    raw, data_size = _bounded_header(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            f.keys()  # parsing and validation happen on open; nothing is read into memory
    except Exception as err:  # SafetensorError and a few builtins, all meaning "not a valid file"
        explain_refusal(path, _parse_header(raw, path), data_size)  # a plainer message, when it finds the fault
        raise ModelLoadError(f"{path} is not a valid safetensors file ({short_message(err)}); "
                             f"re-download or re-export the file") from err
    return raw


def _parse_header(raw: bytes, path: Path):
    """The header's JSON (safe to parse once the limits passed: bounded size, count and depth)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ModelLoadError(f"{path} has a corrupt safetensors header ({short_message(err)}); "
                             f"re-download or re-export the file") from err


def _bounded_header(path: Path) -> tuple[bytes, int]:
    """(header bytes, size of the data section) after the limits that need no parsing."""
    (n,) = struct.unpack("<Q", _head(path, 8))
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(8)
        if n == 0 or n > MAX_HEADER_BYTES:
            raise ModelLoadError(f"{path} is not a valid safetensors file: its header length field says {n:,} bytes "
                                 f"(at most {MAX_HEADER_BYTES:,} are allowed); the file is corrupt or not safetensors")
        if 8 + n > size:
            raise ModelLoadError(f"{path} is corrupt or truncated: its header claims {n:,} bytes but the file has "
                                 f"{size:,} bytes; re-download or re-export the file")
        raw = f.read(n)
    _check_json_shape(raw, path)
    return raw, size - 8 - n


def _check_json_shape(raw: bytes, path: Path) -> None:
    """Entry count and nesting depth from the bytes alone (C-speed bytes methods: ~0.1 s for the
    largest allowed header), before any JSON parser sees them."""
    # Escapes first: `\\` pairs, then `\"`, so every remaining quote opens or closes a string.
    body = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    strings = body.count(b'"') // 2
    if strings > 8 * MAX_TENSORS:  # a tensor entry has 5 strings; bounds the split below too
        raise ModelLoadError(f"{path} has an oversized safetensors header ({strings:,} JSON strings, more than "
                             f"{MAX_TENSORS:,} tensors need); t2i reads files of at most {MAX_TENSORS:,} tensors")
    outside = b"".join(body.split(b'"')[0::2])  # the even parts lie outside strings
    entries = outside.count(b"{") - 1 - (b'"__metadata__"' in raw)  # the top level and metadata are objects too
    if entries > MAX_TENSORS:
        raise ModelLoadError(f"{path} has an oversized safetensors header ({entries:,} entries); "
                             f"t2i reads files of at most {MAX_TENSORS:,} tensors")
    brackets = outside.translate(None, _NOT_BRACKETS)
    for _ in range(_PEEL_PASSES):
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    if brackets:
        raise ModelLoadError(f"{path} has a corrupt safetensors header: its JSON is nested deeper than a "
                             f"safetensors header can be, or its brackets do not match")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    _validated_header(path)  # the limits, the library's validation, clear messages
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # e.g. a dtype this torch build lacks
        raise ModelLoadError(f"cannot read {path} as safetensors: {short_message(err)}") from err


def _tensors_only(state, path: Path) -> dict[str, Tensor]:
    """Unwrap nested "state_dict" entries; keep the tensors; fail if there are none."""
    for _ in range(8):  # bounded: a pickle can hold a dict that contains itself
        if not (isinstance(state, dict) and isinstance(state.get("state_dict"), dict)):
            break
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} contains no tensors; it is not a model checkpoint")
    return tensors
