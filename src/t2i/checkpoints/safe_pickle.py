"""Pickled checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`), read only through torch's weights-only loader.

`torch.load(weights_only=True)` unpickles with a restricted unpickler: tensors, storages and
plain containers only, every other global refused, so a `__reduce__` that would call os.system
never runs. Around it, t2i adds:
* torch >= 2.10 (older versions have published bypasses of the restricted unpickler);
* zip archives (every torch >= 1.6 checkpoint) are memory-mapped, so storages are views of the
  file and a size the file merely declares is never allocated;
* legacy (pre-1.6, non-zip) files allocate each storage at the size their pickle declares
  before reading it, so their declared sizes are summed first (by an unpickler that resolves
  no global at all) and must fit in the file;
* messages that say what was refused and never pass on torch's advice to load unsafely.

Used by t2i.checkpoints.safe_load, the one entry point for weight files.
"""
from __future__ import annotations

import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import torch

from t2i.errors import ModelLoadError

# torch versions before 2.10 have published `weights_only` bypasses (see INTEROP.md).
MIN_TORCH_FOR_PICKLES = (2, 10)
_OPCODE_NAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
# torch's messages advise loading unsafely; those lines never reach a t2i message.
_UNSAFE_ADVICE = ("weights_only", "safe_globals", "trusted source", "trust the source", "arbitrary code")


def load_pickle(path: Path) -> object:
    """What the pickle at `path` holds, on the CPU; ModelLoadError naming the file otherwise."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    if version < MIN_TORCH_FOR_PICKLES:
        raise ModelLoadError(f"refusing to unpickle {path}: torch {torch.__version__} has known bypasses of its "
                             f"safe loader; upgrade torch to >= 2.10 or convert the file to safetensors")
    archive = zipfile.is_zipfile(path)
    if not archive:
        _check_legacy_sizes(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"refused to load {path}: it needs more than tensors and plain containers to unpickle "
            f"({refusal_reason(str(err))}), which could run code hidden in the file. t2i loads pickles only "
            f"through torch's weights-only loader; ask for a .safetensors version of the file") from err
    except Exception as err:  # corrupt zip, truncated stream, not a pickle at all, ...
        if "TorchScript" in str(err):
            raise ModelLoadError(f"refused to load {path}: it is a TorchScript archive (a program), not a file of "
                                 f"weights") from err
        raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint ({type(err).__name__}: "
                             f"{short_message(err)}); the file is corrupt, truncated or not a checkpoint") from err


def refusal_reason(text: str) -> str:
    """What torch's weights-only unpickler refused (a global, an opcode), without its advice."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it names {found.group(1)}"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        code = int(found.group(1))
        return f"it uses the pickle opcode {_OPCODE_NAMES.get(code, code)}"
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if found:
        reason = re.split(r"\. |Please|weights_only|allowlist|safe_globals|trust", found.group(1))[0].strip(" .")
        if reason:
            return reason
    return "a construct the safe loader does not allow"


def short_message(err: BaseException, limit: int = 300) -> str:
    """The first line of an error's message that gives no advice to load unsafely, shortened."""
    for line in str(err).splitlines():
        line = line.strip()
        if line and not any(word in line for word in _UNSAFE_ADVICE):
            return line if len(line) <= limit else line[:limit] + "..."
    return type(err).__name__


# ----------------------------------------------------------------------------- legacy format


class _Stub:
    """What calling a _Global gives: building it (BUILD) does nothing."""

    def __setstate__(self, state):
        pass


class _Global:
    """Stands for every global a scanned pickle names (a small object, not a class, so a file
    naming a million globals costs no more than its own size): calling it does nothing."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        return _Stub()


class _SizeScanner(pickle.Unpickler):
    """Unpickles with no global resolved (each is a _Stub) and records what storages declare."""

    def __init__(self, file):
        super().__init__(file)
        self.declared = 0

    def find_class(self, module, name):
        return _Global(str(name))  # never the real object: nothing can run

    def persistent_load(self, pid):
        # torch's legacy persistent id: ("storage", storage type, key, location, numel[, view])
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[4], int):
            self.declared += max(pid[4], 0) * _element_size(getattr(pid[1], "name", ""))
        return None


def _element_size(storage_type: str) -> int:
    for prefix, size in (("Double", 8), ("Long", 8), ("ComplexDouble", 16), ("ComplexFloat", 8), ("Float", 4),
                         ("Int", 4), ("Half", 2), ("BFloat16", 2), ("Short", 2)):
        if storage_type.startswith(prefix):
            return size
    return 1


def _check_legacy_sizes(path: Path) -> None:
    """ModelLoadError when a legacy checkpoint's storages declare more bytes than the file holds
    (torch would allocate them all before finding out). A file the scan cannot read is left to
    torch's own loader, which refuses it with its own message."""
    size = path.stat().st_size
    scanner = None
    try:
        with open(path, "rb") as f:
            for _ in range(4):  # magic number, protocol, system info, then the objects
                scanner = _SizeScanner(f)
                scanner.load()
                if scanner.declared:
                    break
    except Exception:  # noqa: BLE001 - not a readable legacy file; torch.load will say what is wrong
        pass
    declared = scanner.declared if scanner else 0
    if declared > size:
        raise ModelLoadError(f"{path} is corrupt: its tensors declare {declared:,} bytes but the file holds "
                             f"{size:,}; re-download or re-export the file")
