"""The API's pieces without a server (fast): the queue table's transactions, the catalog's names,
upload checks, safe output paths, no server paths in messages, the bind rule."""
import base64
import os
import struct
import zlib

import pytest
from PIL import Image

from t2i.errors import ConfigError
from t2i.interfaces.api.catalog import Catalog
from t2i.interfaces.api.codec import decode_image, png_bytes
from t2i.interfaces.api.config import Limits, ServeConfig, parse_auth
from t2i.interfaces.api.errors import ApiError, scrub
from t2i.interfaces.api.security import credentials_ok, host_allowed, output_file
from t2i.interfaces.api.store import Full, Store


def test_store_claims_fifo_recovers_after_a_crash_and_never_finishes_twice(tmp_path):
    store = Store(tmp_path / "q.sqlite3")
    for i in range(3):
        store.submit(f"job-{i}", "txt2img", {"n": i}, max_queued=3)
    with pytest.raises(Full):
        store.submit("job-3", "txt2img", {}, max_queued=3)
    first = store.claim("w0")
    assert first.id == "job-0" and first.payload == {"n": 0} and first.attempts == 1
    assert store.position(store.get("job-2")) == 1
    store.close()  # the server dies here (kill -9): job-0 was running
    store = Store(tmp_path / "q.sqlite3")
    assert store.recover() == (1, 0)
    again = store.claim("w1")
    assert again.id == "job-0" and again.attempts == 2  # back at its place, first in line
    assert store.finish("job-0", "w1", "done", 200, "{}")
    assert not store.finish("job-0", "w1", "done", 200, "{}")  # completed once only
    assert not store.finish("job-0", "w0", "done", 200, "{}")  # the old claim cannot finish it
    running = store.claim("w0")
    assert store.cancel(running.id, '{"error": "Cancelled"}') == "running"
    assert not store.finish(running.id, "w0", "done", 200, "{}")  # cancelled meanwhile: the answer is dropped
    assert store.answer(running.id)[0] == "cancelled"
    assert store.cancel("job-0", "{}") == "done" and store.answer("job-0")[0] == "done"  # final stays final
    assert store.prune(keep=1) == 1
    store.close()


def test_store_gives_up_a_job_that_crashed_the_server_three_times(tmp_path):
    path = tmp_path / "q.sqlite3"
    store = Store(path)
    store.submit("bad-job-1", "txt2img", {}, max_queued=5)
    for _ in range(3):
        store.claim("w0")
        store.close()
        store = Store(path)
        requeued, given_up = store.recover()
    assert (requeued, given_up) == (0, 1) and store.answer("bad-job-1")[:2] == ("failed", 500)
    store.close()


