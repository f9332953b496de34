"""Fine-tuning data: captions (sidecars, metadata.jsonl, kohya N_concept folders, --caption), the
preflight that reads every file and lists what it skips and why, colour conversions, buckets."""
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2i.data.buckets import fit_to_bucket, make_buckets, nearest_bucket
from t2i.data.captioned import scan_folder
from t2i.data.preflight import preflight, read_image


def png16_rgb(path: Path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def solid(color, size=(24, 16), mode="RGB"):
    return Image.new(mode, size, color)


def test_captions_from_sidecars_metadata_folders_and_default(tmp_path):
    solid("red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red  square\n", encoding="utf-8")
    solid("blue").save(tmp_path / "b.jpg")
    (tmp_path / "b.caption").write_bytes("\ufeffa blue square".encode("utf-8"))  # BOM allowed
    solid("green").save(tmp_path / "c.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "c.png", "text": "a green one"}) + "\nnot json\n")
    concept = tmp_path / "10_sks dog"
    concept.mkdir()
    solid("white").save(concept / "d.png")
    solid("black").save(tmp_path / "e.png")  # no caption at all
    scan = scan_folder(tmp_path)
    got = {e.path.name: (e.caption, e.repeats, e.caption_source) for e in scan.entries}
    assert got == {"a.png": ("a red square", 1, "sidecar"), "b.jpg": ("a blue square", 1, "sidecar"),
                   "c.png": ("a green one", 1, "metadata.jsonl"), "d.png": ("sks dog", 10, "folder"),
                   "e.png": (None, 1, "")}
    checked = preflight(scan)
    assert sorted(e.path.name for e, _ in checked.images) == ["a.png", "b.jpg", "c.png", "d.png"]
    reasons = {s.path.name: s.reason for s in checked.skipped}
    assert "no caption" in reasons["e.png"] and "line 2 is not JSON" in reasons["metadata.jsonl"]
    with_default = {e.path.name: e.caption for e in scan_folder(tmp_path, default_caption="a photo").entries}
    assert with_default["e.png"] == "a photo" and with_default["a.png"] == "a red square"


def test_preflight_skips_bad_files_and_says_why(tmp_path):
    solid("red").save(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    data = (tmp_path / "good.png").read_bytes()
    big = Image.new("RGB", (64, 64))
    big.putdata([(i % 251, i % 253, i % 255) for i in range(64 * 64)])
    big.save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])  # truncated
    Image.new("L", (400, 300)).save(tmp_path / "bomb.png")  # 120 000 pixels, over the limit below
    os.mkfifo(tmp_path / "pipe.png")  # must never be opened: reading a FIFO would block
    (tmp_path / "notes.md").write_text("hello")
    (tmp_path / "latin1.png").write_bytes(data)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    os.symlink(tmp_path / "missing.png", tmp_path / "broken.png")
    result = preflight(scan_folder(tmp_path, default_caption="x"), max_pixels=100_000)
    assert [e.path.name for e, _ in result.images] == ["good.png"]
    reasons = {s.path.name: s.reason for s in result.skipped}
    assert set(reasons) == {"empty.png", "text.png", "cut.png", "bomb.png", "pipe.png", "notes.md", "latin1.png",
                            "broken.png"}
    assert "0 bytes" in reasons["empty.png"]
    assert "not an image" in reasons["text.png"]
    assert "truncated or damaged" in reasons["cut.png"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "FIFO" in reasons["pipe.png"]
    assert "not an image file type" in reasons["notes.md"]
    assert "latin1.txt is not UTF-8" in reasons["latin1.png"] and "0xe9" in reasons["latin1.png"]
    assert "broken link" in reasons["broken.png"]
    report = result.report()
    assert "1 images will train, 8 files skipped" in report and "pipe.png" in report


def test_colour_modes_convert_to_what_the_pixels_mean(tmp_path):
    rgb = (200, 40, 90)
    Image.new("RGB", (16, 16), rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    image, note = read_image(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB" and "CMYK" in note
    assert np.abs(np.asarray(image).astype(int) - rgb).max() <= 3

    grey16 = np.full((16, 16), 32896, np.uint16)  # 0.502 of 65535: mid grey, not the white of a plain convert
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    image, note = read_image(tmp_path / "grey16.png")
    assert "16-bit" in note and np.asarray(image)[0, 0].tolist() == [128, 128, 128]

    png16_rgb(tmp_path / "rgb16.png", np.full((16, 16, 3), [65535, 0, 32896], np.uint16))
    image, _ = read_image(tmp_path / "rgb16.png")
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 128]

    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))  # opaque blue left half
    rgba.save(tmp_path / "alpha.png")
    image, note = read_image(tmp_path / "alpha.png")
    pixels = np.asarray(image)
    assert "transparency" in note and pixels[0, 0].tolist() == [0, 0, 255] and pixels[0, 15].tolist() == [255, 255, 255]

    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    assert np.asarray(read_image(tmp_path / "palette.png")[0])[0, 0].tolist() == [10, 200, 30]

    exif = Image.new("RGB", (20, 10), "red")
    info = exif.getexif()
    info[0x0112] = 6  # stored sideways: rotate on reading
    exif.save(tmp_path / "rotated.jpg", exif=info)
    assert read_image(tmp_path / "rotated.jpg")[0].size == (10, 20)


def test_buckets_keep_the_aspect_ratio():
    buckets = make_buckets(64, step=16)
    assert buckets[0] == (64, 64) and all(w % 16 == 0 and h % 16 == 0 for w, h in buckets)
    assert all(max(w / h, h / w) <= 2 and abs(w * h - 64 * 64) <= 64 * 16 for w, h in buckets)
    assert nearest_bucket(300, 180, buckets) == (80, 48)  # landscape stays landscape: no square crop
    assert nearest_bucket(180, 300, buckets) == (48, 80)
    wide = Image.new("RGB", (300, 180), "white")
    wide.paste((255, 0, 0), (0, 0, 30, 180))  # a red band along the left edge: kept after fitting
    fitted = fit_to_bucket(wide, buckets)
    assert fitted.bucket == (80, 48) and fitted.original_size == (180, 300)
    assert fitted.pixels[24, 2].tolist() == [255, 0, 0]
    assert make_buckets(512, 64) == [(512, 512), (448, 576), (576, 448), (640, 384), (384, 640)]
    with pytest.raises(ValueError, match="multiple of 16"):
        make_buckets(72, 16)


def test_mirrored_captions_trade_left_and_right():
    from t2i.training.finetune.data import mirror_caption

    assert mirror_caption("a small red ring in the top left on a black background") == \
        "a small red ring in the top right on a black background"
    assert mirror_caption("Left of a RIGHT tree, the leftmost one, looking rightward") == \
        "Right of a LEFT tree, the rightmost one, looking leftward"
    # words that merely contain the letters stay
    assert mirror_caption("a bright, upright leftover") == "a bright, upright leftover"


def test_a_flipped_image_trains_on_its_mirrored_caption():
    """The loss function's draws: a flipped row's caption index moves to the mirrored copy, an
    unflipped row keeps its own, and both happen."""
    from types import SimpleNamespace

    import torch

    from t2i.training.finetune.config import FinetuneConfig
    from t2i.training.finetune.data import Bucket, TrainData
    from t2i.training.finetune.loop import make_loss_fn

    n = 4
    latents = torch.zeros(n, 4, 2, 2)
    bucket = Bucket(size=(8, 8), mean=latents, std=latents, captions=torch.arange(n), weights=torch.ones(n),
                    original_sizes=torch.zeros(n, 2), crops=torch.zeros(n, 2),
                    mean_flip=latents + 1e4, std_flip=latents)  # a flipped row's noisy latent is far from 0
    data = TrainData(captions=[f"caption {i} on the left" for i in range(n)], buckets=[bucket], preflight=None)
    model = SimpleNamespace(scheduler_config=lambda: {"num_train_timesteps": 10},
                            config=SimpleNamespace(scaling_factor=1.0))
    captions, flipped = [], []

    class Text:
        def group(self, caps, device):
            captions.append(caps.clone())
            return {}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, groups):
            zt = groups[0]["zt"]
            flipped.append(zt.flatten(1).abs().amax(1) > 100)
            return [torch.zeros_like(zt)]

    cfg = FinetuneConfig(method="full", flip=True, caption_dropout=0.0, batch_size=n, min_snr_gamma=0.0)
    loss_fn = make_loss_fn(cfg, model, Text(), data, None, (0, n), n, (0, 1), mirrored_offset=n + 1)
    for step in range(6):
        loss_fn({"net": Net()}, step, None)
    caps, flips = torch.cat(captions), torch.cat(flipped)
    assert flips.any() and (~flips).any()
    assert torch.equal(caps >= n + 1, flips)
    # each in its own copy's range: own caption i, or its mirror i + offset
    assert caps[~flips].max() < n and caps[flips].min() >= n + 1 and caps[flips].max() < 2 * n + 1
