"""Starting `t2i serve` as a subprocess on 127.0.0.1 with an ephemeral port, for the API tests
and benchmarks: the server is used only through its front door (HTTP)."""
from __future__ import annotations

import base64
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

READY_RE = re.compile(r"listening on http://[^:]+:(\d+)")


class Server:
    def __init__(self, workdir: Path, *args: str, env: dict | None = None, wait_ready: bool = True,
                 timeout: float = 120.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.outdir = self.workdir / "out"
        self.args = list(args)
        self.log = self.workdir / "server.log"
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        command = [sys.executable, "-m", "t2i.interfaces.cli", "serve", "--port", "0", "--outdir", str(self.outdir),
                   "--threads", "1", *self.args]
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(command, cwd=self.workdir, stdout=subprocess.PIPE, stderr=self._log_file,
                                     env=full_env, text=True)
        self.port = self._read_port(timeout)
        self.url = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            self.wait_ready(timeout)

    def _read_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
                continue
            match = READY_RE.search(line)
            if match:
                return int(match.group(1))
        raise RuntimeError("server did not start in time")

    def wait_ready(self, timeout: float = 120.0, auth=None) -> None:
        """Until /health says every worker has loaded its model."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", auth=auth, timeout=5).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError("server workers not ready in time")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120), **kw)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def png_b64(image, prefix: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if prefix else text


def image_of(b64: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64)))
