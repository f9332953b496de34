"""Start-up (issue 16, item 2): a single file's weights cast in a thread while the libraries
import (t2i.checkpoints.preload), used by the loader only when they are exactly what it would
have made. Tiny files; no timings here (benchmarks/cold_start.py measures them)."""
import os

import pytest
import torch

from t2i.checkpoints import preload
from t2i.errors import ModelLoadError
from t2i.runtime import Runtime

BF16_CL = Runtime(torch.device("cpu"), torch.bfloat16, channels_last=True, text_dtype=torch.float32,
                  reason="test: bf16 + channels_last")


@pytest.fixture(autouse=True)
def no_leftovers(monkeypatch):
    monkeypatch.setenv("T2I_PRELOAD", "1")  # opt-in (off by default)
    preload.discard_all()  # what in-process CLI runs of other test files left
    yield
    preload.discard_all()


def _pending_state(path):
    job = preload._PENDING[path.resolve()]
    job.thread.join()
    return job.state


def _same_model(a, b):
    for part in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), (part, key)
            assert sa[key].is_contiguous(memory_format=torch.channels_last) == \
                sb[key].is_contiguous(memory_format=torch.channels_last), (part, key)


@pytest.mark.parametrize("runtime", [Runtime.auto("full", "cpu"), BF16_CL], ids=["float32", "bf16-cl"])
def test_preloaded_weights_are_used_and_equal_a_direct_load(sd_file, runtime):
    from t2i.checkpoints.single_file import load_single_file

    path, folder = sd_file
    assert preload.start_preload(path, runtime=runtime) is not None
    cast = _pending_state(path)
    conv = cast["model.diffusion_model.input_blocks.0.0.weight"]
    assert conv.dtype == runtime.dtype
    model = load_single_file(path, config_dir=folder, runtime=runtime)
    assert model.unet.conv_in.weight.data_ptr() == conv.data_ptr()  # the preloaded tensor itself
    assert not preload._PENDING  # taken once
    _same_model(model, load_single_file(path, config_dir=folder, runtime=runtime))  # no preload this time


def test_a_preload_for_other_dtypes_or_a_changed_file_is_not_used(sd_file, tmp_path):
    from t2i.checkpoints.single_file import load_single_file

    path, folder = sd_file
    preload.start_preload(path, "full", "cpu")  # float32 everywhere ...
    cast = _pending_state(path)
    model = load_single_file(path, config_dir=folder, runtime=BF16_CL)  # ... but bf16 wanted: cast from the file
    assert model.unet.conv_in.weight.dtype == torch.bfloat16
    assert model.unet.conv_in.weight.data_ptr() != cast["model.diffusion_model.input_blocks.0.0.weight"].data_ptr()
    _same_model(model, load_single_file(path, config_dir=folder, runtime=BF16_CL))
    # the file replaced after the preload started: not used
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    preload.start_preload(copy, "full", "cpu")
    _pending_state(copy)
    os.utime(copy, ns=(1, 1))
    assert preload.take(copy, {}) is None


def test_nothing_to_preload(sd_file, tmp_path, monkeypatch):
    path, folder = sd_file
    assert preload.start_preload(None) is None
    assert preload.start_preload(folder) is None  # diffusers folders: not preloaded
    assert preload.start_preload(path, device="cuda") is None
    assert preload.start_preload(tmp_path / "missing.safetensors") is None
    lora = tmp_path / "lora.safetensors"  # no UNet tensors: nothing cast
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(lora))
    preload.start_preload(lora).join()
    assert not preload._PENDING  # nothing to offer: it left the table
    monkeypatch.delenv("T2I_PRELOAD")  # the default: off
    assert preload.start_preload(path) is None


def test_a_damaged_file_is_reported_by_the_loader_not_the_preload(tmp_path):
    from t2i.checkpoints.single_file import load_single_file

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    preload.start_preload(bad).join()
    assert not preload._PENDING  # the thread swallowed it and left nothing behind
    with pytest.raises(ModelLoadError):
        load_single_file(bad)


def test_the_cli_starts_the_preload_when_it_makes_its_session(sd_file):
    """`t2i generate --model FILE` starts the cast before the libraries import (make_session);
    `--device cuda` does not (the cast would be done on the device anyway)."""
    from t2i.interfaces.cli import build_parser
    from t2i.interfaces.cli.common import make_session

    path, _ = sd_file
    parser = build_parser(only="generate")
    make_session(parser.parse_args(["generate", "x", "--model", str(path), "--threads", "1"]))
    assert _pending_state(path)["model.diffusion_model.input_blocks.0.0.weight"].dtype == \
        Runtime.auto("auto", "cpu").for_model(type("M", (), {"unet": torch.nn.Linear(2, 2)})()).dtype
    preload._PENDING.clear()
    make_session(parser.parse_args(["generate", "x", "--model", str(path), "--device", "cuda"]))
    assert not preload._PENDING


def test_a_preload_nobody_takes_does_not_outlive_its_command(sd_file, tmp_path):
    """One preload at a time; a file that is not an SD checkpoint leaves the table as soon as its
    thread knows; and a CLI command that ends before loading (here: a bad flag value) drops its own."""
    from safetensors.torch import save_file

    from t2i.interfaces.cli import main

    path, _ = sd_file
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, lora)
    preload.start_preload(lora).join()
    assert not preload._PENDING
    preload.start_preload(path)
    second = preload.start_preload(path)  # the first one's job is dropped, not kept beside it
    assert list(preload._PENDING) == [path.resolve()] and preload._PENDING[path.resolve()].thread is second
    assert main(["generate", "x", "--model", str(path), "--steps", "0"]) != 0
    assert not preload._PENDING
