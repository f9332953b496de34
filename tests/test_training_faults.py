"""Training runs survive faults: kill -9 at chosen moments (while a checkpoint or the latent cache
is being written), a failing checkpoint write (a file-size limit: the disk-full path), and damaged
caches. Each time `t2i train --resume` removes the temporaries, continues from the newest
complete checkpoint and ends with weights bit-identical to an uninterrupted run.

The CLI runs as a subprocess (tests/fault_harness.py finds the moments with inotify, Linux only).
"""
import random
import subprocess
import sys
import textwrap

import pytest
import torch

import fault_harness as fh
from test_trainer import tiny_train_config
from t2i.training.ldm import train_ldm

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and RLIMIT_FSIZE are Linux's")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny config and an uninterrupted run of it through the CLI."""
    root = tmp_path_factory.mktemp("faults")
    config = root / "tiny.yaml"
    config.write_text(fh.TINY_LDM)
    done = fh.train(config, root / "straight")
    assert done.returncode == 0, done.stderr
    return config, fh.model_weights(root / "straight")


@linux_only
def test_three_kills_then_resume_gives_identical_weights_and_no_temporaries(reference, tmp_path):
    config, expected = reference
    outdir = tmp_path / "run"
    outdir.mkdir()
    rng = random.Random(12)
    vae_nth, unet_nth = rng.choice([2, 3]), rng.choice([1, 2, 3])
    # (what the kill interrupts, the temporary to wait for, which one of them, then the newest
    # complete checkpoints: saves come at steps 2, 4, 6 of each stage)
    plan = [("vae checkpoint", "-vae.ckpt", vae_nth, {"vae": 2 * (vae_nth - 1), "unet": None}),
            ("latent cache", "-latents.pt", 1, {"vae": 6, "unet": None}),
            ("unet checkpoint", "-unet.ckpt", unet_nth, {"vae": 6, "unet": 2 * (unet_nth - 1) or None})]
    watch = fh.Watch(outdir)
    try:
        for i, (what, suffix, nth, steps) in enumerate(plan):
            proc = fh.start(config, outdir, resume=i > 0)
            killed = fh.kill_when(proc, watch, fh.temp_of(suffix), nth=nth)
            assert killed is not None, f"the run ended before the {what} was written"
            assert fh.leftovers(outdir), f"the kill came after the {what} was complete"
            assert {k: fh.checkpoint_step(outdir / f"{k}.ckpt") for k in steps} == steps, what
            assert (outdir / "latents.pt").is_file() == (i == 2) and not (outdir / "model").exists()
    finally:
        watch.close()
    resumed = fh.train(config, outdir, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "temporary file(s) an interrupted run left" in resumed.stderr
    assert fh.leftovers(outdir) == []
    assert fh.model_weights(outdir) == expected


@linux_only
def test_failing_checkpoint_write_keeps_the_previous_one_and_resume_continues(reference, tmp_path):
    """Once the first unet checkpoint exists, the run's files may grow to 1 MB only (the 30 MB
    checkpoint then fails as on a full disk): one clear error line, the old checkpoint intact."""
    config, expected = reference
    outdir = tmp_path / "run"
    wrapper = tmp_path / "limited.py"
    wrapper.write_text(textwrap.dedent(f"""\
        import os, resource, runpy, signal, sys, threading, time
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG

        def arm():
            while not os.path.exists({str(outdir / "unet.ckpt")!r}):
                time.sleep(0.001)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.RLIM_INFINITY))

        threading.Thread(target=arm, daemon=True).start()
        sys.argv = ["t2i", *sys.argv[1:]]
        runpy.run_module("t2i.interfaces.cli", run_name="__main__")
        """))
    cmd = [sys.executable, str(wrapper), "train", str(config), "--outdir", str(outdir)]
    failed = subprocess.run(cmd, env=fh.env(), capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("t2i train: error: cannot write ") and "unet.ckpt" in last and "size limit" in last
    assert "Traceback" not in failed.stderr and "unexpected pos" not in failed.stderr
    assert fh.checkpoint_step(outdir / "unet.ckpt") == 2  # the first checkpoint, complete
    assert fh.leftovers(outdir) == []  # the failed write cleaned up after itself
    resumed = fh.train(config, outdir, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert fh.model_weights(outdir) == expected


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_latent_cache_and_temporaries_are_handled_on_resume(tmp_path, damage):
    """A 0-byte `latents.pt` (an older t2i killed while writing it in place) or a truncated one is
    rebuilt on resume, not fatal; temporaries of a killed run are removed."""
    cfg = tiny_train_config()
    straight = train_ldm(cfg, tmp_path / "a")
    run = tmp_path / "b"
    train_ldm(cfg, run, stop_after={"unet": 2})
    cache = run / "latents.pt"
    good = torch.load(cache, weights_only=True)
    cache.write_bytes(b"" if damage == "empty" else cache.read_bytes()[: cache.stat().st_size // 2])
    (run / ".t2i-tmp-0badf00d-unet.ckpt").write_bytes(b"half a checkpoint")
    (run / "cache" / ".t2i-tmp-0badf00d-shapes.pt").write_bytes(b"")
    (run / ".t2i-tmp-0badf00d-model").mkdir()
    resumed = train_ldm(cfg, run, resume=True)
    assert torch.equal(torch.load(cache, weights_only=True), good)
    assert fh.leftovers(run) == []
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
