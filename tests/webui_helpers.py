"""Driving the web UI of `t2i serve` in headless Chromium (Debian's, through Playwright; no browser
download): the server is started as a subprocess on 127.0.0.1 with an ephemeral port, exactly as a
user starts it, and used only through the page."""
from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("T2I_CHROMIUM", "/usr/bin/chromium")
# The flags Chromium needs on these machines: no sandbox as root, no GPU, and no background
# network traffic (the machine's closed network refuses it, many connections at a time).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
SHOTS = Path(os.environ.get("T2I_WEBUI_SHOTS", tempfile.gettempdir() + "/webui-shots"))


def need_browser():
    """Skip (with the reason) when Chromium or Playwright is missing; CI installs both (.ci/run)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                      args=CHROMIUM_ARGS, headless=True)


def open_page(browser, url: str, *, width: int = 1400, height: int = 1000, credentials=None, timeout: float = 60):
    context = browser.new_context(viewport={"width": width, "height": height}, http_credentials=credentials)
    page = context.new_page()
    page.set_default_timeout(timeout * 1000)
    page.goto(url)
    page.wait_for_selector("#txt2img_generate")
    page.wait_for_function("() => window.t2iStarted === true")
    return page


def shot(page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def set_number(page, elem_id: str, value) -> None:
    """A slider's or number box's value, typed as a user does (Enter commits it)."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def open_tab(page, name: str) -> None:
    """Click a tab by its label; at phone width Gradio moves the tabs that do not fit into a "More
    tabs" menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    item = page.locator(".overflow-dropdown button").filter(has_text=re.compile(f"^{re.escape(name)}$")).first
    item.locator("xpath=ancestor::span[contains(@class, 'overflow-menu')]").locator("button").first.click()
    item.click()


def wait_idle(page, tab: str, timeout: float = 120) -> None:
    """Until the tab's Generate button is back (its job, or its Generate forever, is over)."""
    page.locator(f"#{tab}_generate").wait_for(state="visible", timeout=timeout * 1000)


def last_run(page, tab: str) -> str | None:
    mark = page.locator(f"#{tab}_progress .t2i-done")
    return mark.first.get_attribute("data-run") if mark.count() else None


def generate(page, tab: str, *, timeout: float = 180, press: str | None = None) -> None:
    """Click the tab's Generate (or press `press` in its prompt) and wait until that generation is
    over: the page marks each finished generation with a new id."""
    before = last_run(page, tab)
    if press:
        page.locator(f"#{tab}_prompt textarea").press(press)
    else:
        page.click(f"#{tab}_generate")
    wait_for(lambda: last_run(page, tab) not in (None, before), timeout=timeout, what=f"the {tab} generation")
    wait_idle(page, tab)


def gallery_urls(page, tab: str) -> list[str]:
    return page.eval_on_selector_all(f"#{tab}_gallery img", "els => els.map(e => e.src)")


def fetch_image(page, url: str):
    from PIL import Image

    response = page.request.get(url)
    assert response.ok, f"{url}: {response.status}"
    image = Image.open(io.BytesIO(response.body()))
    image.load()
    return image


def wait_for(predicate, timeout: float = 60, every: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_server(workdir: Path, *args: str, auth: tuple[str, str] | None = None):
    """`t2i serve` (the API and the web UI at /) on an ephemeral port, ready for jobs."""
    from api_helpers import Server

    launcher = os.environ.get("T2I_WEBUI_SERVE_SCRIPT")  # a development stand-in for `t2i serve`
    env = {"T2I_API_AUTH": f"{auth[0]}:{auth[1]}"} if auth else None
    if launcher:
        server = _ScriptServer(launcher, workdir, *args, env=env, wait_ready=False)
    else:
        server = Server(workdir, *args, env=env, wait_ready=False)
    server.wait_ready(auth=auth)
    return server


def _ScriptServer(script, workdir, *args, env=None, wait_ready=False):
    import subprocess
    import sys

    from api_helpers import Server

    class ScriptServer(Server):
        def __init__(self):
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.outdir = self.workdir / "out"
            self.args = list(args)
            self.log = self.workdir / "server.log"
            full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                        **(env or {})}
            command = [sys.executable, script, "--port", "0", "--outdir", str(self.outdir), "--threads", "1",
                       *self.args]
            self._log_file = open(self.log, "ab")
            self.proc = subprocess.Popen(command, cwd=self.workdir, stdout=subprocess.PIPE, stderr=self._log_file,
                                         env=full_env, text=True)
            self.port = self._read_port(120)
            self.url = f"http://127.0.0.1:{self.port}"

    return ScriptServer()


def bomb_png(width: int = 10000, height: int = 10000) -> bytes:
    """A small PNG whose header claims width x height pixels (a decompression bomb: its few rows of
    data never decode to that, but a decoder would allocate for all of them)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)  # 64 rows of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
