"""The queue survives the server: kill -9 with jobs waiting, restart, every job answered once;
then a graceful stop answers the waiting requests and keeps their jobs queued (one test: each
server start costs seconds)."""
import json
import signal
import sqlite3
import threading
import time

from api_helpers import Server

JOB = {"prompt": "a blue square", "steps": 20, "width": 64, "height": 64, "sampler_name": "Euler a"}


def _done_lines(*logs: str) -> dict:
    counts: dict[str, int] = {}
    for text in logs:
        for line in text.splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("msg", "").startswith("txt2img done"):
                counts[record["job_id"]] = counts.get(record["job_id"], 0) + 1
    return counts


def test_kill_9_with_ten_jobs_queued_then_restart_answers_all_then_a_graceful_stop(tmp_path):
    # 1. ten jobs queued (the worker is still loading its model), then kill -9
    first = Server(tmp_path, wait_ready=False)
    with first.client() as client:
        ids = [client.post("/t2i/v1/jobs/txt2img", json={**JOB, "seed": i}).json()["id"] for i in range(10)]
    first.kill9()
    log_before = first.log_text()
    # 2. a restart on the same folder (the same queue database) answers all ten, each run once
    second = Server(tmp_path, "--shutdown-grace", "1")
    with second.client() as client:
        for i, job_id in enumerate(ids):
            answer = client.get(f"/t2i/v1/jobs/{job_id}/result", params={"wait": 60})
            assert answer.status_code == 200, answer.text
            assert json.loads(answer.json()["info"])["all_seeds"] == [i]
            assert client.get(f"/t2i/v1/jobs/{job_id}").json()["state"] == "done"
    done = _done_lines(log_before, second.log_text())
    assert set(done) == set(ids) and all(n == 1 for n in done.values())
    # 3. a graceful stop: the waiting requests are answered, their jobs stay queued for the next start
    answers = {}

    def call(name, body):
        with second.client() as client:
            answers[name] = client.post("/sdapi/v1/txt2img", json=body)

    long_job = threading.Thread(target=call, args=("long", {**JOB, "steps": 150, "n_iter": 8,
                                                            "t2i_job_id": "long-job-1"}))
    long_job.start()
    _wait_for(second, "long-job-1", "running")
    queued = threading.Thread(target=call, args=("queued", {**JOB, "t2i_job_id": "queued-job-1"}))
    queued.start()
    _wait_for(second, "queued-job-1", "queued")
    assert second.stop() in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal it stopped for
    long_job.join(60)
    queued.join(60)
    assert answers["queued"].status_code == 503 and answers["queued"].json()["error"] == "ShuttingDown"
    assert answers["long"].status_code == 503  # interrupted after the grace period, queued again
    with sqlite3.connect(tmp_path / "out" / ".t2i" / "queue.sqlite3") as db:
        states = dict(db.execute("SELECT id, state FROM jobs WHERE id LIKE '%-job-1'"))
    assert states == {"long-job-1": "queued", "queued-job-1": "queued"}
    assert "Traceback" not in second.log_text()


def _wait_for(server, job_id: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            answer = client.get(f"/t2i/v1/jobs/{job_id}")
            if answer.status_code == 200 and answer.json()["state"] == state:
                return
            time.sleep(0.05)
    raise AssertionError(f"job {job_id} never {state}")
