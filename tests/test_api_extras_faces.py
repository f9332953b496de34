"""The extras with face restoration, as the web UI's clients call them: gfpgan_visibility /
codeformer_visibility over HTTP with the server's --face-restorer (random RestoreFormer weights),
a 422 naming the field when the server has no restorer or the field does not fit its kind; and
`t2i upscale --gfpgan-visibility` through the CLI."""
import importlib.util
import signal
import subprocess
import sys

import numpy as np
import pytest
from api_helpers import Server, image_of, png_b64
from PIL import Image

if importlib.util.find_spec("spandrel") is None:
    pytest.skip("spandrel is not installed", allow_module_level=True)


def _image(w=40, h=32, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _stopped(srv: Server) -> None:
    assert srv.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in srv.log_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory, restorer_dir):
    srv = Server(tmp_path_factory.mktemp("api_faces"), "--upscaler-dir", str(restorer_dir), "--face-restorer",
                 "restoreformer")
    yield srv
    _stopped(srv)


def _single(client, **fields):
    body = {"image": png_b64(_image()), "upscaler_1": "Lanczos", "upscaling_resize": 2, **fields}
    return client.post("/sdapi/v1/extra-single-image", json=body)


def test_extra_single_image_restores_faces_with_the_servers_restorer(server):
    with server.client() as client:
        plain = _single(client)
        restored = _single(client, gfpgan_visibility=1, codeformer_weight=0)  # webuiapi sends ints
        half = _single(client, gfpgan_visibility=0.5)
    for answer in (plain, restored, half):
        assert answer.status_code == 200, answer.text
    images = [np.asarray(image_of(a.json()["image"]), dtype=float) for a in (plain, restored, half)]
    assert all(im.shape == (64, 80, 3) for im in images)  # upscaled 2x, then restored at that size
    assert np.abs(images[1] - images[0]).mean() > 5  # the random restorer changes the image
    # visibility 0.5 blends half of the restored image into the upscaled one
    assert np.abs(images[2] - (images[0] + images[1]) / 2).max() <= 1
    assert "GFPGAN visibility: 1" in restored.json()["html_info"]
    assert "GFPGAN visibility" not in plain.json()["html_info"]


def test_extra_batch_images_restores_every_image(server):
    body = {"imageList": [{"data": png_b64(_image(seed=i)), "name": f"im{i}.png"} for i in range(2)],
            "upscaler_1": "None", "gfpgan_visibility": 1.0}
    with server.client() as client:
        answer = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert answer.status_code == 200, answer.text
    images = [image_of(b64) for b64 in answer.json()["images"]]
    assert [im.size for im in images] == [(40, 32), (40, 32)]  # upscaler None: the input size
    for i, image in enumerate(images):
        assert np.abs(np.asarray(image, float) - np.asarray(_image(seed=i), float)).mean() > 5


def test_a_field_for_another_kind_of_restorer_is_a_422(server):
    with server.client() as client:
        answer = _single(client, codeformer_visibility=1.0)
    assert answer.status_code == 422
    body = answer.json()
    assert body.get("field") == "codeformer_visibility", body
    assert "RestoreFormer" in body["detail"] and "gfpgan_visibility" in body["detail"]


def test_no_face_restorer_configured_is_a_422(tmp_path):
    srv = Server(tmp_path / "srv")
    try:
        with srv.client() as client:
            answer = _single(client, gfpgan_visibility=1.0)
            plain = _single(client)
    finally:
        _stopped(srv)
    assert answer.status_code == 422 and answer.json().get("field") == "gfpgan_visibility", answer.text
    assert "no face restorer" in answer.json()["detail"] and "--face-restorer" in answer.json()["detail"]
    assert plain.status_code == 200


def test_cli_upscale_restores_faces_after_upscaling(restorer_dir, tmp_path):
    from t2i.metadata import parse_infotext, read_infotext

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "upscale", *map(str, args)],
                              capture_output=True, text=True, timeout=300)

    src = tmp_path / "in.png"
    _image().save(src)
    common = ("--upscaler", "lanczos", "--scale", 2, "--threads", 1)
    restored = cli(src, *common, "--face-restorer", restorer_dir / "restoreformer.pth", "--gfpgan-visibility", 1,
                   "-o", tmp_path / "r.png")
    assert restored.returncode == 0, restored.stderr
    plain = cli(src, *common, "-o", tmp_path / "p.png")
    assert plain.returncode == 0, plain.stderr
    a, b = (np.asarray(Image.open(tmp_path / name), dtype=float) for name in ("r.png", "p.png"))
    assert a.shape == b.shape == (64, 80, 3) and np.abs(a - b).mean() > 5
    assert parse_infotext(read_infotext(tmp_path / "r.png"))["GFPGAN visibility"] == "1"
    missing = cli(src, *common, "--gfpgan-visibility", 1, "-o", tmp_path / "x.png")
    assert missing.returncode == 2 and "needs a face restorer" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "x.png").exists()


def test_extras_save_into_the_output_folder_unless_asked_not_to(server):
    folder = server.outdir / "extras"
    before = set(folder.glob("*.png")) if folder.exists() else set()
    with server.client() as client:
        kept = _single(client)
        unsaved = _single(client, save_images=False)  # t2i's own key: its web UI saves elsewhere itself
        batch = client.post("/sdapi/v1/extra-batch-images", json={
            "imageList": [{"data": png_b64(_image(seed=3)), "name": "mine.png"}], "upscaler_1": "Lanczos",
            "upscaling_resize": 1, "save_images": False})
    assert kept.status_code == unsaved.status_code == batch.status_code == 200, (unsaved.text, batch.text)
    assert len(set(folder.glob("*.png")) - before) == 1  # the first request's image only
    assert image_of(unsaved.json()["image"]).size == (80, 64)  # not saved, still answered
