"""Write model files so that nothing is ever half-written or silently replaced.

`write_safetensors` streams tensors into a `.safetensors` file one at a time (the header is
computed first from names, dtypes and shapes), so writing a merge of three 2 GB models needs
memory for a few tensors, not for the models. The temporary file, fsync, rename and cleanup are
t2i.atomic's: a failure (full disk, Ctrl-C, a bad tensor) removes the temporary file and leaves
any old file untouched; a full disk is an OutputError naming the file.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N
bytes of JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str:
str}}` padded with spaces to a multiple of 8, then the raw little-endian tensor bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from t2i.atomic import atomic_file

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
# Room left free on the disk beyond the file itself, so a write never fills a disk to the brim.
DISK_MARGIN_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty((), dtype=self.dtype).element_size()


def check_output(path: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> Path:
    """Refuse an output that would destroy something: an existing path without `overwrite`, or
    one of the inputs. Returns the path; creates its parent folder."""
    path = Path(path)
    for source in inputs:
        if path.exists() and Path(source).exists() and os.path.samefile(path, source):
            raise ValueError(f"the output {path} is one of the inputs; write to a new file instead")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another output path or pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_MARGIN_BYTES:
        raise ValueError(f"not enough disk space in {folder}: the output needs {needed / 2**30:.2f} GiB, "
                         f"{free / 2**30:.2f} GiB are free; free some space or write elsewhere")


def _header(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    entries, offset = {}, 0
    for spec in specs:
        if spec.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {spec.name!r} has dtype {spec.dtype}, which safetensors cannot store")
        entries[spec.name] = {"dtype": SAFETENSORS_DTYPES[spec.dtype], "shape": list(spec.shape),
                              "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    if metadata:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise ValueError(f"safetensors metadata must map strings to strings; not so for {bad[:3]}")
        entries["__metadata__"] = metadata
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    # A uint8 view of the flat tensor: works for every dtype (numpy has no bfloat16).
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def write_safetensors(path: str | Path, specs: Iterable[TensorSpec], tensor_of: Callable[[TensorSpec], torch.Tensor],
                      metadata: dict[str, str] | None = None) -> str:
    """Write the tensors named by `specs` (in that order), each produced on demand by
    `tensor_of(spec)`, to `path` atomically. Returns the sha256 (hex) of the written file,
    computed while writing. The caller checks `path` first (see `check_output`)."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian data; this machine is big-endian")
    path = Path(path)
    specs = list(specs)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("two tensors share a name; a safetensors file needs unique names")
    header = _header(specs, metadata or {})
    check_free_space(path.parent, len(header) + sum(s.nbytes for s in specs))
    digest = hashlib.sha256(header)
    with atomic_file(path) as f:
        f.write(header)
        for spec in specs:
            tensor = tensor_of(spec)
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != tuple(spec.shape):
                raise RuntimeError(f"tensor {spec.name!r} came out as {tensor.dtype} {tuple(tensor.shape)}, "
                                   f"expected {spec.dtype} {spec.shape}")
            data = _tensor_bytes(tensor)
            f.write(data)
            digest.update(data)
    return digest.hexdigest()


def write_state_dict(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """`write_safetensors` for tensors already in memory, in sorted name order."""
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in sorted(state.items())]
    return write_safetensors(path, specs, lambda s: state[s.name], metadata)
