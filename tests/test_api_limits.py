"""Limits and bad input: 422 JSON naming the field, never a 500, a traceback or a server path;
then a property-based fuzz of every operation of the OpenAPI schema (schemathesis) with no
response >= 500. The server runs with small limits, so every request the fuzz gets through is
a cheap generation."""
import base64
import json
import os
import signal
import struct
import zlib

import httpx
import pytest
from api_helpers import Server, png_b64
from PIL import Image

FUZZ_EXAMPLES = int(os.environ.get("T2I_API_FUZZ_EXAMPLES", "6"))
VALID = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("api_limits")
    srv = Server(workdir, "--api-log", str(workdir / "api.jsonl"), "--max-size", "128", "--max-steps", "2", "--max-images", "2",
                 "--max-script-images", "2", "--max-prompt-chars", "300", "--max-upload-pixels", "16384",
                 "--max-upload-mb", "0.05", "--queue-size", "64")
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert '"level": "error"' not in srv.log_text()  # no internal error, not even one answered as 4xx


def _post(server, path, body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def _no_leak(server, answer: httpx.Response) -> None:
    text = answer.text
    assert "Traceback" not in text and str(server.workdir) not in text and "site-packages" not in text
    assert answer.json()["error_id"].startswith("e-")


@pytest.mark.parametrize("change, field", [
    ({"steps": 3}, "steps"), ({"width": 136}, "width"), ({"height": 60}, "height"), ({"height": 100}, "height"), ({"width": 8}, "width"),
    ({"batch_size": 2, "n_iter": 2}, "batch_size"), ({"prompt": "x" * 301}, "prompt"),
    ({"negative_prompt": "y" * 301}, "negative_prompt"), ({"steps": "2"}, "steps"), ({"steps": 2.5}, "steps"),
    ({"cfg_scale": "NaN"}, "cfg_scale"), ({"tiling": "no"}, "tiling"), ({"seed": -2}, "seed"),
    ({"sampler_name": "k_nonsense"}, "sampler_name"), ({"hr_upscaler": "Bogus", "enable_hr": True, "hr_scale": 1.0}, "hr_upscaler"),
    ({"enable_hr": True, "hr_scale": 3.0}, "hr_scale"), ({"styles": ["missing"]}, "styles"),
    ({"restore_faces": True}, "restore_faces"), ({"script_name": "custom code"}, "script_name"),
    ({"script_name": "x/y/z plot", "script_args": {"x": "Steps: 1,2", "y": "CFG Scale: 5,7"}}, "script_args"),
    ({"script_name": "prompt matrix", "prompt": "a|b|c"}, "script_args"),
    ({"override_settings": {"sd_vae": "../vae.pt"}}, "override_settings"),
    ({"override_settings": {"CLIP_stop_at_last_layers": "2"}}, "override_settings"),
    ({"t2i_job_id": "../../x"}, "t2i_job_id"),
    ({"alwayson_scripts": {"": True}}, "alwayson_scripts"),  # found by the fuzz test below: was a 500
    ({"alwayson_scripts": {"ADetailer": "on"}}, "alwayson_scripts"),
    ({"alwayson_scripts": {"ADetailer": {"args": 1}}}, "alwayson_scripts"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts"),
])
def test_bad_txt2img_answers_422_naming_the_field(server, change, field):
    answer = _post(server, "/sdapi/v1/txt2img", {**VALID, **change})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    _no_leak(server, answer)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and header announcing width x height, and one tiny compressed row:
    decoding it would need width x height x 3 bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("image, field", [
    ("not base64 at all!", "init_images[0]"), ("", "init_images[0]"),
    (base64.b64encode(b"GIF89a but not really").decode(), "init_images[0]"),
    (base64.b64encode(_png_claiming(100_000, 100_000)).decode(), "init_images[0]"),  # bomb: refused unread
    (base64.b64encode(_png_claiming(200, 200)).decode(), "init_images[0]"),  # over 16384 pixels
    ("data:image/png;base64," + base64.b64encode(os.urandom(60_000)).decode(), "init_images[0]"),  # over 0.05 MB
    (base64.b64encode(_png_claiming(64, 64)[:40]).decode(), "init_images[0]"),  # truncated
])
def test_bad_uploads_answer_422_before_decoding(server, image, field):
    answer = _post(server, "/sdapi/v1/img2img", {**VALID, "init_images": [image]})
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text
    _no_leak(server, answer)


def test_every_error_id_is_in_the_api_log(server):
    answer = _post(server, "/sdapi/v1/txt2img", {**VALID, "steps": 99})
    error_id = answer.json()["error_id"]
    records = [json.loads(line) for line in (server.workdir / "api.jsonl").read_text().splitlines()]
    assert any(r.get("error_id") == error_id and "steps" in r["msg"] for r in records)
    assert all({"ts", "level", "msg"} <= set(r) for r in records)


def test_a_body_over_the_limit_is_413_and_malformed_json_422(server):
    body = b"{" + b" " * 1_300_000 + b"}"  # the limit: two uploads of 0.05 MB in base64, plus 1 MB
    big = httpx.post(server.url + "/sdapi/v1/img2img", content=body, headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"] == "PayloadTooLarge"
    chunked = httpx.post(server.url + "/sdapi/v1/img2img", content=iter([body[i:i + 65536] for i in
                                                                          range(0, len(body), 65536)]),
                         headers={"Content-Type": "application/json"})  # no Content-Length: counted as it comes
    assert chunked.status_code == 413
    broken = httpx.post(server.url + "/sdapi/v1/txt2img", content=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert broken.status_code == 422
    _no_leak(server, broken)


def test_unknown_keys_are_ignored_and_a_valid_img2img_runs(server):
    image = Image.new("RGB", (64, 64), (10, 200, 10))
    answer = _post(server, "/sdapi/v1/img2img", {**VALID, "init_images": [png_b64(image, prefix=True)],
                                                 "some_future_key": {"a": 1}, "resize_mode": 2,
                                                 "inpainting_fill": 1, "sampler_index": "Euler",
                                                 "alwayson_scripts": {"ADetailer": {"args": [False]}, "Other": {}}})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["sampler_name"] == "Euler" and "Resize mode: Resize and fill" in info["infotexts"][0]


def test_host_header_of_another_site_is_refused_and_cors_is_closed(server):
    rebound = httpx.get(server.url + "/sdapi/v1/sd-models", headers={"Host": "evil.example"})
    assert rebound.status_code == 400 and rebound.json()["error"] == "BadHost"
    plain = httpx.get(server.url + "/sdapi/v1/sd-models", headers={"Origin": "http://evil.example"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    preflight = httpx.options(server.url + "/sdapi/v1/txt2img", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


# ----------------------------------------------------------------------------- the fuzz


def test_fuzz_no_request_makes_a_server_error(server):
    """Every operation of /openapi.json with requests schemathesis generates from it (valid ones and
    ones that break the schema), FUZZ_EXAMPLES each. (Driven through hypothesis directly:
    schemathesis' pytest plugin does not run under this pytest version.)"""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    seen = {}

    for operation in operations:
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(base_url=server.url, timeout=120)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, \
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
            assert "Traceback" not in response.text

        check()
    assert any(code == 200 for code in seen) and any(400 <= code < 500 for code in seen)


def test_fuzz_requests_within_the_limits_run_or_answer_422(server):
    """Requests that pass the schema's types and the server's limits (which random schema-based
    requests rarely do): every one runs (200) or is refused with a 422 naming a field, none fails
    the server (sampler x schedule combinations, hires, variations, tiling, scripts, ...)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    samplers = [s["name"] for s in httpx.get(server.url + "/sdapi/v1/samplers").json()]
    schedulers = [s["name"] for s in httpx.get(server.url + "/sdapi/v1/schedulers").json()]
    body = st.fixed_dictionaries({"prompt": st.text(max_size=40), "steps": st.integers(1, 2), "width": st.just(64),
                                  "height": st.just(64)}, optional={
        "negative_prompt": st.text(max_size=20), "sampler_name": st.sampled_from(samplers),
        "scheduler": st.sampled_from(schedulers), "cfg_scale": st.floats(0, 30), "seed": st.integers(-1, 2**32 - 1),
        "subseed": st.integers(-1, 2**32 - 1), "subseed_strength": st.floats(0, 1), "eta": st.floats(0, 1),
        "s_churn": st.floats(0, 5), "s_tmax": st.floats(0, 50), "s_noise": st.floats(0, 2),
        "clip_skip": st.integers(1, 12), "tiling": st.booleans(), "batch_size": st.integers(1, 2),
        "enable_hr": st.booleans(), "hr_scale": st.just(1.0), "denoising_strength": st.floats(0, 1),
        "seed_resize_from_w": st.sampled_from([0, 64]), "seed_resize_from_h": st.sampled_from([0, 64]),
        "t2i_deepcache_interval": st.integers(1, 3), "styles": st.just([]),
        "script_name": st.sampled_from([None, "prompt matrix", "x/y/z plot"]),
        "script_args": st.sampled_from([[], {"x": "Seed: 1"}, [False, False, "positive", "comma", 0]])})

    @settings(max_examples=FUZZ_EXAMPLES * 5, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=body)
    def check(body):
        answer = _post(server, "/sdapi/v1/txt2img", body)
        assert answer.status_code in (200, 422), f"{body}: {answer.status_code} {answer.text[:300]}"
        if answer.status_code == 422:
            assert answer.json()["field"], answer.text

    check()
