"""`t2i serve` over HTTP: the outputs route serves only the images t2i saved (never the queue
database, however it is reached), the queue database lives outside the served folders, and the
API docs work offline (every script and stylesheet served by the server itself)."""
import json
import os
import re
import shutil
import signal

import httpx
import pytest
from api_helpers import Server
from PIL import Image


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_files"))
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


def _saved(server) -> str:
    answer = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=300,
                        json={"prompt": "a green circle", "seed": 3, "steps": 2, "width": 64, "height": 64})
    assert answer.status_code == 200
    return json.loads(answer.json()["info"])["t2i_saved"][0]


def test_the_queue_database_is_outside_the_served_folders(server):
    assert (server.outdir / ".t2i" / "queue.sqlite3").is_file()
    assert not (server.outdir / "queue.sqlite3").exists()
    for path in ("/t2i/v1/outputs/.t2i/queue.sqlite3", "/t2i/v1/outputs/.t2i/queue.sqlite3-wal",
                 "/t2i/v1/outputs/%2Et2i/queue.sqlite3"):
        answer = httpx.get(server.url + path)
        assert answer.status_code == 404 and b"SQLite" not in answer.content


def test_only_images_t2i_saved_are_served(server, tmp_path):
    name = _saved(server)
    good = httpx.get(f"{server.url}/t2i/v1/outputs/{name}")
    assert good.status_code == 200 and good.content.startswith(b"\x89PNG")
    db = server.outdir / ".t2i" / "queue.sqlite3"
    txt2img = server.outdir / "txt2img"
    os.link(db, txt2img / "hardlinked-db.png")  # same file, an image's name, inside an image folder
    shutil.copyfile(db, txt2img / "copied-db.png")  # the database's bytes under an image's name
    if db.with_name("queue.sqlite3-wal").exists():
        os.link(db.with_name("queue.sqlite3-wal"), txt2img / "wal.png")
    Image.new("RGB", (8, 8), "red").save(server.outdir / "private.png")  # an image t2i did not save there
    (server.outdir / "train").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(server.outdir / "train" / "sample.png")
    (server.outdir / "mine").symlink_to(txt2img, target_is_directory=True)
    for path in ("txt2img/hardlinked-db.png", "txt2img/copied-db.png", "txt2img/wal.png", "private.png",
                 "train/sample.png", f"mine/{name.split('/')[-1]}", "txt2img", "txt2img/"):
        answer = httpx.get(f"{server.url}/t2i/v1/outputs/{path}")
        assert answer.status_code == 404, path
        assert b"SQLite" not in answer.content and answer.json()["error"] == "NotFound"


URL_ATTR = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url\s*:\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_need_no_network(server, page):
    answer = httpx.get(server.url + page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    urls = [a or b for a, b in URL_ATTR.findall(html)]
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = httpx.get(server.url + url)
        assert asset.status_code == 200 and len(asset.content) > 0, url
        if url.endswith(".js"):
            assert "javascript" in asset.headers["content-type"] and len(asset.content) > 100_000
        if url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css")
    assert httpx.get(server.url + "/openapi.json").json()["openapi"].startswith("3.")
