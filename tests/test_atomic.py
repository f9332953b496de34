"""t2i.atomic: files and folders appear whole or not at all, with normal modes, and every
failure (an exception in the writer, a failing fsync or rename, a full disk, Ctrl-C) leaves the
old target untouched and no temporary behind."""
import errno
import os
import resource
import signal
import stat
from pathlib import Path

import pytest
import torch

from t2i import atomic
from t2i.atomic import (TMP_PREFIX, atomic_file, atomic_folder, atomic_path, remove_leftovers, write_bytes,
                        write_json, write_text)
from t2i.errors import OutputError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_file_is_written_with_normal_mode_and_no_temporary(tmp_path, umask_022):
    path = write_bytes(tmp_path / "sub" / "a.bin", b"hello")
    assert path.read_bytes() == b"hello"
    assert _mode(path) == 0o644 and _mode(tmp_path / "sub") == 0o755
    write_text(tmp_path / "b.txt", "héllo\n")
    write_json(tmp_path / "c.json", {"k": [1, 2]})
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "c.json").read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
    assert _names(tmp_path) == ["b.txt", "c.json", "sub"] and _names(tmp_path / "sub") == ["a.bin"]


def test_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        path = write_bytes(tmp_path / "private.bin", b"x")
        with atomic_folder(tmp_path / "private") as staging:
            (staging / "f").write_bytes(b"y")
    finally:
        os.umask(old)
    assert _mode(path) == 0o600 and _mode(tmp_path / "private") == 0o700


def test_writer_that_raises_midway_leaves_old_file_and_no_temporary(tmp_path):
    path = write_bytes(tmp_path / "model.ckpt", b"old contents")
    with pytest.raises(RuntimeError, match="bad tensor"):
        with atomic_file(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("bad tensor")
    assert path.read_bytes() == b"old contents"
    assert _names(tmp_path) == ["model.ckpt"]


def test_keyboard_interrupt_leaves_old_file_and_no_temporary(tmp_path):
    path = write_bytes(tmp_path / "a.png", b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as f:
            f.write(b"new")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["a.png"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failing_fsync_or_rename_is_an_output_error_and_changes_nothing(tmp_path, monkeypatch, failing):
    path = write_bytes(tmp_path / "unet.ckpt", b"complete checkpoint")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, failing, broken)
    with pytest.raises(OutputError, match=r"cannot write .*unet\.ckpt: Input/output error"):
        with atomic_file(path) as f:
            torch.save({"w": torch.ones(10)}, f)
    monkeypatch.undo()
    assert path.read_bytes() == b"complete checkpoint"
    assert _names(tmp_path) == ["unet.ckpt"]


def _torch_save(path, state):
    with atomic_file(path) as f:
        torch.save(state, f)


def _safetensors_save(path, state):
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(state, str(tmp))  # reports the error as SafetensorError("... (os error 27)")


def _streaming_save(path, state):
    from t2i.checkpoints.atomic_write import write_state_dict

    write_state_dict(path, state)


@pytest.mark.parametrize("save", [_torch_save, _safetensors_save, _streaming_save])
def test_full_disk_is_a_clear_output_error(tmp_path, save):
    """A file-size limit fails the write as a full disk does (EFBIG instead of ENOSPC); torch.save
    would report it as RuntimeError('unexpected pos ...'), safetensors as its own error type."""
    path = tmp_path / "big.bin"
    save(path, {"w": torch.zeros(4)})
    before = path.read_bytes()
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))
    try:
        with pytest.raises(OutputError) as info:
            save(path, {"w": torch.zeros(100_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(info.value)
    assert message == f"cannot write {path}: the file is larger than this system allows (a file-size limit); " \
                      "write elsewhere"
    assert path.read_bytes() == before and _names(tmp_path) == ["big.bin"]


def test_target_that_is_a_folder_or_under_a_file(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(OutputError, match=r"folder.* it is a folder"):
        write_bytes(tmp_path / "folder", b"x")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match=r"cannot create the folder .*file"):
        write_bytes(tmp_path / "file" / "x.png", b"x")
    assert isinstance(OutputError("x"), OSError)  # code catching OSError still catches it


def test_atomic_path_for_writers_that_open_the_file(tmp_path, umask_022):
    from safetensors.torch import load_file, save_file

    target = tmp_path / "m.safetensors"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX)
        save_file({"w": torch.ones(3)}, str(tmp))
    assert torch.equal(load_file(str(target))["w"], torch.ones(3)) and _mode(target) == 0o644
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            save_file({"w": torch.zeros(3)}, str(tmp))
            raise ValueError("late failure")
    assert torch.equal(load_file(str(target))["w"], torch.ones(3)) and _names(tmp_path) == ["m.safetensors"]


def test_folder_modes_replace_and_failure(tmp_path, umask_022):
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        assert staging.name.startswith(TMP_PREFIX)
        (staging / "unet").mkdir()
        (staging / "unet" / "w.bin").write_bytes(b"v1")
        os.close(os.open(staging / "unet" / "private.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))  # as safetensors does
    assert _mode(target) == 0o755 and (target / "unet" / "w.bin").read_bytes() == b"v1"
    assert _mode(target / "unet") == 0o755 and _mode(target / "unet" / "private.safetensors") == 0o644
    with pytest.raises(OutputError, match="already exists"):
        with atomic_folder(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_folder(target, replace=True) as staging:
            (staging / "half").write_bytes(b"")
            raise RuntimeError("failed halfway")
    assert (target / "unet" / "w.bin").read_bytes() == b"v1" and _names(tmp_path) == ["model"]
    with atomic_folder(target, replace=True) as staging:
        (staging / "new").write_bytes(b"v2")
    assert _names(target) == ["new"] and _names(tmp_path) == ["model"]
    # the model folders t2i writes (mkdtemp made them 0700 before t2i.atomic)
    from conftest import tiny_ldm_config
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    torch.manual_seed(0)
    save_ldm_folder(LatentDiffusion(tiny_ldm_config()), tmp_path / "ldm")
    assert _mode(tmp_path / "ldm") == 0o755
    assert {_mode(p) for p in (tmp_path / "ldm").rglob("*") if p.is_file()} == {0o644}
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OutputError, match="a file has that name"):
        with atomic_folder(tmp_path / "file", replace=True):
            pass


def test_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "w").write_bytes(b"old")
    real_replace, calls = os.replace, []

    def replace(src, dst):  # the new folder's rename into place fails (the old one is aside by then)
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OutputError, match="disk is full"):
        with atomic_folder(target, replace=True) as staging:
            (staging / "w").write_bytes(b"new")
    monkeypatch.undo()
    assert calls[0][0] == "model" and calls[1][1] == "model" and calls[2][1] == "model"  # aside, in (fails), back
    assert (target / "w").read_bytes() == b"old" and _names(tmp_path) == ["model"]


def test_remove_leftovers_takes_only_temporaries(tmp_path):
    (tmp_path / "cache").mkdir()
    keep = ["vae.ckpt", "notes.tmp", ".hidden", "cache/shapes.pt"]
    gone = [f"{TMP_PREFIX}1234abcd-vae.ckpt", f"cache/{TMP_PREFIX}99-shapes.pt", ".unet.ckpt.tmp4242"]
    for name in keep + gone:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"{TMP_PREFIX}00-model").mkdir()
    (tmp_path / f"{TMP_PREFIX}00-model" / "unet").mkdir()
    removed = remove_leftovers(tmp_path)
    assert len(removed) == 4
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == sorted(keep + ["cache"])
    assert remove_leftovers(tmp_path / "missing") == []
