"""Weight files are read without running code from them, and damage gives one clear error."""
import json
import os
import pickle
import struct
import subprocess
import time

import pytest
import torch
from safetensors.torch import save_file

from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.safe_load import load_state_dict_file, read_safetensors_header


# --------------------------------------------------------------------------- malicious pickles
# Each class's __reduce__ would create `marker` when unpickled by a plain pickle.load.


class SystemTouch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class ExecWrite:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


class SubprocessTouch:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


class EvalWrite:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({self.marker!r}).write_text('pwned')",)


def _write_torch_zip(path, payload):
    torch.save({"state_dict": {"model.diffusion_model.w": torch.ones(2)}, "extra": payload}, path)


def _write_torch_legacy(path, payload):
    torch.save({"state_dict": {"w": torch.ones(2), "hook": payload}}, path, _use_new_zipfile_serialization=False)


def _write_raw_pickle(path, payload):
    path.write_bytes(pickle.dumps(payload, protocol=2))


def _write_protocol0(path, payload):
    path.write_bytes(pickle.dumps({"w": payload}, protocol=0))  # a text pickle: no \x80 magic byte


MALICIOUS = [
    (SystemTouch, _write_torch_zip, "model.ckpt"),
    (ExecWrite, _write_torch_zip, "model.pt"),
    (SubprocessTouch, _write_torch_legacy, "model.pth"),
    (EvalWrite, _write_raw_pickle, "pytorch_model.bin"),
    (SystemTouch, _write_protocol0, "model.ckpt"),
    (ExecWrite, _write_raw_pickle, "disguised.safetensors"),  # a pickle wearing the safe suffix
]


@pytest.mark.parametrize("payload_cls, write, filename", MALICIOUS,
                         ids=[f"{c.__name__}-{w.__name__}-{f}" for c, w, f in MALICIOUS])
def test_code_carrying_pickles_are_refused_and_never_run(tmp_path, payload_cls, write, filename):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / filename
    write(path, payload_cls(marker))
    assert not marker.exists()
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "refused" in message or "cannot read" in message
    assert not marker.exists(), "the pickle's payload ran"


def test_refusal_names_the_forbidden_global(tmp_path):
    path = tmp_path / "model.ckpt"
    _write_torch_zip(path, SystemTouch(tmp_path / "x"))
    with pytest.raises(ModelLoadError, match=r"refused to load .*model\.ckpt.*(system|posix)"):
        load_state_dict_file(path)


def test_full_model_loader_refuses_a_malicious_checkpoint(tmp_path):
    from t2i.checkpoints.single_file import load_single_file

    marker, path = tmp_path / "pwned.txt", tmp_path / "sd.ckpt"
    _write_torch_zip(path, SubprocessTouch(marker))
    with pytest.raises(ModelLoadError, match="refused"):
        load_single_file(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- plain checkpoints


def test_weights_only_checkpoints_load_and_unwrap_state_dict(tmp_path):
    weights = {"a.weight": torch.randn(3, 2), "b.bias": torch.arange(4)}
    for name, legacy in (("zip.ckpt", False), ("legacy.pt", True)):
        path = tmp_path / name
        torch.save({"state_dict": {"state_dict": weights}, "epoch": 3, "global_step": 10}, path,
                   _use_new_zipfile_serialization=not legacy)
        state = load_state_dict_file(path)
        assert state.keys() == weights.keys()
        assert all(torch.equal(state[k], weights[k]) for k in weights)


def test_format_is_sniffed_not_taken_from_the_suffix(tmp_path):
    path = tmp_path / "renamed.ckpt"
    save_file({"x": torch.ones(2, 2)}, str(path))
    assert torch.equal(load_state_dict_file(path)["x"], torch.ones(2, 2))


def test_checkpoint_without_tensors_is_rejected(tmp_path):
    path = tmp_path / "config.pt"
    torch.save({"lr": 0.1, "steps": 10}, path)
    with pytest.raises(ModelLoadError, match="contains no tensors"):
        load_state_dict_file(path)


# --------------------------------------------------------------------------- damaged safetensors


def _valid(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.randn(4, 4), "b": torch.randn(8), "c": torch.zeros(2, dtype=torch.int64)}, str(path))
    return path


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _overlap(header):
    """Tensor b claims the first bytes of tensor a."""
    begin = header["a"]["data_offsets"][0]
    header["b"]["data_offsets"] = [begin, begin + 32]


def _set(name, field, value):
    return lambda header: header[name].__setitem__(field, value)


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-20]),
    "header-longer-than-file": lambda p: p.write_bytes(struct.pack("<Q", 10**9) + p.read_bytes()[8:]),
    "header-length-only": lambda p: p.write_bytes(p.read_bytes()[:8]),
    "not-json": lambda p: p.write_bytes(struct.pack("<Q", 8) + b"{garbage" + b"\0" * 64),
    "offsets-past-end": lambda p: _rewrite_header(p, _set("a", "data_offsets", [0, 10**6])),
    "offsets-overlap": lambda p: _rewrite_header(p, _overlap),
    "shape-disagrees-with-offsets": lambda p: _rewrite_header(p, _set("a", "shape", [5, 4])),
    "unknown-dtype": lambda p: _rewrite_header(p, _set("b", "dtype", "F128")),
    "negative-shape": lambda p: _rewrite_header(p, _set("b", "shape", [-8])),
    "empty": lambda p: p.write_bytes(b""),
    "text-file": lambda p: p.write_text("this is not a model\n" * 4),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_safetensors_give_one_clear_error_quickly(tmp_path, damage):
    path = _valid(tmp_path)
    DAMAGE[damage](path)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_file(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(info.value)


def test_lying_offsets_are_reported_as_such(tmp_path):
    path = _valid(tmp_path)
    DAMAGE["offsets-overlap"](path)
    with pytest.raises(ModelLoadError, match="lying safetensors header.*overlaps"):
        read_safetensors_header(path)


def test_random_bytes_ckpt_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelLoadError, match="noise.ckpt"):
        load_state_dict_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.safetensors")
