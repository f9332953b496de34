"""`--compile` with the compile cache (t2i.compile_cache): the first process compiles and records
the entry, a second process loads it (no g++ run, no graph lowering), a damaged file is ignored and
compiled again, and the images equal the uncompiled ones.

The end-to-end test compiles the tiny test model once (1 step, 32x32 pixels): 2-5 minutes on a
loaded 2-core machine; the cached runs take under a minute each. The entry's checks
are also tested without any compiling, on fake files.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2i.compile_cache import INDUCTOR, RECORD, CompileCache

HAS_CXX = any(shutil.which(name) for name in (os.environ.get("CXX") or "g++", "g++", "clang++", "c++"))


def cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=900, check=False)


def generate(model_dir, outdir, *extra):
    out = cli("generate", "a red circle above a blue square", "--model", model_dir, "--steps", 1, "--seed", 11,
              "--threads", 1, "--outdir", outdir, *extra)
    assert out.returncode == 0, out.stderr[-3000:]
    png = [p for p in out.stdout.split() if p.endswith(".png")]
    assert len(png) == 1, out.stdout
    return out.stdout + out.stderr, np.asarray(Image.open(png[0]).convert("RGB")).astype(int)


def entry_of(root: Path) -> Path:
    entries = [p for p in root.iterdir() if p.is_dir()]
    assert len(entries) == 1, entries
    return entries[0]


def record_of(entry: Path) -> dict:
    return json.loads((entry / RECORD).read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.skipif(not HAS_CXX, reason="torch.compile on a CPU needs a C++ compiler")
def test_second_process_loads_the_compiled_unet_from_the_cache(tiny_model_dir, tmp_path):
    root = tmp_path / "compile-cache"
    plain_text, plain = generate(tiny_model_dir, tmp_path / "plain")
    assert "compil" not in plain_text.lower()

    first_text, first = generate(tiny_model_dir, tmp_path / "first", "--compile", "--compile-cache", root)
    assert "(UNet compiled now)" in first_text  # on the summary line
    entry = entry_of(root)
    record = record_of(entry)
    assert record["shapes"] == ["2x4x16x16"]  # one image with CFG at the model's 32 px: 16x16 latents
    kernels = [rel for rel in record["files"] if rel.endswith(".so")]
    assert kernels and any(rel.startswith("fxgraph/") for rel in record["files"])
    assert all(sha256(entry / INDUCTOR / rel) == digest for rel, digest in record["files"].items())

    second_text, second = generate(tiny_model_dir, tmp_path / "second", "--compile", "--compile-cache", root)
    assert "(UNet compile from the cache)" in second_text and "UNet from the compile cache" in second_text
    assert "compiled now" not in second_text and "note:" not in second_text
    assert record_of(entry)["files"] == record["files"]  # nothing compiled, nothing added

    # Inductor fuses ops and may sum in another order than eager torch: float32 results then
    # differ by ~1e-6 relative, which can move a pixel across a rounding boundary of the 8-bit
    # image, by 1. Anything more would be a wrong compile.
    assert np.abs(first - plain).max() <= 1 and np.abs(second - plain).max() <= 1
    assert np.array_equal(first, second)  # the same compiled code

    # A damaged kernel: noted in one line, removed before torch imports it, compiled again alone.
    damaged = entry / INDUCTOR / kernels[0]
    damaged.write_bytes(b"\x00not an ELF file" * 64)
    third_text, third = generate(tiny_model_dir, tmp_path / "third", "--compile", "--compile-cache", root)
    notes = [line for line in third_text.splitlines() if "damaged" in line]
    assert len(notes) == 1 and kernels[0] in notes[0] and "compiled again" in notes[0]
    assert "Traceback" not in third_text
    assert damaged.read_bytes()[:4] == b"\x7fELF"  # built again
    assert record_of(entry)["files"][kernels[0]] == sha256(damaged)
    assert np.array_equal(third, second)
    # (an unreadable or stale record throws the whole entry away: tested below without compiling)


# ----------------------------------------------------------------------------- the entry's checks


@pytest.fixture
def cache_env(monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # CompileCache.open sets it; undone after


def fake_compile(cache: CompileCache, names=("ab/kernel.so", "fxgraph/x/y/graph")) -> None:
    for name in names:
        path = cache.folder / INDUCTOR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(name.encode() * 10)


def test_entry_is_recorded_checked_and_repaired(tiny_loaded, tmp_path, cache_env):
    unet, notes = tiny_loaded.model.unet, []
    cache = CompileCache.open(tmp_path, unet, notes.append, model="tiny")
    assert cache.state == "new" and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((cache.folder / INDUCTOR).resolve())
    fake_compile(cache)
    assert cache.commit("2x4x16x16")
    record = record_of(cache.folder)
    assert sorted(record["files"]) == ["ab/kernel.so", "fxgraph/x/y/graph"] and record["model"] == "tiny"
    assert record["key"]["dtype"] == "float32" and record["key"]["torch"]

    again = CompileCache.open(tmp_path, unet, notes.append)
    assert again.folder == cache.folder and again.state == "hit" and again.shapes == ["2x4x16x16"] and not notes

    (cache.folder / INDUCTOR / "zz").mkdir()
    leftover = cache.folder / INDUCTOR / "zz" / "half-written.so"
    leftover.write_bytes(b"?")  # never recorded, from a killed process hours ago: removed, silently
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    running = cache.folder / INDUCTOR / "zz" / "being-written.so"
    running.write_bytes(b"?")  # new: maybe another process's compile in progress: left alone
    (cache.folder / INDUCTOR / "ab" / "kernel.so").write_bytes(b"garbage")
    damaged = CompileCache.open(tmp_path, unet, notes.append)
    assert damaged.state == "rebuilt" and len(notes) == 1 and "ab/kernel.so damaged" in notes[0]
    assert not (cache.folder / INDUCTOR / "ab" / "kernel.so").exists()
    assert not leftover.exists() and running.exists()
    assert (cache.folder / INDUCTOR / "fxgraph" / "x" / "y" / "graph").exists()  # checked: kept

    record = record_of(cache.folder)
    record["key"]["torch"] = "0.0.1"
    (cache.folder / RECORD).write_text(json.dumps(record))
    stale = CompileCache.open(tmp_path, unet, notes.append)
    assert stale.state == "rebuilt" and "another torch, CPU or model" in notes[-1]
    assert not list((cache.folder / INDUCTOR).rglob("*"))

    fake_compile(stale)
    stale.commit()
    (cache.folder / RECORD).write_text("{not json")
    unreadable = CompileCache.open(tmp_path, unet, notes.append)
    assert unreadable.state == "rebuilt" and "ignored (its record is unreadable (JSONDecodeError))" in notes[-1]
    assert not list((cache.folder / INDUCTOR).rglob("*")) and len(notes) == 3

    assert CompileCache.open("off", unet, notes.append) is None


def test_a_cached_entry_torch_cannot_load_is_compiled_again(tiny_loaded, tmp_path, cache_env, monkeypatch):
    from t2i import speedups

    notes, calls = [], []

    def compile_unet(loaded, **kwargs):  # stands in for torch failing on a cached artefact once
        calls.append(kwargs)
        if len(calls) == 1:
            raise ImportError("kernel.so: invalid ELF header")
        return 1.5

    monkeypatch.setattr(speedups, "compile_unet", compile_unet)
    monkeypatch.setattr(speedups, "_check_cpp_compiler", lambda: None)
    entry = CompileCache.open(tmp_path, tiny_loaded.model.unet, notes.append)
    fake_compile(entry)
    entry.commit()
    report = speedups.compile_unet_cached(tiny_loaded, tmp_path, notes.append)
    assert len(calls) == 2 and report.seconds == 1.5 and report.cache.state == "rebuilt"
    assert any("could not be used (ImportError: kernel.so: invalid ELF header)" in n for n in notes)

    calls.clear()  # nothing came from the cache (a new entry): the failure is the compile's own
    with pytest.raises(ImportError):
        speedups.compile_unet_cached(tiny_loaded, tmp_path / "other", notes.append)
