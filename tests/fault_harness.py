"""Kill a real `t2i train` process at chosen moments and check what it leaves (used by
tests/test_training_faults.py and benchmarks/kill_resume.py; not a test module itself).

Moments are found with Linux inotify: the kill is sent the moment a file appears in the run
folder (a checkpoint's or the latent cache's temporary file, a staging folder), so it lands
while that file is being written rather than at a lucky time. Nothing in t2i knows about it:
no hook, no environment variable.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from t2i.atomic import TMP_PREFIX

IN_MOVED_TO, IN_CREATE = 0x80, 0x100
# A seconds-long LDM run (the family with a latent cache): checkpoints every 2 steps of 6 per stage.
TINY_LDM = """\
family: ldm
model:
  resolution: 32
  vae: {block_out_channels: [16, 16], layers_per_block: 1, latent_channels: 4, norm_num_groups: 8}
  unet: {block_out_channels: [16, 32], cross_attention: [false, true], layers_per_block: 1, attention_heads: 2,
         norm_num_groups: 8}
  text: {hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_length: 32}
data: {name: shapes, size: 32, seed: 0, p_two: 0.0}
vae: {steps: 6, batch_size: 4, crop: 16, lr: 0.001, warmup_steps: 1, log_every: 0, checkpoint_every: 2}
unet: {steps: 6, batch_size: 4, lr: 0.001, warmup_steps: 1, ema_decay: 0.9, log_every: 0, checkpoint_every: 2,
       encode_batch_size: 8}
seed: 0
"""


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def train_command(config: Path, outdir: Path, resume: bool = False, python_args: tuple[str, ...] = ()) -> list[str]:
    cmd = [sys.executable, *python_args, "-m", "t2i.interfaces.cli", "train", str(config), "--outdir", str(outdir)]
    return cmd + (["--resume"] if resume else [])


def train(config: Path, outdir: Path, resume: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, outdir, resume), env=env(), capture_output=True, text=True,
                          timeout=timeout)


class Watch:
    """Names created in (or renamed into) some folders, as they happen (Linux inotify)."""

    def __init__(self, *folders: Path):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for folder in folders:
            if self._libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_CREATE | IN_MOVED_TO) < 0:
                os.close(self.fd)
                raise OSError(ctypes.get_errno(), f"inotify_add_watch({folder}) failed")

    def names(self, timeout: float) -> list[str]:
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, pos = [], 0
        while pos < len(data):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            out.append(data[pos + 16:pos + 16 + length].rstrip(b"\0").decode())
            pos += 16 + length
        return out

    def close(self) -> None:
        os.close(self.fd)


def kill_when(proc: subprocess.Popen, watch: Watch, match: Callable[[str], bool], nth: int = 1,
              delay: float = 0.0, timeout: float = 300) -> str | None:
    """SIGKILL `proc` `delay` seconds after the `nth` name in the watched folder that `match`es;
    returns that name, or None when the process ended first."""
    seen, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for name in watch.names(0.2):
            if match(name):
                seen += 1
                if seen == nth:
                    if delay:
                        time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return name
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise TimeoutError("the training run neither matched nor ended")
    return None


def temp_of(suffix: str) -> Callable[[str], bool]:
    """Matches the temporary file (or staging folder) t2i.atomic makes for a target ending in `suffix`."""
    return lambda name: name.startswith(TMP_PREFIX) and name.endswith(suffix)


def start(config: Path, outdir: Path, resume: bool = False, log: Path | None = None) -> subprocess.Popen:
    """Start a training run; its output goes to `log` (or nowhere)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(train_command(config, outdir, resume), env=env(), stdout=out, stderr=out)
    finally:
        if log:
            out.close()  # the child holds its own copy


def leftovers(outdir: Path) -> list[Path]:
    return sorted(p for p in Path(outdir).rglob("*") if p.name.startswith(TMP_PREFIX))


def model_weights(outdir: Path) -> dict[str, bytes]:
    """The final model's weight files, byte for byte."""
    return {str(p.relative_to(outdir)): p.read_bytes() for p in sorted((Path(outdir) / "model").rglob("*.safetensors"))}


def checkpoint_step(path: Path) -> int | None:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["step"]) if path.is_file() else None
