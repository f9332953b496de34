"""Start-up and load (issue 16, item 2): the model hash remembered by (path, size, mtime), each
component read straight into its final dtype and layout, weight files read ahead while the
libraries import. Tiny files; no timings here (benchmarks/cold_start.py measures them)."""
import hashlib
import json
import os
import subprocess
import sys

import torch

from t2i.checkpoints.hash_cache import cache_dir, sha256_of
from t2i.checkpoints.loaded import file_hash
from t2i.checkpoints.prefetch import prefetch, weight_files
from t2i.runtime import Runtime


def _write(path, data: bytes, mtime_ns: int | None = None):
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_hash_is_remembered_by_path_size_and_mtime(tmp_path):
    cache = tmp_path / "cache" / "hashes.json"
    model = tmp_path / "model.safetensors"
    _write(model, b"a" * 1000, mtime_ns=1_700_000_000_000_000_000)
    first = sha256_of(model, cache_file=cache, min_bytes=0)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    entry = json.loads(cache.read_text())["files"][str(model.resolve())]
    assert entry == {"size": 1000, "mtime_ns": 1_700_000_000_000_000_000, "sha256": first}
    # same size and mtime, other bytes: the remembered hash is what the web UI would show too
    _write(model, b"b" * 1000, mtime_ns=1_700_000_000_000_000_000)
    assert sha256_of(model, cache_file=cache, min_bytes=0) == first
    # a new mtime (the file was replaced): hashed again, and the entry updated
    _write(model, b"b" * 1000, mtime_ns=1_800_000_000_000_000_000)
    assert sha256_of(model, cache_file=cache, min_bytes=0) == hashlib.sha256(b"b" * 1000).hexdigest()
    # a new size with the old mtime: hashed again
    _write(model, b"b" * 999, mtime_ns=1_800_000_000_000_000_000)
    assert sha256_of(model, cache_file=cache, min_bytes=0) == hashlib.sha256(b"b" * 999).hexdigest()


def test_a_damaged_or_unwritable_cache_never_fails_a_load(tmp_path):
    model = tmp_path / "m.bin"
    _write(model, b"xyz" * 100)
    expected = hashlib.sha256(b"xyz" * 100).hexdigest()
    cache = tmp_path / "hashes.json"
    for junk in (b"{not json", b"[1, 2]", b'{"version": 1, "files": []}', b"\x00\xff" * 10):
        cache.write_bytes(junk)
        assert sha256_of(model, cache_file=cache, min_bytes=0) == expected
        assert json.loads(cache.read_text())["files"][str(model.resolve())]["sha256"] == expected  # rewritten
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert sha256_of(model, cache_file=blocker / "sub" / "hashes.json", min_bytes=0) == expected


def test_small_files_are_not_cached_and_file_hash_is_the_web_ui_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("T2I_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    model = tmp_path / "small.safetensors"
    _write(model, b"q" * 4096)
    assert file_hash(model) == hashlib.sha256(b"q" * 4096).hexdigest()[:10]
    assert not (tmp_path / "c").exists()  # below MIN_CACHED_BYTES: hashed directly, nothing written


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("T2I_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "t2i"


def test_prefetch_reads_files_and_model_folders(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 100)
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "model_index.json").write_text("{}")
    assert weight_files(folder) == [folder / "unet" / "diffusion_pytorch_model.safetensors"]
    single = tmp_path / "one.ckpt"
    single.write_bytes(b"1" * 100)
    thread = prefetch(single, folder, None)
    assert thread is not None
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert prefetch(tmp_path / "missing.safetensors", None) is None


BF16_CL = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True, text_dtype=torch.float32,
                  reason="test: bf16 + channels_last")


def test_components_are_read_straight_into_their_final_dtype_and_layout(sd_file):
    """UNet and VAE in bf16 + channels_last, the text encoder in float32, each value the file's
    float16 cast once; `place` then finds nothing to convert (no second copy)."""
    from safetensors.torch import load_file

    from t2i.checkpoints.single_file import load_single_file, load_user_model

    path, folder = sd_file
    model = load_single_file(path, config_dir=folder, runtime=BF16_CL)
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.text_encoder.parameters()} == {torch.float32}
    conv = model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    file = load_file(str(path))
    assert torch.equal(conv, file["model.diffusion_model.input_blocks.0.0.weight"].to(torch.bfloat16))
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    BF16_CL.place(model)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs  # nothing copied again
    # through the public loader: the same result as loading in float32 and casting (old path)
    loaded = load_user_model(path, BF16_CL, config_dir=folder)
    old = load_single_file(path, config_dir=folder, dtype=torch.float32)
    BF16_CL.place(old)
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(loaded.model, part).state_dict(), getattr(old, part).state_dict()
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a), part


def test_small_unet_rule_applies_before_the_weights_are_read(sd_file):
    """A runtime whose small-UNet choice is float32 (the CPU rule for t2i-sized UNets) gives
    this tiny UNet float32 without channels_last, decided from the empty modules."""
    from t2i.checkpoints.single_file import load_user_model

    path, folder = sd_file
    runtime = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True, text_dtype=torch.float32,
                      small_unet_dtype=torch.float32)
    loaded = load_user_model(path, runtime, config_dir=folder)
    assert loaded.runtime.dtype == torch.float32 and not loaded.runtime.channels_last
    assert {p.dtype for p in loaded.model.unet.parameters()} == {torch.float32}
    assert loaded.model.unet.conv_in.weight.is_contiguous()


def test_generate_from_a_diffusers_folder_end_to_end(sd_file, tmp_path):
    """The CLI as a user runs it (prefetch, load straight into the runtime's dtypes): the image's
    Model hash is the web UI's hash of the UNet weights file."""
    from t2i.metadata import read_infotext

    _, folder = sd_file
    env = {**os.environ, "T2I_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "generate", "a red circle", "--model",
                          str(folder), "--steps", "2", "--width", "32", "--height", "32", "--seed", "3", "--outdir",
                          str(tmp_path / "out"), "--threads", "1"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    image = next((tmp_path / "out").glob("*.png"))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert f"Model hash: {hashlib.sha256(weights.read_bytes()).hexdigest()[:10]}" in read_infotext(image)


def test_cuda_default_is_float16_with_a_float16_vae():
    """Issue 16, GPU defaults (checked without a GPU: the choice is data): float16 UNet, VAE and
    text encoder; a VAE whose config asks for float32 (force_upcast) is float16 too, its
    overflowing calls redone in float32 (tests/test_vae_precision.py)."""
    from types import SimpleNamespace

    runtime = Runtime.auto("auto", "cuda")
    assert runtime.dtype == torch.float16 and not runtime.channels_last
    upcast = SimpleNamespace(config=SimpleNamespace(force_upcast=True))
    plain = SimpleNamespace(config=SimpleNamespace(force_upcast=False))
    assert runtime.placement("vae", upcast) == (torch.float16, torch.contiguous_format)
    assert runtime.placement("vae", plain)[0] == torch.float16
    assert runtime.placement("unet")[0] == runtime.placement("text_encoder")[0] == torch.float16
    assert Runtime.auto("full", "cuda").dtype == torch.float32