def test_catalog_names_only_files_in_its_folders(tmp_path):
    for name in ("a.safetensors", "sub/b.ckpt", "diff/model_index.json", "diff/unet/x.safetensors",
                 ".hidden/c.safetensors", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    catalog = Catalog(ServeConfig(ckpt_dirs=(tmp_path,)))
    assert [i.title for i in catalog.checkpoints()] == ["t2i-shapes-ldm", "a.safetensors", "diff", "sub/b.ckpt"]
    assert catalog.checkpoint("A.safetensors [0123456789]").path == str(tmp_path / "a.safetensors")
    assert catalog.checkpoint("default").path is None
    for title in ("../a.safetensors", str(tmp_path / "a.safetensors"), "sub/../a.safetensors", "", None, 3):
        with pytest.raises(ApiError) as err:
            catalog.checkpoint(title)
        assert err.value.status == 422 and err.value.field == "sd_model_checkpoint"


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_uploads_are_checked_before_decoding():
    limits = Limits(max_upload_pixels=64 * 64, max_upload_bytes=10_000)
    image = Image.new("RGB", (64, 64), (1, 2, 3))
    good = base64.b64encode(png_bytes(image, "a prompt\nSteps: 2, Sampler: Euler, Seed: 1")).decode()
    decoded = decode_image("data:image/png;base64," + good, "init_images[0]", limits)
    assert decoded.size == (64, 64) and decoded.info["parameters"].startswith("a prompt")
    for text in ("%%%", "data:image/png,abc", base64.b64encode(_png_header(50_000, 50_000)).decode(),
                 base64.b64encode(_png_header(65, 64)).decode(), base64.b64encode(os.urandom(20_000)).decode(),
                 base64.b64encode(png_bytes(image, None)[:60]).decode(), 12, None):
        with pytest.raises(ApiError) as err:
            decode_image(text, "init_images[0]", limits)
        assert err.value.status == 422 and err.value.field == "init_images[0]"


def test_output_files_stay_inside_the_output_folder(tmp_path):
    root = tmp_path / "out"
    (root / "txt2img").mkdir(parents=True)
    (root / "txt2img" / "00000-1-a.png").write_bytes(b"\x89PNG\r\n\x1a\n png")
    (root / "queue.sqlite3").write_bytes(b"db")
    (root / "txt2img" / "db.png").write_bytes(b"SQLite format 3\x00")  # an image's name, not an image
    (root / "private.png").write_bytes(b"\x89PNG\r\n\x1a\n not in an image folder")
    os.link(root / "queue.sqlite3", root / "txt2img" / "linked.png")
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    (root / "txt2img" / "link.png").symlink_to(outside)
    assert output_file(root, "txt2img/00000-1-a.png") == (root / "txt2img" / "00000-1-a.png").resolve()
    folders, blocked = ("txt2img",), (root / "queue.sqlite3",)
    assert output_file(root, "txt2img/00000-1-a.png", folders, blocked).name == "00000-1-a.png"
    for name in ("txt2img/db.png", "private.png", "txt2img/linked.png", "txt2img"):
        with pytest.raises(ApiError):
            output_file(root, name, folders, blocked)
    for name in ("../secret.png", "/etc/passwd", str(outside), "txt2img/../../secret.png", "queue.sqlite3",
                 "txt2img\\..\\..\\secret.png", "C:/x.png", "txt2img/link.png", ".x.png", "a\x00.png", "",
                 "x" * 300 + ".png", "txt2img/./00000-1-a.png"):
        with pytest.raises(ApiError) as err:
            output_file(root, name)
        assert err.value.status == 404


def test_messages_lose_server_paths():
    text = scrub(f"cannot read {os.getcwd()}/models/x.safetensors or /srv/data/models/y.ckpt, X/Y/Z plot ok")
    assert os.getcwd() not in text and "/srv/data" not in text and "y.ckpt" in text and "X/Y/Z plot" in text


def test_bind_auth_and_host_rules():
    with pytest.raises(ConfigError, match="--api-auth"):
        ServeConfig(host="0.0.0.0").check()
    ServeConfig(host="0.0.0.0", api_auth=parse_auth("alice:secret")).check()
    ServeConfig(host="::1").check()
    assert ServeConfig().host_names() == ("localhost", "127.0.0.1", "::1", "[::1]")
    assert host_allowed("127.0.0.1:7860", ServeConfig().host_names()) and host_allowed("[::1]:80", ("::1",))
    assert not host_allowed("evil.example:7860", ServeConfig().host_names()) and not host_allowed(None, ("a",))
    pairs = parse_auth("alice:secret,bob:pa:ss")
    assert pairs == (("alice", "secret"), ("bob", "pa:ss"))
    token = base64.b64encode(b"bob:pa:ss").decode()
    assert credentials_ok(f"Basic {token}", pairs) and not credentials_ok(f"Basic {token}x", pairs)
    with pytest.raises(ConfigError):
        parse_auth("alice")


def test_the_queue_database_defaults_to_a_hidden_folder_and_keeps_an_old_one(tmp_path):
    out = tmp_path / "out"
    assert ServeConfig(outdir=out).queue_path == out / ".t2i" / "queue.sqlite3"
    assert ServeConfig(outdir=out, queue_db=tmp_path / "q.db").queue_path == tmp_path / "q.db"
    out.mkdir()
    (out / "queue.sqlite3").write_bytes(b"")  # an earlier version's database: its jobs are kept
    assert ServeConfig(outdir=out).queue_path == out / "queue.sqlite3"
    (out / ".t2i").mkdir()
    (out / ".t2i" / "queue.sqlite3").write_bytes(b"")
    assert ServeConfig(outdir=out).queue_path == out / ".t2i" / "queue.sqlite3"
