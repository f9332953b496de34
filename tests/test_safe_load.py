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


# --------------------------------------------------------------------------- limits and the library's word


def _header_file(path, header: bytes, body: bytes = b""):
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


@pytest.mark.parametrize("size", [0, 1, 7])
def test_files_under_8_bytes_are_a_clear_error_everywhere(tmp_path, size):
    from t2i.checkpoints.safe_load import sniff_format

    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01" * size)
    for load in (load_state_dict_file, read_safetensors_header, sniff_format):
        with pytest.raises(ModelLoadError, match=r"tiny\.safetensors is empty or truncated"):
            load(path)


def test_deeply_nested_header_is_refused_before_parsing(tmp_path):
    path = _header_file(tmp_path / "deep.safetensors", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(ModelLoadError, match="nested deeper than a safetensors header can be"):
        load_state_dict_file(path)


def test_a_million_entries_are_refused_from_the_bytes(tmp_path):
    entries = ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(1_000_000))
    path = _header_file(tmp_path / "many.safetensors", ("{" + entries + "}").encode())
    with pytest.raises(ModelLoadError, match=r"oversized safetensors header .*at most 50,000 tensors"):
        load_state_dict_file(path)


@pytest.mark.parametrize("dtype, raw", [("F8_E8M0", bytes([127, 128, 126])), ("C64", bytes(24)), ("F16", bytes(6))])
def test_t2i_accepts_what_the_safetensors_library_accepts(tmp_path, dtype, raw):
    """t2i's own checks only explain the library's refusals: a dtype the installed safetensors
    knows (F8_E8M0 and C64 since 0.6) loads; one it does not know is its refusal, said clearly."""
    from safetensors import safe_open

    path = _header_file(tmp_path / f"{dtype}.safetensors",
                        json.dumps({"t": {"dtype": dtype, "shape": [3], "data_offsets": [0, len(raw)]}}).encode(), raw)
    try:
        with safe_open(str(path), framework="pt") as f:
            expected = f.get_tensor("t")
    except Exception:  # this safetensors (or torch) version does not know the dtype
        with pytest.raises(ModelLoadError, match=f"{dtype}.safetensors"):
            load_state_dict_file(path)
        return
    assert torch.equal(load_state_dict_file(path)["t"].view(torch.uint8), expected.view(torch.uint8))
    assert read_safetensors_header(path)[0]["t"]["dtype"] == dtype


def test_f16_relabelled_i16_is_a_load_error_not_a_traceback(tmp_path):
    """A valid safetensors file whose float tensors claim an integer dtype: the library accepts
    it, so the model loaders must refuse it (strictly) themselves."""
    from t2i.checkpoints.family_file import load_family_file, save_family_file
    from t2i.models.vae import ConvVAE, ConvVAEConfig

    path = tmp_path / "vae.safetensors"
    save_family_file(ConvVAE(ConvVAEConfig(resolution=16, channels=(8, 8), latent_dim=4, norm_groups=4)).half(), path)
    _rewrite_header(path, lambda h: [e.__setitem__("dtype", "I16") for k, e in h.items() if k != "__metadata__"])
    with pytest.raises(ModelLoadError, match=r"vae\.safetensors does not fit .*wrong kind of dtype .*int16"):
        load_family_file(ConvVAE, path)


def test_a_pickle_named_safetensors_is_never_unpickled(tmp_path):
    marker, path = tmp_path / "pwned.txt", tmp_path / "model.safetensors"
    _write_torch_zip(path, SystemTouch(marker))
    with pytest.raises(ModelLoadError, match="named like a safetensors file but is not one"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_no_message_suggests_loading_unsafely(tmp_path):
    """torch's refusals advise `weights_only=False` and allow-listing globals: t2i passes on what
    was refused, never that advice."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from fuzz_pickles import malicious_pickles

    for kind, data in malicious_pickles(tmp_path / "marker").items():
        path = tmp_path / f"{kind}.ckpt"
        path.write_bytes(data)
        with pytest.raises(ModelLoadError) as info:
            load_state_dict_file(path)
        message = str(info.value)
        assert str(path) in message, kind
        for advice in ("weights_only=False", "weights_only` set to `False", "safe_globals", "trusted source"):
            assert advice not in message, (kind, message)
    assert not (tmp_path / "marker").exists()


def test_legacy_pickle_declaring_more_than_the_file_is_refused_before_allocating(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    huge = b"\x8a\x06" + (2**40).to_bytes(6, "little")
    path.write_bytes(data.replace(b"X\x03\x00\x00\x00cpuq\x06K\x03N", b"X\x03\x00\x00\x00cpuq\x06" + huge + b"N", 1))
    with pytest.raises(ModelLoadError, match=r"old\.pt is corrupt: its tensors declare 4,398,046,511,104 bytes"):
        load_state_dict_file(path)


def test_damaged_training_checkpoint_on_resume_is_a_load_error(tmp_path):
    from t2i.training.trainer import OptimConfig, Trainer

    module = torch.nn.Linear(3, 3)
    trainer = Trainer("vae", {"vae": module}, OptimConfig(steps=2), tmp_path, 0, {})
    trainer.save()
    state = torch.load(trainer.checkpoint_path, weights_only=True)
    for damage in ({**state, "step": "3"}, {**state, "modules": {"vae": {"weight": torch.ones(2, 2)}}},
                   {k: v for k, v in state.items() if k != "optimizer"}, [state]):
        torch.save(damage, trainer.checkpoint_path)
        with pytest.raises(ModelLoadError, match=r"vae\.ckpt"):
            trainer.load()
    trainer.checkpoint_path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty or truncated"):
        trainer.load()
