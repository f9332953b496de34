"""Plain words for why the safetensors library refused a file.

The library decides whether a file is valid (t2i.checkpoints.safe_load); its messages are terse
("MetadataIncompleteBuffer", "invalid JSON in header ..."). When it refuses, this module looks
at the already parsed header to name the fault: a tensor whose bytes lie outside the file,
overlap another's or disagree with its shape, an unknown dtype, a truncated data section. It
only explains: it never runs on a file the library accepted, so it cannot reject a valid one.
"""
from __future__ import annotations

from pathlib import Path

from t2i.errors import ModelLoadError

# Bits per element of the dtypes the safetensors format defines (sub-byte ones pack elements).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


def explain_refusal(path: Path, header, data_size: int) -> None:
    """Raise a ModelLoadError that names the first fault found in `header` (the parsed JSON of a
    file the library refused, whose data section holds `data_size` bytes); return if none is found."""
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} has a corrupt safetensors header (not a JSON object)")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise ModelLoadError(f"{path} has a corrupt safetensors header (__metadata__ must map names to strings)")
    spans = sorted((*_entry_span(path, name, entry, data_size), name)
                   for name, entry in header.items() if name != "__metadata__")
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            what = "overlaps another tensor" if begin < end else "leaves a gap before it"
            raise ModelLoadError(f"{path} has a lying safetensors header: tensor {name!r} {what} "
                                 f"(offset {begin}, expected {end}); the file is corrupt")
        end = stop
    if end != data_size:
        raise ModelLoadError(f"{path} is corrupt or truncated: its header describes {end:,} bytes of tensor data "
                             f"but the file holds {data_size:,}; re-download or re-export the file")


def _entry_span(path: Path, name: str, entry, data_size: int) -> tuple[int, int]:
    bad = f"{path} has a lying safetensors header: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise ModelLoadError(f"{bad} lacks dtype/shape/data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ModelLoadError(f"{bad} has dtype {dtype!r}, which this safetensors version does not know")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ModelLoadError(f"{bad} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise ModelLoadError(f"{bad} points at bytes {offsets!r} outside the {data_size:,} bytes of data "
                             f"(the file is truncated or corrupt)")
    numel = 1
    for d in shape:
        numel *= d
    bits = numel * DTYPE_BITS[dtype]
    if bits != 8 * (offsets[1] - offsets[0]):
        need = f"{bits // 8:,}" if bits % 8 == 0 else f"{bits / 8:,} (not a whole number of)"
        raise ModelLoadError(f"{bad} of shape {shape} and dtype {dtype} needs {need} bytes but its offsets "
                             f"span {offsets[1] - offsets[0]:,}")
    return offsets[0], offsets[1]
