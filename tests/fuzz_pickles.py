"""A corpus of malicious and hostile pickles for the loader fuzz test (test_fuzz_loaders.py).

Each payload, if it ever ran, would create `marker` (a file the test checks for after every
load): by os.system, exec, eval, subprocess, an open() for writing, or a chain of builtins. The
corpus covers the ways code gets into a pickle: REDUCE of any callable, INST and OBJ opcodes,
protocol 0 to 5, STACK_GLOBAL, getattr/import chains that reach os.system without naming it,
nested pickles, torch's zip and legacy formats and archives wrapped in archives, plus
structural attacks (memo bombs, deep nesting, self reference, declared sizes far beyond the file).

    for kind, data in malicious_pickles(marker).items(): ...   # {kind: file bytes}
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import torch

P2 = b"\x80\x02"  # protocol 2 header


def _s(text: str) -> bytes:
    """BINUNICODE: push a str."""
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _glob(module: str, name: str) -> bytes:
    """GLOBAL: push module.name (what an unrestricted unpickler imports and resolves)."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(func: bytes, *args: bytes) -> bytes:
    """func(*args) through MARK ... TUPLE REDUCE; `func` is the bytes that push the callable."""
    return func + b"(" + b"".join(args) + b"tR"


def _p2(body: bytes) -> bytes:
    return P2 + body + b"."


def _in_dict(value: bytes) -> bytes:
    """{"state_dict": {"w": value}}: the payload where a checkpoint's weights would be."""
    return b"}" + _s("state_dict") + b"}" + _s("w") + value + b"ss"


def _torch_zip(inner_pickle: bytes, base: bytes | None = None) -> bytes:
    """A torch zip archive (`base`, default one that torch.save wrote) whose data.pkl is replaced
    by `inner_pickle`."""
    base = base or _torch_save({"w": torch.ones(2)})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = inner_pickle if info.filename.endswith("/data.pkl") else src.read(info.filename)
            dst.writestr(info.filename, data)
    return out.getvalue()


