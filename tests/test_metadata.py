"""Infotext text format (exact strings), parsing, and storage in PNG/JPEG/WEBP files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from t2i.metadata import (
    build_infotext,
    decode_user_comment,
    encode_user_comment,
    format_value,
    parse_infotext,
    read_infotext,
    write_png,
)

FULL_PARAMS: dict[str, object] = {
    # given out of order on purpose: the output order is the web UI's
    "Version": "t2i 0.1.0",
    "Lora hashes": "detailer: 0123456789ab",
    "Denoising strength": 0.5,
    "Model": "v1-5-pruned-emaonly",
    "Model hash": "6ce0161689",
    "Size": (512, 768),
    "Seed": 1234,
    "CFG scale": 7.0,
    "Schedule type": "Karras",
    "Sampler": "DPM++ 2M",
    "Steps": 20,
}
FULL_LINE = (
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    'Denoising strength: 0.5, Lora hashes: "detailer: 0123456789ab", Version: t2i 0.1.0'
)
UNICODE_PROMPT = "a cat ✨ on a 屋根\nsecond line: (detailed:1.2), ünïcödé"
UNICODE_NEGATIVE = "blurry, 低品質\nwatermark"


def _image(mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).convert(mode)


# ---------------------------------------------------------------------------- build


def test_build_matches_web_ui_example() -> None:
    text = build_infotext("a photo of a cat", "blurry, lowres", FULL_PARAMS)
    assert text == f"a photo of a cat\nNegative prompt: blurry, lowres\n{FULL_LINE}"


def test_build_without_negative_leaves_line_out() -> None:
    text = build_infotext("cat", "", {"Steps": 4, "Sampler": "Euler a", "Seed": 7})
    assert text == "cat\nSteps: 4, Sampler: Euler a, Seed: 7"


def test_build_drops_none_and_empty_values() -> None:
    params = {"Steps": 20, "VAE": None, "Model": "", "Seed": 1, "Hires upscaler": "", "Size": "64x64"}
    text = build_infotext("p", "", params)
    assert text == "p\nSteps: 20, Seed: 1, Size: 64x64"


@pytest.mark.parametrize(
    ("clip_skip", "shown"), [(1, False), (0, False), ("1", False), (2, True), ("2", True)]
)
def test_clip_skip_only_when_above_one(clip_skip: object, shown: bool) -> None:
    params = {"Steps": 20, "Clip skip": clip_skip, "Mask blur": 4, "Seed": 3, "Denoising strength": 0.75}
    text = build_infotext("p", "", params)
    if shown:
        assert text == "p\nSteps: 20, Seed: 3, Denoising strength: 0.75, Clip skip: 2, Mask blur: 4"
    else:
        assert text == "p\nSteps: 20, Seed: 3, Denoising strength: 0.75, Mask blur: 4"


def test_version_last_and_extras_keep_given_order() -> None:
    params = {"Version": "v1", "TI hashes": "abc", "Hires steps": 10, "Steps": 5, "Hires upscale": 2.0}
    text = build_infotext("p", "", params)
    assert text == "p\nSteps: 5, TI hashes: abc, Hires steps: 10, Hires upscale: 2, Version: v1"


def test_values_with_separators_are_json_quoted() -> None:
    params = {"Steps": 1, "Lora hashes": "a: 0123", "Note": 'say "hi", ok\\', "Multi": "x\ny"}
    text = build_infotext("p", "", params)
    assert text == (
        'p\nSteps: 1, Lora hashes: "a: 0123", Note: "say \\"hi\\", ok\\\\", Multi: "x\\ny"'
    )
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "a: 0123"
    assert parsed["Note"] == 'say "hi", ok\\'
    assert parsed["Multi"] == "x\ny"


@pytest.mark.parametrize(
    ("value", "expected"),
    [(7.0, "7"), (0.5, "0.5"), (7.5, "7.5"), (0.1 + 0.2, "0.3"), (np.float32(0.7), "0.7"),
     (np.int64(12), "12"), (1234567.0, "1234567"), (True, "True"), ((64, 32), "64x32")],
)
def test_format_value_is_compact(value: object, expected: str) -> None:
    assert format_value(value) == expected


def test_unparseable_key_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be parsed back"):
        build_infotext("p", "", {"Steps": 1, "Bad: key": 2})


# ---------------------------------------------------------------------------- parse


def test_round_trip_build_parse() -> None:
    parsed = parse_infotext(build_infotext("a photo of a cat", "blurry, lowres", FULL_PARAMS))
    assert parsed == {
        "Prompt": "a photo of a cat",
        "Negative prompt": "blurry, lowres",
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "1234",
        "Size": "512x768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Denoising strength": "0.5",
        "Lora hashes": "detailer: 0123456789ab",
        "Version": "t2i 0.1.0",
    }
    assert list(parsed)[-1] == "Version"


def test_multiline_unicode_round_trip() -> None:
    params = {"Steps": 2, "Seed": 1, "Sampler": "Euler"}
    parsed = parse_infotext(build_infotext(UNICODE_PROMPT, UNICODE_NEGATIVE, params))
    assert parsed["Prompt"] == UNICODE_PROMPT
    assert parsed["Negative prompt"] == UNICODE_NEGATIVE
    assert parsed["Steps"] == "2"


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    text = "a cat\nSteps: 20, Seed: 1"
    assert parse_infotext(text) == {"Prompt": "a cat\nSteps: 20, Seed: 1", "Negative prompt": ""}
    text = "a cat\nNegative prompt: dog\nlast words: here"
    assert parse_infotext(text) == {"Prompt": "a cat", "Negative prompt": "dog\nlast words: here"}


def test_parse_params_only_and_empty() -> None:
    assert parse_infotext("Steps: 1, Sampler: Euler, Seed: 5") == {
        "Prompt": "", "Negative prompt": "", "Steps": "1", "Sampler": "Euler", "Seed": "5"
    }
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": ""}


def test_parse_tolerates_crlf_and_trailing_newline() -> None:
    text = "cat\r\nNegative prompt: dog\r\nSteps: 1, Sampler: Euler, Seed: 5\r\n"
    parsed = parse_infotext(text)
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Seed"]) == ("cat", "dog", "5")


def test_empty_prompt_with_negative_round_trips() -> None:
    text = build_infotext("", "ugly", {"Steps": 1, "Sampler": "Euler", "Seed": 5})
    assert text == "Negative prompt: ugly\nSteps: 1, Sampler: Euler, Seed: 5"
    assert parse_infotext(text)["Prompt"] == ""
    assert parse_infotext(text)["Negative prompt"] == "ugly"


# ---------------------------------------------------------------------------- files


def _png_chunk_types(path: Path) -> list[bytes]:
    data = path.read_bytes()
    pos, kinds = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kinds.append(data[pos + 4:pos + 8])
        pos += 12 + length
    return kinds


def test_png_round_trip_uses_text_chunk(tmp_path: Path) -> None:
    text = build_infotext("a photo of a cat", "blurry, lowres", FULL_PARAMS)
    path = write_png(_image(), tmp_path / "out.png", text)
    assert path == tmp_path / "out.png"
    assert b"tEXt" in _png_chunk_types(path)
    assert b"tEXtparameters\x00a photo of a cat" in path.read_bytes()
    assert read_infotext(path) == text
    with Image.open(path) as im:
        assert im.info["parameters"] == text  # what other tools read
        assert read_infotext(im) == text
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # no temp file left behind


def test_png_non_latin1_uses_itxt(tmp_path: Path) -> None:
    text = build_infotext(UNICODE_PROMPT, UNICODE_NEGATIVE, {"Steps": 2, "Seed": 1, "Sampler": "Euler"})
    path = write_png(_image(), tmp_path / "u.png", text)
    kinds = _png_chunk_types(path)
    assert b"iTXt" in kinds and b"tEXt" not in kinds
    assert read_infotext(str(path)) == text
    parsed = parse_infotext(read_infotext(path) or "")
    assert parsed["Prompt"] == UNICODE_PROMPT and parsed["Negative prompt"] == UNICODE_NEGATIVE


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_exif_round_trip(tmp_path: Path, suffix: str) -> None:
    text = build_infotext(UNICODE_PROMPT, UNICODE_NEGATIVE, FULL_PARAMS)
    path = write_png(_image("RGBA"), tmp_path / f"out{suffix}", text)
    assert read_infotext(path) == text
    with Image.open(path) as im:
        assert im.format == ("WEBP" if suffix == ".webp" else "JPEG")
        raw = im.getexif().get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment]
    assert raw == b"UNICODE\x00" + text.encode("utf-16-be")  # what piexif-based readers expect
    assert parse_infotext(read_infotext(path) or "")["Prompt"] == UNICODE_PROMPT


def test_user_comment_charsets() -> None:
    assert encode_user_comment("hé") == b"UNICODE\x00\x00h\x00\xe9"
    assert decode_user_comment(b"UNICODE\x00\x00h\x00\xe9") == "hé"
    assert decode_user_comment(b"UNICODE\x00" + "Steps: 1".encode("utf-16-le")) == "Steps: 1"
    assert decode_user_comment(b"ASCII\x00\x00\x00Steps: 1") == "Steps: 1"
    assert decode_user_comment(b"\x00" * 8 + b"Steps: 1\x00\x00") == "Steps: 1"


def test_read_without_infotext_is_none(tmp_path: Path) -> None:
    plain = tmp_path / "plain.png"
    _image().save(plain)
    assert read_infotext(plain) is None
    _image().save(tmp_path / "plain.jpg")
    assert read_infotext(tmp_path / "plain.jpg") is None
    assert read_infotext(_image()) is None


def test_write_overwrites_atomically_and_cleans_up_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_png(_image(), tmp_path / "a.png", "first\nSteps: 1, Sampler: Euler, Seed: 1")
    before = path.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(_image(), path, "second")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_write_refuses_unknown_suffix_and_oversized_jpeg(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        write_png(_image(), tmp_path / "out.gif", "x")
    with pytest.raises(ValueError, match="save as .png"):
        write_png(_image(), tmp_path / "big.jpg", "x" * 40_000)
    assert os.listdir(tmp_path) == []
