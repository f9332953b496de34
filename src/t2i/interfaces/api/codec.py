"""Images in and out of JSON: base64, checked before they are decoded.

An upload is refused (422 naming its field) when its base64 is broken, when it would be more
than `max_upload_bytes`, when it is no PNG/JPEG/WEBP/BMP/GIF, or when its header announces more
than `max_upload_pixels` pixels: the size is read from the header, before any pixel is decoded,
so a small file that would expand to gigabytes (a decompression bomb) costs nothing.
"""
from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from t2i.interfaces.api.config import Limits
from t2i.interfaces.api.errors import ApiError
from t2i.metadata import png_info

FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_WHITESPACE = re.compile(r"\s+")


def b64_bytes(text: object, field: str, limits: Limits) -> bytes:
    """The bytes of a base64 string, with or without a `data:image/...;base64,` prefix."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(422, f"{field}: expected a base64-encoded image (a non-empty string)", field=field)
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ApiError(422, f"{field}: a data URL must be `data:image/png;base64,...`", field=field)
    text = _WHITESPACE.sub("", text)
    if len(text) // 4 * 3 > limits.max_upload_bytes + 3:
        raise ApiError(422, f"{field}: image of about {len(text) // 4 * 3 / 2**20:.1f} MB is over the limit of "
                            f"{limits.max_upload_bytes / 2**20:.0f} MB", field=field)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{field}: not valid base64", field=field) from None


def decode_image(text: object, field: str, limits: Limits) -> Image.Image:
    """A PIL image from a base64 upload, fully checked and loaded (see the module's docstring)."""
    data = b64_bytes(text, field, limits)
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ApiError(422, f"{field}: not a readable image (PNG, JPEG, WEBP, BMP or GIF), or one too large to "
                            f"decode", field=field) from None
    except Exception:  # a decoder fed hostile bytes may raise anything; none of it is the server's fault
        raise ApiError(422, f"{field}: not a readable image", field=field) from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > limits.max_upload_pixels:  # before a pixel is decoded
        raise ApiError(422, f"{field}: image of {width}x{height} pixels is over the limit of "
                            f"{limits.max_upload_pixels} pixels", field=field)
    try:
        image.load()
    except Exception:  # as above
        raise ApiError(422, f"{field}: the image data is damaged or truncated", field=field) from None
    return image


def decode_images(items: object, field: str, limits: Limits) -> list[Image.Image]:
    if not isinstance(items, list) or not items:
        raise ApiError(422, f"{field}: expected a non-empty list of base64 images", field=field)
    return [decode_image(item, f"{field}[{i}]", limits) for i, item in enumerate(items)]


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    """PNG bytes carrying the infotext as the web UI writes it (text chunk `parameters`)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(infotext))
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
