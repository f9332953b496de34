"""The PNG Info tab: drop an image, see the parameters it was made with (its infotext and other
text chunks), send them (and the image) to txt2img, img2img, inpaint or extras."""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.webui.context import open_upload


@dataclass
class PngInfoTab:
    image: object
    text: object  # gr.State: the infotext
    send: dict  # "txt2img" | "img2img" | "inpaint" | "extras" -> Button


def describe(image) -> tuple[str, str]:
    """(infotext, HTML of every text chunk) of a PIL image."""
    from t2i.metadata import read_infotext

    try:
        text = read_infotext(image) or ""
    except Exception:  # a damaged EXIF block in an image that decoded: no parameters
        text = ""
    items = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str) and k != "parameters"}
    if not text and not items:
        return "", '<div class="t2i-info"><p>This image holds no generation parameters.</p></div>'
    parts = []
    if text:
        parts.append(f'<div><b>parameters</b><pre class="t2i-pnginfo-text">{html.escape(text)}</pre></div>')
    for key, value in items.items():
        parts.append(f"<div><b>{html.escape(key)}</b><pre>{html.escape(value[:5000])}</pre></div>")
    return text, f'<div class="t2i-info">{"".join(parts)}</div>'


def build(ctx) -> PngInfoTab:
    text = gr.State("")
    with gr.Row(equal_height=False, elem_classes=["t2i-main-row"]):
        with gr.Column(scale=1, min_width=320):
            image = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Source", height=420,
                             elem_id="pnginfo_image")
        with gr.Column(scale=1, min_width=320):
            info = gr.HTML("", elem_id="pnginfo_html")
            with gr.Row(elem_classes=["t2i-send-row"]):
                send = {name: gr.Button(f"Send to {name}", size="sm", elem_id=f"pnginfo_send_{name}")
                        for name in ("txt2img", "img2img", "inpaint", "extras")}

    def read(path):
        if not path:
            return "", ""
        try:
            return describe(open_upload(path, "image", ctx.limits))
        except ApiError as err:
            return "", f'<div class="t2i-error">{html.escape(err.detail)}</div>'

    image.change(read, inputs=image, outputs=[text, info], show_progress="hidden")
    return PngInfoTab(image, text, send)
