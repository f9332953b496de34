"""Invisible watermarks (the CompVis scripts' `put_watermark`), with invisible-watermark's
`dwtDctSvd` method: the text's bits are embedded in the DWT-DCT-SVD coefficients of the image's
chroma channels, invisible to the eye, and read back from the image alone.

    marked = put_watermark(image, "t2i")                  # at least 256 px a side
    read_watermark(marked, length=3)                      # b't2i'
    bit_accuracy(marked, "t2i")                           # 1.0; about 0.9+ after JPEG quality 90

Opt-in (`--watermark TEXT`); invisible-watermark is optional (`pip install "t2i[extras]"`) and
imported on first use. The payload has no length header: reading needs the text's length in
bytes (or the text expected, to measure bit accuracy).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from t2i.errors import ParamError, T2IError

METHOD = "dwtDctSvd"
MIN_SIDE = 256  # the method's 4x4 blocks on the half-size DWT band need at least this
PIP_HINT = 'pip install invisible-watermark (or: pip install "t2i[extras]")'


def _imwatermark():
    try:
        import imwatermark
    except ImportError as err:
        raise T2IError(f"watermarks need invisible-watermark ({err}): {PIP_HINT}") from None
    return imwatermark


def _bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def check_size(image: Image.Image, reading: bool = False) -> None:
    if min(image.size) < MIN_SIDE:
        what = ("so this image holds none" if reading else
                "generate larger (--width/--height), upscale first, or leave out --watermark")
        raise ParamError(f"an invisible watermark needs an image of at least {MIN_SIDE}x{MIN_SIDE} pixels; this one is "
                         f"{image.width}x{image.height}: {what}")


def capacity_bits(size: tuple[int, int]) -> int:
    """Bits the image holds once (one per 4x4 block of the half-size band); longer texts do not fit."""
    return (size[0] // 2 // 4) * (size[1] // 2 // 4)


def put_watermark(image: Image.Image, text: str) -> Image.Image:
    """`image` with `text` embedded (RGB out; the size is kept)."""
    if not text:
        return image
    check_size(image)
    payload = text.encode("utf-8")
    if len(payload) * 8 > capacity_bits(image.size):
        raise ParamError(f"the watermark {text!r} ({len(payload)} bytes) does not fit a {image.width}x{image.height} "
                         f"image (at most {capacity_bits(image.size) // 8} bytes)")
    encoder = _imwatermark().WatermarkEncoder()
    encoder.set_watermark("bytes", payload)
    marked = encoder.encode(_bgr(image), METHOD)
    return Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))


def read_bits(image: Image.Image, n_bits: int) -> np.ndarray:
    check_size(image, reading=True)
    if n_bits <= 0:
        raise ParamError("the watermark's length must be at least 1 byte")
    decoder = _imwatermark().WatermarkDecoder("bits", n_bits)
    return np.asarray(decoder.decode(_bgr(image), METHOD), dtype=np.uint8)


def read_watermark(image: Image.Image, length: int) -> bytes:
    """The `length` bytes embedded in `image` (garbage if it holds no watermark)."""
    return np.packbits(read_bits(image, length * 8)).tobytes()


def bit_accuracy(image: Image.Image, text: str) -> float:
    """The fraction of `text`'s bits read back correctly (0.5 is chance: no watermark)."""
    expected = np.unpackbits(np.frombuffer(text.encode("utf-8"), dtype=np.uint8))
    return float((read_bits(image, len(expected)) == expected).mean())
