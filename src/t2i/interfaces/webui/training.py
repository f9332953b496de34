"""Training runs started from the web UI: `t2i train` or `t2i finetune` in a child process (its
own interpreter, so a run never blocks the server, Stop ends it cleanly, and accelerate's
one-per-process mixed-precision setting is the run's own), one at a time, in OUTDIR/train/NAME
with its config, log, checkpoints and sample grids. The loss curve is read back from the log lines the
trainer writes ("[unet] step 20/200 loss 0.12345 ...")."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from t2i.errors import ParamError

# "[unet] step 20/200 loss 0.12345 lr ..." (every recipe), "[gan] step 6/40 d_loss 1.76 g_loss 0.70"
STEP_LINE = re.compile(r"\[(?P<stage>[\w-]+)\] step (?P<step>\d+)/\d+(?P<rest>[^\n\r\[]*)")
LOSS_VALUE = re.compile(r"\b(?P<name>\w*loss) (?P<value>[-+0-9.eE]+|nan|inf)\b")
STAGE_OVERRIDES = ("steps", "batch_size", "lr", "log_every", "sample_every", "checkpoint_every")


@dataclass
class Run:
    name: str
    folder: Path
    process: subprocess.Popen
    started: float

    @property
    def log(self) -> Path:
        return self.folder / "train.log"


def prepare_config(base: Path, folder: Path, overrides: dict, data_folder: str | None) -> Path:
    """The base config with the UI's overrides written into the run folder; every training stage
    (a section with `steps`) takes the stage overrides (0 / None: keep the config's)."""
    from t2i.config import read_yaml_mapping

    data = read_yaml_mapping(base)
    stages = [key for key, value in data.items() if isinstance(value, dict) and "steps" in value]
    if not stages:
        raise ParamError(f"{base.name} has no training stage (a section with `steps`)")
    for key in stages:
        for name in STAGE_OVERRIDES:
            if overrides.get(name):
                data[key][name] = overrides[name]
    if data_folder:
        if not isinstance(data.get("data"), dict) or "name" not in data["data"]:
            raise ParamError(f"{base.name} does not take a data folder (its data section has no `name`)")
        data["data"] = {**data["data"], "name": "folder", "folder": str(Path(data_folder).expanduser().resolve())}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class Trainer:
    """The server's one training run at a time."""

    def __init__(self, root: Path, threads: int | None = None):
        self.root = Path(root)
        self.threads = threads
        self._lock = threading.Lock()
        self.run: Run | None = None

    def running(self) -> bool:
        with self._lock:
            return self.run is not None and self.run.process.poll() is None

    def start(self, name: str, base: Path, overrides: dict, *, data_folder: str | None = None, resume: bool = False,
              budget_minutes: float = 0.0) -> Run:
        """`t2i train` of the config `base` with the UI's overrides, in OUTDIR/train/NAME."""
        def command(folder: Path) -> list[str]:
            if resume:
                config = folder / "config.yaml"
                if not config.is_file():
                    raise ParamError(f"no run {folder.name!r} to resume (no {config.name} in its folder)")
            else:
                config = prepare_config(base, folder, overrides, data_folder)
            extra = ["--resume"] if resume else []
            if budget_minutes:
                extra += ["--budget-minutes", str(budget_minutes)]
            return ["train", str(config), "--outdir", str(folder), *extra]

        return self._launch(name, resume, command)

    def start_finetune(self, name: str, config: dict, *, resume: bool = False) -> Run:
        """`t2i finetune` of a FinetuneConfig mapping (validated by the caller), in OUTDIR/train/NAME:
        a process of its own, since accelerate keeps one mixed-precision setting per process."""
        def command(folder: Path) -> list[str]:
            path = folder / "finetune.yaml"
            if resume:
                if not path.is_file():
                    raise ParamError(f"no fine-tuning run {folder.name!r} to resume (no {path.name} in its folder)")
            else:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(yaml.safe_dump({**config, "outdir": str(folder)}, sort_keys=False), encoding="utf-8")
            return ["finetune", str(path), *(["--resume"] if resume else [])]

        return self._launch(name, resume, command)

    def _launch(self, name: str, resume: bool, command) -> Run:
        """The run NAME's process (`t2i COMMAND...`, `command(folder)` gives its arguments), its
        output in the run folder's train.log; one run at a time."""
        from t2i.outputs import safe_filename_part

        clean = safe_filename_part(name or "", 60)
        if not clean:
            raise ParamError("give the run a name (letters, digits, - or _)")
        with self._lock:
            if self.run is not None and self.run.process.poll() is None:
                raise ParamError(f"training run {self.run.name!r} is running; stop it first")
            folder = self.root / clean
            if not resume and folder.exists() and any(folder.glob("*.ckpt")):
                raise ParamError(f"run {clean!r} exists; resume it or choose another name")
            args = [sys.executable, "-m", "t2i.interfaces.cli", *command(folder)]
            if self.threads:
                args += ["--threads", str(self.threads)]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
            log = open(folder / "train.log", "ab")
            try:
                process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
            finally:
                log.close()
            self.run = Run(clean, folder, process, time.time())
            return self.run

    def stop(self) -> bool:
        """Ask the run to stop (Ctrl-C); it keeps its last checkpoint, so Resume continues from it."""
        with self._lock:
            run = self.run
        if run is None or run.process.poll() is not None:
            return False
        run.process.send_signal(signal.SIGINT)
        try:
            run.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
        return True

    # ------------------------------------------------------------------------- reading a run

    def status(self) -> tuple[str, list[tuple[str, int, float]], list[str], str]:
        """(state line, [(stage, step, loss)], sample grid paths, the log's last lines)."""
        with self._lock:
            run = self.run
        if run is None:
            return "No training run started from this page yet.", [], [], ""
        code = run.process.poll()
        text = run.log.read_text(encoding="utf-8", errors="replace") if run.log.is_file() else ""
        losses = parse_losses(text)
        samples = sorted(str(p) for p in (run.folder / "samples").glob("*.png"))
        elapsed = time.time() - run.started
        if code is None:
            state = f"Training {run.name!r}: running for {elapsed:.0f} s"
        elif code == 0:
            state = f"Training {run.name!r}: finished"
        else:
            state = f"Training {run.name!r}: stopped (exit code {code})"
        if losses:
            stage, step, loss = losses[-1]
            state += f"; {stage} step {step}, loss {loss:.5f}"
        tail = "\n".join(line.rsplit("\r", 1)[-1] for line in text.splitlines()[-12:])
        return state, losses, samples, tail


def parse_losses(text: str) -> list[tuple[str, int, float]]:
    """[(series, step, loss)]: a series per stage and loss ("unet", "gan d_loss", "gan g_loss")."""
    out = []
    for line in STEP_LINE.finditer(text):
        for value in LOSS_VALUE.finditer(line["rest"]):
            series = line["stage"] if value["name"] == "loss" else f"{line['stage']} {value['name']}"
            try:
                out.append((series, int(line["step"]), float(value["value"])))
            except ValueError:
                continue
    return out