class _Reduce:
    """An object whose pickle is `func(*args)`: the classic __reduce__ payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _torch_save(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _legacy_huge_storage() -> bytes:
    """A legacy-format checkpoint whose storage declares 2**40 floats (4 TiB) in a tiny file: an
    unguarded loader allocates the declared size before reading the data."""
    data = _torch_save({"w": torch.ones(3)}, legacy=True)
    huge = b"\x8a\x06" + (2**40).to_bytes(6, "little")  # LONG1
    data = data.replace(_s("cpu") + b"q\x06K\x03N", _s("cpu") + b"q\x06" + huge + b"N", 1)  # the persistent id's numel
    return data.replace(struct.pack("<q", 3), struct.pack("<q", 2**40))  # the storage record's own count


def _zip_huge_view() -> bytes:
    """A zip checkpoint whose tensor claims 2**40 elements of a 3-element storage."""
    base = _torch_save({"w": torch.ones(3)})
    with zipfile.ZipFile(io.BytesIO(base)) as z:
        inner = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    huge = b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"\x85"
    return _torch_zip(inner.replace(b"K\x03\x85", huge, 1), base)


def malicious_pickles(marker: Path) -> dict[str, bytes]:
    """{kind: file bytes}; every kind that carries code would create `marker` if unpickled unsafely."""
    m = str(marker)
    touch = f"touch {m}"
    write_py = f"open({m!r}, 'w').write('ran')"
    os_system = _glob("os", "system")
    corpus: dict[str, bytes] = {
        # -- code through REDUCE, by name
        "reduce-os-system": pickle.dumps(_Reduce(__import__("os").system, touch), protocol=2),
        "reduce-posix-system": _p2(_in_dict(_call(_glob("posix", "system"), _s(touch)))),
        "reduce-exec": _p2(_call(_glob("builtins", "exec"), _s(write_py))),
        "reduce-eval": _p2(_call(_glob("builtins", "eval"), _s(write_py))),
        "reduce-subprocess-call": _p2(_call(_glob("subprocess", "call"), b"](" + _s("touch") + _s(m) + b"e")),
        "reduce-subprocess-popen": _p2(_call(_glob("subprocess", "Popen"), b"](" + _s("touch") + _s(m) + b"e")),
        "reduce-subprocess-check-output": _p2(_call(_glob("subprocess", "check_output"), b"](" + _s("touch") + _s(m) + b"e")),
        "reduce-open-for-writing": _p2(_call(_glob("builtins", "open"), _s(m), _s("w"))),
        "reduce-code-interpreter": _p2(_call(_call(_glob("builtins", "getattr"), _call(_glob("code", "InteractiveInterpreter")),
                                                   _s("runsource")), _s(write_py))),
        "reduce-timeit": _p2(_call(_glob("timeit", "timeit"), _s(write_py), _s("pass"), _glob("time", "perf_counter"),
                                   b"K\x01")),
        "reduce-shutil-copyfile": _p2(_call(_glob("shutil", "copyfile"), _s("/dev/null"), _s(m))),
        "reduce-pathlib-touch": _p2(_call(_call(_glob("builtins", "getattr"), _call(_glob("pathlib", "Path"), _s(m)),
                                                _s("touch")))),
        # -- code through chains that never name os.system in a GLOBAL
        "getattr-import-chain": _p2(_call(_call(_glob("builtins", "getattr"),
                                                _call(_glob("builtins", "__import__"), _s("os")), _s("system")),
                                          _s(touch))),
        "importlib-import-module": _p2(_call(_call(_glob("builtins", "getattr"),
                                                   _call(_glob("importlib", "import_module"), _s("os")), _s("system")),
                                             _s(touch))),
        "functools-partial": _p2(_call(_call(_glob("functools", "partial"), os_system, _s(touch)))),
        "operator-methodcaller": _p2(_call(_call(_glob("operator", "methodcaller"), _s("system"), _s(touch)),
                                           _call(_glob("builtins", "__import__"), _s("os")))),
        "codecs-decoded-exec": _p2(_call(_glob("builtins", "exec"),
                                         _call(_glob("codecs", "decode"), _s(write_py.encode().hex()), _s("hex")))),
        "nested-pickle-loads": _p2(_call(_glob("pickle", "loads"),
                                         b"C" + bytes([len(_p2(_call(os_system, _s(touch))))])
                                         + _p2(_call(os_system, _s(touch))))),
        "torch-module-attribute": _p2(_call(_glob("torch.serialization", "_get_restore_location"), _s(touch))),
        # -- other opcodes and protocols
        "protocol0-text-reduce": b"cos\nsystem\n(V" + touch.encode() + b"\ntR.",
        "protocol0-inst": b"(V" + touch.encode() + b"\nios\nsystem\n.",
        "obj-opcode-popen": P2 + b"(" + _glob("subprocess", "Popen") + b"]" + b"(" + _s("touch") + _s(m) + b"eo.",
        "protocol4-stack-global": b"\x80\x04" + _s("os") + _s("system") + b"\x93" + _s(touch) + b"\x85R.",
        "protocol5-frames": pickle.dumps(_Reduce(__import__("os").system, touch), protocol=5),
        "ext-opcode": P2 + b"\x82\xf0" + b"(" + _s(touch) + b"tR.",  # copyreg extension code 240
        # -- inside torch's own formats
        "torch-zip-reduce": _torch_save({"state_dict": {"w": torch.ones(2)}, "x": _Reduce(__import__("os").system, touch)}),
        "torch-legacy-reduce": _torch_save({"w": torch.ones(2), "x": _Reduce(exec, write_py)}, legacy=True),
        "torch-zip-crafted-data-pkl": _torch_zip(_p2(_call(_glob("builtins", "eval"), _s(write_py)))),
        "torch-zip-persistent-id-global": _torch_zip(P2 + b"(" + _s("storage") + os_system + _s("0") + _s("cpu")
                                                     + b"K\x01tQ."),
        "torch-rebuild-from-type": _torch_zip(_p2(_call(_glob("torch._tensor", "_rebuild_from_type_v2"), os_system,
                                                        _glob("torch", "Tensor"), b"(" + _s(touch) + b"t", b"}"))),
        "zip-wrapped-in-zip": _zip_of({"model/archive.ckpt": _torch_save({"x": _Reduce(exec, write_py)})}),
        "torchscript-archive": _torchscript(),
        # -- structural attacks without code
        "memo-bomb": _torch_zip(_memo_bomb()),
        "deep-nesting": _torch_zip(_deep_nesting()),
        "self-referencing-state-dict": _torch_zip(pickle.dumps(_self_reference(), protocol=2)),
        "legacy-declared-4tib-storage": _legacy_huge_storage(),
        "zip-tensor-view-beyond-storage": _zip_huge_view(),
        "truncated-zip": _torch_save({"w": torch.ones(64)})[:300],
        "garbage-after-pickle-magic": P2 + bytes(range(256)) * 4,
    }
    return corpus


def _zip_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def _torchscript() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def _memo_bomb(levels: int = 64) -> bytes:
    """A list holding the previous list twice, 64 levels deep: 2**64 elements if expanded. Only
    opcodes the weights-only unpickler allows (lists, marks, memo), so it reaches t2i's code."""
    body = b"]q\x00"  # L0 = [], memo 0
    for i in range(1, levels):  # L_i = [L_i-1, L_i-1]; each stays on the stack, which STOP ignores
        body += b"]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e"
    body += b"}" + _s("state_dict") + b"}" + _s("w") + b"h" + bytes([levels - 1]) + b"ss"
    return P2 + body + b"."


def _deep_nesting(depth: int = 20_000) -> bytes:
    """[[[[...]]]] 20,000 levels, with allowed opcodes only; code that walks it recursively overflows."""
    return P2 + b"}" + _s("state_dict") + b"}" + _s("w") + b"](" * depth + b"e" * depth + b"ss."


def _self_reference() -> dict:
    state: dict = {}
    state["state_dict"] = state
    return state
