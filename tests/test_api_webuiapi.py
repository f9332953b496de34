"""`t2i serve` through the real `webuiapi` client, as existing tools call the web UI's API, and the
API's images against the CLI's for the same parameters (pixel-identical)."""
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from api_helpers import Server, image_of
from PIL import Image, ImageDraw

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("api_webuiapi"))
    yield srv
    assert srv.stop() in (0, -signal.SIGTERM)  # uvicorn ends by re-raising the signal it stopped for
    assert "Traceback" not in srv.log_text()


@pytest.fixture
def api(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port)


def test_txt2img_defaults_of_the_client_give_images_with_infotext(api):
    result = api.txt2img(prompt="a red circle", seed=7, steps=3, width=64, height=64, batch_size=2)
    assert [im.size for im in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [7, 8]
    # the client's defaults (Euler a, scheduler "automatic", eta 1.0, s_tmax 0) are read as the web UI does
    assert result.info["sampler_name"] == "Euler a"
    for image, seed in zip(result.images, (7, 8)):
        text = image.info["parameters"]
        assert text.startswith("a red circle\n") and f"Seed: {seed}," in text and "Sampler: Euler a" in text
        assert "Eta" not in text and "Sigma" not in text  # defaults that change nothing are not recorded
    assert np.asarray(result.images[0]).std() > 1  # an image, not a blank
    assert result.parameters["prompt"] == "a red circle"


def test_img2img_with_mask_repaints_only_the_mask(api):
    image = Image.new("RGB", (64, 64), (40, 160, 40))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((24, 24, 40, 40), fill=255)
    result = api.img2img(images=[image], mask_image=mask, prompt="a blue square", seed=3, steps=3, width=64,
                         height=64, denoising_strength=0.9, inpaint_full_res=False, mask_blur=0)
    out = np.asarray(result.image.convert("RGB")).astype(int)
    assert result.image.size == (64, 64)
    assert "Mask blur: 0" in result.info["infotexts"][0] and "Masked content: fill" in result.info["infotexts"][0]
    keep = np.asarray(mask) == 0
    assert np.abs(out[keep] - np.array([40, 160, 40])).max() == 0  # outside the mask: the input, exactly
    assert np.abs(out[~keep] - np.array([40, 160, 40])).mean() > 5  # inside: repainted


def test_png_info_reads_back_the_parameters(api):
    made = api.txt2img(prompt="a green triangle", seed=11, steps=2, width=64, height=64)
    info = api.png_info(made.image)
    assert info.info == made.info["infotexts"][0]
    assert info.json["parameters"]["Seed"] == "11" and info.json["parameters"]["Prompt"] == "a green triangle"


def test_options_and_set_model(api):
    titles = api.util_get_model_names()
    assert "t2i-shapes-ldm" in titles
    api.util_set_model("t2i-shapes-ldm")
    assert api.util_get_current_model() == "t2i-shapes-ldm"
    with pytest.raises(RuntimeError):  # webuiapi raises on any status but 200
        api.custom_post("sdapi/v1/options", {"sd_model_checkpoint": "../../etc/passwd"}, baseurl=False)
    assert api.get_options()["sd_model_checkpoint"] == "t2i-shapes-ldm"
    assert {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}} in api.get_samplers()
    assert "automatic" in api.util_get_scheduler_names()
    assert set(api.get_scripts()["txt2img"]) >= {"x/y/z plot", "prompt matrix"}


def test_progress_with_preview_then_interrupt_keeps_the_finished_part(api):
    answer = {}

    def long_job():
        answer["result"] = api.txt2img(prompt="a yellow star", seed=5, steps=150, width=64, height=64, n_iter=3)

    thread = threading.Thread(target=long_job)
    thread.start()
    preview = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and preview is None:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 0:
            preview = progress["current_image"]  # asked for at the previous call, rendered at a step since
        time.sleep(0.2)
    assert preview is not None and 0 < progress["progress"] < 1 and progress["state"]["job_count"] == 3
    assert image_of(preview).size == (64, 64)
    api.interrupt()
    thread.join(120)
    result = answer["result"]
    assert len(result.images) == 1  # interrupted in the first of 3 batches: that batch, as far as it got
    assert api.get_progress()["state"]["job_count"] == 0


def test_api_image_equals_the_cli_image(api, tmp_path):
    params = {"prompt": "a red circle and a blue square", "seed": 1234, "steps": 5, "width": 64, "height": 64,
              "cfg_scale": 6.5, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    result = api.txt2img(**params)
    cli = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "generate", params["prompt"], "--seed", "1234",
                          "--steps", "5", "--width", "64", "--height", "64", "--cfg-scale", "6.5", "--sampler",
                          "DPM++ 2M", "--scheduler", "Karras", "--threads", "1", "--outdir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr
    path = cli.stdout.strip().splitlines()[-1]
    with Image.open(path) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(result.image.convert("RGB")))
        assert saved.info["parameters"] == result.image.info["parameters"]
