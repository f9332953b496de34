"""Safe by default: no public bind without credentials, 401 on every path without them, no file
served from outside the output folder, CORS only for the origins given."""
import base64
import http.client
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from api_helpers import Server

AUTH = ("alice", "s3cret")
GOOD_ORIGIN = "http://good.example"


def test_a_public_bind_without_credentials_is_refused_with_the_reason(tmp_path):
    for host in ("0.0.0.0", "192.168.1.20"):
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "serve", "--host", host, "--port", "0",
                               "--outdir", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "T2I_API_AUTH": ""})
        assert done.returncode == 2
        assert f"refusing to listen on {host}" in done.stderr and "--api-auth" in done.stderr
        assert "Traceback" not in done.stderr
        assert time.monotonic() - start < 60
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_security"), "--host", "127.0.0.1", "--cors-allow-origins",
                 GOOD_ORIGIN, wait_ready=False, env={"T2I_API_AUTH": ":".join(AUTH)})
    srv.wait_ready(auth=AUTH)
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


@pytest.mark.parametrize("method, path", [
    ("GET", "/docs"), ("GET", "/openapi.json"), ("GET", "/redoc"), ("GET", "/health"), ("GET", "/sdapi/v1/sd-models"),
    ("POST", "/sdapi/v1/txt2img"), ("POST", "/sdapi/v1/options"), ("GET", "/sdapi/v1/progress"),
    ("POST", "/t2i/v1/jobs/txt2img"), ("GET", "/t2i/v1/outputs/x.png"), ("GET", "/no/such/path"),
    ("GET", "/docs-assets/swagger-ui-bundle.js"),
])
def test_every_path_answers_401_without_credentials(server, method, path):
    for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("alice", "")):
        answer = httpx.request(method, server.url + path, auth=auth, json={} if method == "POST" else None)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Basic")
        assert answer.json()["error"] == "Unauthorized" and answer.json()["error_id"]
    garbled = httpx.get(server.url + path, headers={"Authorization": "Basic !!!notbase64"})
    assert garbled.status_code == 401


def test_with_credentials_the_api_and_its_docs_answer(server):
    assert httpx.get(server.url + "/docs", auth=AUTH).status_code == 200
    assert httpx.get(server.url + "/openapi.json", auth=AUTH).json()["info"]["title"] == "t2i"
    webuiapi = pytest.importorskip("webuiapi")
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=AUTH[0], password=AUTH[1])
    result = api.txt2img(prompt="a red circle", seed=1, steps=2, width=64, height=64, save_images=True)
    assert result.image.size == (64, 64) and result.info["t2i_saved"]


def _raw_get(server, path: str) -> int:
    """A request with the path sent byte for byte (clients normalise `..` away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    connection.request("GET", path, headers={"Authorization": f"Basic {token}"})
    status = connection.getresponse().status
    connection.close()
    return status


def test_no_file_outside_the_output_folder_is_served(server, tmp_path):
    saved = httpx.post(server.url + "/sdapi/v1/txt2img", auth=AUTH, timeout=120,
                       json={"prompt": "a blue square", "steps": 2, "width": 64, "height": 64}).json()
    name = __import__("json").loads(saved["info"])["t2i_saved"][0]
    assert _raw_get(server, f"/t2i/v1/outputs/{name}") == 200
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n not for clients")
    (server.outdir / "txt2img" / "link.png").symlink_to(secret)
    (server.outdir / "txt2img" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    attempts = [
        "/t2i/v1/outputs/../queue.sqlite3", "/t2i/v1/outputs/queue.sqlite3", "/t2i/v1/outputs/txt2img/../../x.png",
        "/t2i/v1/outputs/%2e%2e/queue.sqlite3", "/t2i/v1/outputs/%2E%2E%2Fqueue.sqlite3",
        "/t2i/v1/outputs/%252e%252e/queue.sqlite3", "/t2i/v1/outputs//etc/passwd", "/t2i/v1/outputs/%2Fetc%2Fpasswd",
        f"/t2i/v1/outputs/{secret}", "/t2i/v1/outputs/..\\queue.sqlite3", "/t2i/v1/outputs/txt2img%5C..%5C..%5Cx.png",
        "/t2i/v1/outputs/C:/Windows/win.ini", "/t2i/v1/outputs/txt2img/link.png", "/t2i/v1/outputs/txt2img/dirlink/secret.png",
        "/t2i/v1/outputs/txt2img/./" + name.split("/")[-1], "/t2i/v1/outputs/.hidden.png", "/t2i/v1/outputs/%00.png",
    ]
    for path in attempts:
        assert _raw_get(server, path) in (400, 404), path


def test_cors_only_for_the_origins_given(server):
    allowed = httpx.options(server.url + "/sdapi/v1/txt2img", headers={
        "Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert allowed.headers.get("access-control-allow-origin") == GOOD_ORIGIN
    refused = httpx.options(server.url + "/sdapi/v1/txt2img", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in refused.headers
    plain = httpx.get(server.url + "/sdapi/v1/samplers", auth=AUTH, headers={"Origin": "http://evil.example"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_models_switch_only_to_titles_in_the_folders(server):
    for title in ("../../etc/passwd", "/etc/passwd", str(server.outdir / "queue.sqlite3"), "C:\\model.ckpt"):
        answer = httpx.post(server.url + "/sdapi/v1/options", auth=AUTH, json={"sd_model_checkpoint": title})
        assert answer.status_code == 422 and answer.json()["field"] == "sd_model_checkpoint"
        assert str(server.workdir) not in answer.text
        override = httpx.post(server.url + "/sdapi/v1/txt2img", auth=AUTH, json={
            "prompt": "x", "steps": 2, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": title}})
        assert override.status_code == 422
    for prompt in ("<lora:../../evil:1>", "<lora:/etc/x.safetensors:1>", "a <lora:evil.safetensors>",
                   "<lyco:..\\x:1>"):
        answer = httpx.post(server.url + "/sdapi/v1/txt2img", auth=AUTH, json={
            "prompt": prompt, "steps": 2, "width": 64, "height": 64})
        assert answer.status_code == 422 and answer.json()["field"] == "prompt", prompt
    answer = httpx.post(server.url + "/sdapi/v1/txt2img", auth=AUTH, json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64, "t2i_loras": {"/tmp/x.safetensors": 1.0}})
    assert answer.status_code == 422 and answer.json()["field"] == "t2i_loras"
