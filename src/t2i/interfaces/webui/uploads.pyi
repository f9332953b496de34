"""Image inputs that check an upload's limits before a pixel is decoded, as the API does.

Gradio's own Image and ImageEditor decode an upload (convert its mode, flatten it, re-save it)
while preparing an event's inputs, before t2i's handler sees the file: a decompression bomb (a
small file whose header claims billions of pixels) would be decoded there. These components read
the file's size and header first; an upload over the limits is not decoded and reaches the handler
as `Refused` (a str, so the filepath type holds), which `context.open_upload` turns into the
page's error message.

    image = CheckedImage(limits, type="filepath", label="Image")    # gr.Image's arguments
"""
from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import gradio as gr
from PIL import Image


class Refused(str):
    """An upload refused before decoding; the string is the reason."""


def header_problem(source: Path | bytes, limits) -> str | None:
    """Why an image file or its bytes may not be decoded (size in bytes, format, pixels from its
    header), or None."""
    from t2i.interfaces.api.codec import FORMATS

    size = len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
    if size > limits.max_upload_bytes:
        return f"the file is over the limit of {limits.max_upload_bytes / 2**20:.0f} MB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's bomb warning: the pixel limit below is ours
            opened = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                                formats=FORMATS)  # the header only
            width, height = opened.size
            opened.close()
    except Image.DecompressionBombError:
        return "the image is too large to decode"
    except Exception:  # a hostile header may raise anything; none of it is the server's fault
        return "not a readable image (PNG, JPEG, WEBP, BMP or GIF)"
    if width < 1 or height < 1 or width * height > limits.max_upload_pixels:
        return f"image of {width}x{height} pixels is over the limit of {limits.max_upload_pixels} pixels"
    return None


def _problem(file, limits) -> str | None:
    """The problem of one Gradio file payload (FileData, or the editor's raw bytes)."""
    if file is None:
        return None
    if isinstance(file, (bytes, bytearray, memoryview)):
        return header_problem(bytes(file), limits)
    url = getattr(file, "url", None) or ""
    if url.startswith("data:"):
        try:
            data = base64.b64decode(url.partition(",")[2], validate=False)
        except ValueError:
            return "not a readable image"
        return header_problem(data, limits)
    if getattr(file, "path", None):
        return header_problem(Path(file.path), limits)
    return None

from gradio.events import Dependency

class CheckedImage(gr.Image):
    """gr.Image whose upload is checked before Gradio decodes it."""

    is_template = True  # the page shows it as gr.Image
    t2i_limits = None  # set by `checked`: no __init__ of its own, Gradio reads the props from gr.Image's

    def preprocess(self, payload):
        problem = _problem(payload, self.t2i_limits)
        return Refused(problem) if problem else super().preprocess(payload)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


class CheckedImageEditor(gr.ImageEditor):
    """gr.ImageEditor whose background, layers and composite are checked before Gradio decodes them."""

    is_template = True  # the page shows it as gr.ImageEditor
    t2i_limits = None  # set by `checked`

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        problem = _problem(file, self.t2i_limits)
        return Refused(problem) if problem else super().convert_and_format_image(file, flatten_on_white)
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component