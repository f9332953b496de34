"""Image outputs: PNG/JPEG/WEBP with the web UI's infotext (read back by t2i and by the
piexif-based readers the web UI uses), atomic writes, counters shared by prefixed files, and
infotext made safe to print on a terminal."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from t2i import atomic
from t2i.errors import OutputError
from t2i.metadata import (IMAGE_FORMATS, build_infotext, image_format, parse_infotext, printable_infotext,
                          read_infotext, write_image, write_png)
from t2i.outputs import next_image_path

PROMPT = "a cat ✨ on a 屋根, (detailed:1.2)\nsecond line: ünïcödé «quotes» 𝒳"
NEGATIVE = "blurry, 低品質"
PARAMS = {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 42, "Size": (24, 16),
          "Lora hashes": "détail: 0123456789ab", "Version": "t2i 0.1.0"}


def _image(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).convert(mode)


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_each_format_round_trips_a_non_ascii_infotext(tmp_path: Path, fmt: str) -> None:
    text = build_infotext(PROMPT, NEGATIVE, PARAMS)
    path = write_image(_image("RGBA"), next_image_path(tmp_path, 42, PROMPT, ext=fmt), text)
    assert path.suffix == f".{fmt}" and os.listdir(tmp_path) == [path.name]
    assert read_infotext(path) == text
    parsed = parse_infotext(read_infotext(path) or "")
    assert parsed["Prompt"] == PROMPT and parsed["Negative prompt"] == NEGATIVE
    assert parsed["Lora hashes"] == "détail: 0123456789ab" and parsed["CFG scale"] == "7.5"
    with Image.open(path) as im:
        assert im.format == {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[fmt] and im.size == (24, 16)


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_exif_as_the_web_ui_reads_it(tmp_path: Path, fmt: str) -> None:
    """The web UI reads `piexif.load(image.info["exif"])["Exif"][UserComment]` and decodes it with
    `piexif.helper.UserComment.load`; that must give the text back."""
    piexif = pytest.importorskip("piexif")
    helper = pytest.importorskip("piexif.helper")

    text = build_infotext(PROMPT, NEGATIVE, PARAMS)
    path = write_image(_image(), tmp_path / f"a.{fmt}", text)
    with Image.open(path) as im:
        exif = piexif.load(im.info["exif"])
    comment = exif["Exif"][piexif.ExifIFD.UserComment]
    assert comment[:8] == b"UNICODE\x00"
    assert helper.UserComment.load(comment) == text


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_reads_files_the_web_ui_wrote(tmp_path: Path, fmt: str) -> None:
    """The web UI saves the image, then `piexif.insert`s `piexif.dump` of a UNICODE UserComment."""
    piexif = pytest.importorskip("piexif")
    helper = pytest.importorskip("piexif.helper")

    text = build_infotext(PROMPT, "", PARAMS)
    path = tmp_path / f"webui.{fmt}"
    _image().save(path, format={"jpg": "JPEG", "webp": "WEBP"}[fmt], quality=90)
    exif_bytes = piexif.dump({"Exif": {piexif.ExifIFD.UserComment: helper.UserComment.dump(text, "unicode")}})
    if fmt == "jpg":
        piexif.insert(exif_bytes, str(path))
    else:
        _image().save(path, format="WEBP", quality=90, exif=exif_bytes)
    assert read_infotext(path) == text


def test_image_format_choices() -> None:
    assert IMAGE_FORMATS == ("png", "jpg", "webp")
    assert [image_format(x) for x in ("png", "JPG", ".jpeg", "webp")] == ["png", "jpg", "jpg", "webp"]
    with pytest.raises(ValueError, match="png, jpg, webp"):
        image_format("gif")
    assert write_png is write_image  # the older name still works for every format


def test_failed_image_write_is_an_output_error_and_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = write_image(_image(), tmp_path / "00000-1-x.jpg", "old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(OutputError, match=r"00000-1-x\.jpg: the disk is full"):
        write_image(_image(), path, "new")
    monkeypatch.undo()
    assert read_infotext(path) == "old" and os.listdir(tmp_path) == [path.name]
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        write_image(_image(), tmp_path / "dir.png", "x")


def test_counter_counts_prefixed_files_so_no_number_is_reused(tmp_path: Path) -> None:
    names = ["00002-1-x.png", "grid-00005-1-x.png", "xyz_grid-00007-1-x.jpg", "prompt_matrix-00009-1-x.png",
             "loopback-00011-1-x.webp", "2024-01-01.png", "notes.txt", ".t2i-tmp-00abcdef-99999-1-x.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert next_image_path(tmp_path, 3, "y").name == "00012-3-y.png"
    (tmp_path / "upscaled_x2-00020-1-x.png").write_bytes(b"")
    assert next_image_path(tmp_path, 3, "y", ext="webp").name == "00021-3-y.webp"


def test_printable_infotext_escapes_terminal_controls() -> None:
    hostile = "a cat\x1b[2J\x1b]0;owned\x07\rfake line\x00\x9b31m\u202eevil\u2028x\nSteps: 1,\tSeed: 2 屋根"
    safe = printable_infotext(hostile)
    assert safe == ("a cat\\x1b[2J\\x1b]0;owned\\x07\\x0dfake line\\x00\\x9b31m\\u202eevil\\u2028x"
                    "\nSteps: 1,\tSeed: 2 屋根")
    assert all(c in "\n\t" or c.isprintable() for c in safe)
    assert printable_infotext(build_infotext(PROMPT, NEGATIVE, PARAMS)) == build_infotext(PROMPT, NEGATIVE, PARAMS)
