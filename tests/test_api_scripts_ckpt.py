"""Scripts through `t2i serve` over HTTP: the X/Y/Z plot's Checkpoint name axis (titles of the
server's --ckpt-dir only, never a path), and scripts' progress and interrupt; the step callback
that gives scripts both (pipelines/script_progress.py) unit-tested beside."""
import json
import signal
import time

import httpx
import pytest
import torch
from api_helpers import Server, image_of
from conftest import tiny_ldm_config

from t2i.pipelines.progress import GenerationControl
from t2i.pipelines.script_progress import ScriptInterrupted, ScriptSteps

BASE = {"prompt": "a red circle", "negative_prompt": "", "seed": 11, "steps": 3, "width": 64, "height": 64,
        "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    folder = tmp_path_factory.mktemp("ckpts") / "Stable-diffusion"
    for seed, name in ((0, "alpha"), (1, "beta")):
        torch.manual_seed(seed)
        save_ldm_folder(LatentDiffusion(tiny_ldm_config()), folder / name)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, ckpt_dir):
    srv = Server(tmp_path_factory.mktemp("api_scripts"), "--ckpt-dir", str(ckpt_dir), "--model",
                 str(ckpt_dir / "alpha"), "--max-script-images", "64")
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


def _xyz(x: str, **more) -> dict:
    return {**BASE, "script_name": "x/y/z plot", "script_args": {"x": x, "include_sub_images": True}, **more}


def test_the_checkpoint_axis_runs_the_folders_models(server, ckpt_dir):
    answer = httpx.post(server.url + "/sdapi/v1/txt2img", json=_xyz("Checkpoint name: alpha, beta"), timeout=600)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert str(ckpt_dir) not in answer.text
    grid, cell_a, cell_b = (image_of(b) for b in body["images"])
    assert grid.size[0] > cell_a.size[0]
    for cell, title in ((cell_a, "alpha"), (cell_b, "beta [0123456789]")):  # a title with the web UI's hash suffix
        plain = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=600,
                           json={**BASE, "override_settings": {"sd_model_checkpoint": title}})
        assert plain.status_code == 200, plain.text
        assert image_of(plain.json()["images"][0]).tobytes() == cell.convert("RGB").tobytes()
    assert cell_a.convert("RGB").tobytes() != cell_b.convert("RGB").tobytes()
    positional = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=600, json={
        **BASE, "script_name": "X/Y/Z plot",
        "script_args": ["Checkpoint name", "", ["beta", "alpha"], "Nothing", "", None, "Nothing", "", None,
                        True, False, False, False, 0, False]})
    assert positional.status_code == 200, positional.text


@pytest.mark.parametrize("value", ["/etc/passwd", "../Stable-diffusion/alpha", "ABSOLUTE", "gamma",
                                   "alpha/../beta", "~/alpha", "C:\\alpha"])
def test_the_checkpoint_axis_refuses_anything_else(server, ckpt_dir, value):
    value = str(ckpt_dir / "alpha") if value == "ABSOLUTE" else value  # an existing model, by its path
    for route in ("/sdapi/v1/txt2img", "/t2i/v1/jobs/txt2img"):
        answer = httpx.post(server.url + route, json=_xyz(f"Checkpoint name: alpha, \"{value}\""), timeout=60)
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "script_args" and "checkpoint" in answer.json()["detail"]
        assert str(ckpt_dir) not in answer.text


def test_an_xyz_job_reports_progress_and_stops_on_interrupt_with_what_it_finished(server):
    seeds = ", ".join(str(s) for s in range(1, 9))
    job = httpx.post(server.url + "/t2i/v1/jobs/txt2img", json=_xyz(f"Seed: {seeds}", steps=150), timeout=60)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    seen, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        progress = httpx.get(server.url + "/sdapi/v1/progress", params={"skip_current_image": True}, timeout=30).json()
        if progress["current_task"] == job_id and progress["progress"] > 0:
            seen.append((progress["state"]["job_no"], progress["progress"], progress["state"]["job_count"]))
            if progress["state"]["job_no"] >= 1:  # the second cell has begun
                break
        time.sleep(0.05)
    assert seen and seen[-1][0] >= 1, seen
    assert all(count == 8 for _, _, count in seen)
    fractions = [f for _, f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] > fractions[0]
    assert httpx.post(server.url + "/sdapi/v1/interrupt", timeout=30).status_code == 200
    result = httpx.get(f"{server.url}/t2i/v1/jobs/{job_id}/result", params={"wait": 60}, timeout=90)
    # as in the web UI, the plot answers what it finished: the grid (cells not run left black) and the
    # finished cells, not all 8
    assert result.status_code == 200, result.text
    grid, *cells = (image_of(b).convert("RGB") for b in result.json()["images"])
    assert 1 <= len(cells) < 8
    assert grid.size[0] >= 8 * 64 and grid.getextrema() != ((0, 0), (0, 0), (0, 0))
    last_cell = grid.crop((grid.width - 64, grid.height - 64, grid.width, grid.height))
    assert last_cell.getextrema() == ((0, 0), (0, 0), (0, 0))  # the eighth cell was not run
    status = httpx.get(f"{server.url}/t2i/v1/jobs/{job_id}", timeout=30).json()
    assert status["state"] == "done" and status["status"] == 200
    after = httpx.post(server.url + "/sdapi/v1/txt2img", json=BASE, timeout=600)  # the worker goes on
    assert after.status_code == 200 and json.loads(after.json()["info"])["seed"] == 11


def test_script_steps_count_passes_and_obey_the_control():
    events, control = [], GenerationControl()
    steps = ScriptSteps(model=None, jobs=2, phase="txt2img", progress=events.append, control=control)
    latents = torch.zeros(1, 4, 2, 2)
    for i in range(3):
        assert steps(i, 3, latents) is None
    assert [(e.job, e.step, e.jobs) for e in events] == [(0, 1, 2), (0, 2, 2), (0, 3, 2)]
    control.skip()
    assert steps(0, 3, latents) == "interrupt"  # the second pass stops; the script goes on
    assert steps(0, 3, latents) is None and events[-1].job == 2 and events[-1].jobs == 3  # more passes than guessed
    assert 0 < events[-1].fraction <= 1
    control.interrupt()
    with pytest.raises(ScriptInterrupted, match="after 3 of 4"):
        steps(0, 3, latents)
