"""The job queue over plain HTTP: concurrent clients, a full queue, the job API (submit, status,
position, result, events, cancel), interrupt/skip by job id, a job that fails."""
import json
import signal
import threading
import time

import numpy as np
import pytest
from api_helpers import Server, image_of, png_b64
from PIL import Image

QUICK = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler a"}
LONG = {**QUICK, "steps": 150, "n_iter": 4}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_queue"), "--queue-size", "16")
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


def _wait_running(client, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/t2i/v1/jobs/{job_id}").json()
        if status["state"] == "running" and status["progress"]:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not start: {status}")


def test_sixteen_concurrent_clients_each_get_their_own_images(server):
    answers = {}

    def client_run(i):
        with server.client() as client:
            answers[i] = client.post("/sdapi/v1/txt2img", json={**QUICK, "prompt": f"shape number {i}", "seed": 100 + i})

    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(answers) == list(range(16))
    job_ids = set()
    for i, response in answers.items():
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [100 + i] and info["prompt"] == f"shape number {i}"
        assert image_of(response.json()["images"][0]).info["parameters"].startswith(f"shape number {i}\n")
        job_ids.add(response.headers["x-t2i-job-id"])
    assert len(job_ids) == 16
    with server.client() as client:  # alone, a request gives the same pixels as among 16
        for i in (0, 9):
            alone = client.post("/sdapi/v1/txt2img", json={**QUICK, "prompt": f"shape number {i}", "seed": 100 + i})
            assert np.array_equal(np.asarray(image_of(alone.json()["images"][0])),
                                  np.asarray(image_of(answers[i].json()["images"][0])))


def test_job_api_submit_status_events_result(server):
    with server.client() as client:
        accepted = client.post("/t2i/v1/jobs/txt2img", json={**QUICK, "steps": 30, "seed": 3})
        assert accepted.status_code == 202 and accepted.json()["state"] == "queued"
        job_id = accepted.json()["id"]
        assert client.get(f"/t2i/v1/jobs/{job_id}").json()["kind"] == "txt2img"
        events = []
        with client.stream("GET", f"/t2i/v1/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append([line[7:], None])
                elif line.startswith("data: "):
                    events[-1][1] = json.loads(line[6:])
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "end" and events[-1][1]["state"] == "done" and events[-1][1]["status"] == 200
        steps = [data["step"] for kind, data in events if kind == "progress"]
        assert steps and steps == sorted(steps) and max(steps) <= 30
        assert any("preview" in data for kind, data in events if kind == "progress")
        result = client.get(f"/t2i/v1/jobs/{job_id}/result")
        assert result.status_code == 200 and json.loads(result.json()["info"])["all_seeds"] == [3]
        saved = json.loads(result.json()["info"])["t2i_saved"]
        assert len(saved) == 1 and client.get(f"/t2i/v1/outputs/{saved[0]}").content[:8] == b"\x89PNG\r\n\x1a\n"
        assert client.get("/t2i/v1/jobs/0123456789abcdef").status_code == 404


def test_full_queue_answers_429_with_retry_after_and_cancel_touches_one_job(server):
    with server.client() as client:
        running = client.post("/t2i/v1/jobs/txt2img", json=LONG).json()["id"]
        _wait_running(client, running)
        queued = [client.post("/t2i/v1/jobs/txt2img", json={**QUICK, "seed": i}) for i in range(16)]
        assert all(r.status_code == 202 for r in queued)
        assert [r.json()["position"] for r in queued] == list(range(16))
        full = client.post("/t2i/v1/jobs/txt2img", json=QUICK)
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"] == "QueueFull"
        ids = [r.json()["id"] for r in queued]
        assert client.delete(f"/t2i/v1/jobs/{ids[5]}").json() == {"id": ids[5], "state": "cancelled"}
        assert client.get(f"/t2i/v1/jobs/{ids[6]}").json()["position"] == 5  # the ones behind move up
        assert client.get(f"/t2i/v1/jobs/{running}").json()["state"] == "running"  # untouched
        for job_id in [running, *ids]:
            client.delete(f"/t2i/v1/jobs/{job_id}")
        assert client.get(f"/t2i/v1/jobs/{running}/result", params={"wait": 30}).status_code == 409
        counts = client.get("/t2i/v1/queue").json()["counts"]
        assert counts["queued"] == 0


def test_interrupt_and_skip_by_job_id_stop_only_that_job(server):
    with server.client() as client:
        a = client.post("/t2i/v1/jobs/txt2img", json={**LONG, "seed": 1}).json()["id"]
        b = client.post("/t2i/v1/jobs/txt2img", json={**LONG, "seed": 2}).json()["id"]
        c = client.post("/t2i/v1/jobs/txt2img", json={**QUICK, "seed": 3}).json()["id"]
        _wait_running(client, a)
        assert client.post("/sdapi/v1/interrupt", params={"job_id": b}).json()["state"] == "cancelled"  # queued
        assert client.get(f"/t2i/v1/jobs/{a}").json()["state"] == "running"
        client.post(f"/t2i/v1/jobs/{a}/skip")  # drops the batch under way, goes on with the next
        time.sleep(0.5)
        assert client.post("/sdapi/v1/interrupt", json={"job_id": a}).json() == {"id": a, "state": "interrupted"}
        answer_a = client.get(f"/t2i/v1/jobs/{a}/result", params={"wait": 60})
        assert answer_a.status_code == 200
        assert 0 < len(answer_a.json()["images"]) < 4  # skipped one batch, interrupted in a later one
        assert client.get(f"/t2i/v1/jobs/{b}/result").status_code == 409
        answer_c = client.get(f"/t2i/v1/jobs/{c}/result", params={"wait": 60})
        assert answer_c.status_code == 200 and len(answer_c.json()["images"]) == 1  # untouched


def test_a_job_that_fails_answers_json_and_the_worker_goes_on(server):
    with server.client() as client:
        # clip_skip 12 passes the schema's bounds; the bundled model's text encoder has 3 layers
        failed = client.post("/sdapi/v1/txt2img", json={**QUICK, "clip_skip": 12})
        assert failed.status_code == 422 and failed.json()["field"] == "clip_skip"
        assert failed.json()["error_id"].startswith("e-")
        assert client.post("/sdapi/v1/txt2img", json=QUICK).status_code == 200


def test_scripts_by_name_with_the_web_uis_positional_args(server):
    with server.client() as client:
        # X/Y/Z plot: X = Steps (index 4 of the web UI's txt2img axes), Y = Sampler (index 9, from the dropdown)
        xyz = client.post("/sdapi/v1/txt2img", json={**QUICK, "seed": 4, "script_name": "X/Y/Z plot", "script_args": [
            4, "1,2", None, 9, "", ["Euler a", "DDIM"], 0, "", None, True, True, False, False, 0, False]})
        assert xyz.status_code == 200, xyz.text
        info = json.loads(xyz.json()["info"])
        assert len(xyz.json()["images"]) == 5 and info["index_of_first_image"] == 1  # the grid, then 4 cells
        assert "Script: X/Y/Z plot" in info["infotexts"][0] and "X Type: Steps" in info["infotexts"][0]
        assert image_of(xyz.json()["images"][0]).width > 128  # 2 columns and the legend
        matrix = client.post("/sdapi/v1/txt2img", json={**QUICK, "prompt": "a circle|red", "script_name":
                                                         "prompt matrix", "script_args": [False, False, "positive",
                                                                                          "comma", 0]})
        assert matrix.status_code == 200 and json.loads(matrix.json()["info"])["all_prompts"] == [
            "a circle", "a circle, red"]
        image = png_b64(Image.new("RGB", (64, 64), (30, 30, 200)))
        loop = client.post("/sdapi/v1/img2img", json={**QUICK, "init_images": [image], "denoising_strength": 0.6,
                                                      "script_name": "loopback",
                                                      "script_args": [2, 0.3, "Linear", "None"]})
        assert loop.status_code == 200, loop.text
        assert len(loop.json()["images"]) == 3 and json.loads(loop.json()["info"])["index_of_first_image"] == 1
        out = client.post("/sdapi/v1/img2img", json={**QUICK, "init_images": [image], "script_name":
                                                     "poor man's outpainting", "script_args": [16, 4, 1, ["left"]]})
        assert out.status_code == 200, out.text
        assert image_of(out.json()["images"][0]).size == (80, 64)


def test_the_log_is_json_lines_with_job_ids(server):
    records = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    jobs = [r for r in records if r.get("job_id") and r["msg"].startswith("txt2img done")]
    assert jobs and all(r["worker"] == "w0" for r in jobs)
    requests = [r for r in records if r.get("path") == "/sdapi/v1/txt2img"]
    assert requests and all({"status", "ms", "method"} <= set(r) for r in requests)
