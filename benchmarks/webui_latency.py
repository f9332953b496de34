"""The web UI's latency and memory, against the REST API on the same server and machine.

    OMP_NUM_THREADS=1 nice python benchmarks/webui_latency.py --jobs 10 --memory-jobs 100

`t2i serve` (the bundled model, one torch thread) is started on 127.0.0.1; headless Chromium
(Debian's, through Playwright) drives its page. Measured:
- page load to interactive: navigation start -> the page's script has started and Generate is
  shown (a fresh browser context each time: nothing cached);
- click-to-first-preview and click-to-image, 64x64, 20 steps, batch 1, live preview every step:
  in the page, from the Generate click to the first preview image and to the result image in the
  gallery (timed inside the browser); through the API, from POST /t2i/v1/jobs/txt2img to the first
  server-sent event carrying a preview and to the answer (GET .../result), and POST
  /sdapi/v1/txt2img (the web UI's blocking route). UI and API jobs are interleaved;
- the server's resident memory after 5 UI jobs and after `--memory-jobs`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' launchers

import httpx
from webui_helpers import generate, launch, open_page, set_number, start_server

CLICK_AND_TIME = """async () => {
  const start = performance.now();
  let preview = null;
  const seen = new Set([...document.querySelectorAll('#txt2img_gallery img')].map(i => i.src));
  return await new Promise((resolve) => {
    const check = () => {
      const p = document.querySelector('#txt2img_preview img');
      if (preview === null && p && p.src) preview = performance.now() - start;
      const fresh = [...document.querySelectorAll('#txt2img_gallery img')].some(i => i.src && !seen.has(i.src));
      if (fresh) { observer.disconnect(); resolve({preview: preview, image: performance.now() - start}); }
    };
    const observer = new MutationObserver(check);
    observer.observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ['src']});
    document.getElementById('txt2img_generate').click();
  });
}"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_job(client: httpx.Client, body: dict) -> tuple[float | None, float]:
    start = time.perf_counter()
    job = client.post("/t2i/v1/jobs/txt2img", json=body).json()["id"]
    preview = None
    with client.stream("GET", f"/t2i/v1/jobs/{job}/events") as events:
        for line in events.iter_lines():
            if preview is None and line.startswith("data:") and '"preview"' in line:
                preview = time.perf_counter() - start
            if line.startswith("event: end"):
                break
    client.get(f"/t2i/v1/jobs/{job}/result", params={"wait": 60}).raise_for_status()
    return preview, time.perf_counter() - start


def summary(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "none"
    return f"median {statistics.median(got) * 1000:7.0f} ms, min {min(got) * 1000:6.0f} ms ({len(got)}/{len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10, help="timed jobs each for the UI and the API")
    parser.add_argument("--loads", type=int, default=5, help="page loads timed")
    parser.add_argument("--memory-jobs", type=int, default=100, help="UI jobs before the second memory reading")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "out").mkdir()
        (work / "out" / "webui-settings.json").write_text(json.dumps({"live_preview_every": 1,
                                                                      "save_images": False, "save_grids": False}))
        server = start_server(work)
        body = {"prompt": "a red circle", "steps": args.steps, "width": 64, "height": 64, "save_images": False}
        try:
            with sync_playwright() as playwright, httpx.Client(base_url=server.url, timeout=300) as client:
                browser = launch(playwright)
                loads = []
                for _ in range(args.loads):
                    start = time.perf_counter()
                    page = open_page(browser, server.url)
                    loads.append(time.perf_counter() - start)
                    page.context.close()
                page = open_page(browser, server.url)
                page.locator("#txt2img_prompt textarea").fill(body["prompt"])
                set_number(page, "txt2img_steps", args.steps)
                client.post("/sdapi/v1/txt2img", json=body).raise_for_status()  # warm up both paths
                ui_jobs = 0
                while ui_jobs < 5:
                    generate(page, "txt2img")
                    ui_jobs += 1
                memory_5 = rss_mb(server.proc.pid)
                ui_preview, ui_image, api_preview, api_image, sync_image = [], [], [], [], []
                for _ in range(args.jobs):
                    timing = page.evaluate(CLICK_AND_TIME)
                    page.locator("#txt2img_generate").wait_for(state="visible")
                    ui_preview.append(timing["preview"] / 1000 if timing["preview"] is not None else None)
                    ui_image.append(timing["image"] / 1000)
                    preview, image = api_job(client, body)
                    api_preview.append(preview)
                    api_image.append(image)
                    start = time.perf_counter()
                    client.post("/sdapi/v1/txt2img", json=body).raise_for_status()
                    sync_image.append(time.perf_counter() - start)
                ui_jobs += args.jobs
                while ui_jobs < args.memory_jobs:
                    generate(page, "txt2img")
                    ui_jobs += 1
                memory_n = rss_mb(server.proc.pid)
                browser.close()
        finally:
            server.stop()
    print(f"bundled model, 64x64, {args.steps} steps, batch 1, live preview every step, 1 torch thread")
    print(f"page load to interactive      {summary(loads)}")
    print(f"UI  click -> first preview    {summary(ui_preview)}")
    print(f"API submit -> first preview   {summary(api_preview)}")
    print(f"UI  click -> image            {summary(ui_image)}")
    print(f"API submit -> image (job API) {summary(api_image)}")
    print(f"API /sdapi/v1/txt2img         {summary(sync_image)}")
    print(f"server RSS after 5 UI jobs: {memory_5:.0f} MB; after {args.memory_jobs}: {memory_n:.0f} MB "
          f"({(memory_n / memory_5 - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
