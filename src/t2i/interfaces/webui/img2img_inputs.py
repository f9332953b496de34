"""img2img's input modes, as the web UI has them: img2img, Sketch, Inpaint (mask brush), Inpaint
sketch, Inpaint upload (image + mask file) and Batch (several uploads, or a server folder on a
loopback bind); each mode turns its inputs into (init image, mask) pairs for the API request.

Masks from a brush: every painted pixel (any layer, alpha > 0) is repainted, as the web UI does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image, ImageChops

from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.webui.context import open_upload
from t2i.interfaces.webui.uploads import CheckedImage, CheckedImageEditor, checked

MODES = ("img2img", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload", "batch")
LABELS = {"img2img": "img2img", "sketch": "Sketch", "inpaint": "Inpaint", "inpaint_sketch": "Inpaint sketch",
          "inpaint_upload": "Inpaint upload", "batch": "Batch"}
INPAINT_MODES = ("inpaint", "inpaint_sketch", "inpaint_upload")
COLORS = ["#000000", "#ffffff", "#ff0000", "#00ff00", "#0000ff", "#ffff00", "#ff00ff", "#00ffff"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Inputs:
    mode: object  # gr.State: the selected mode
    tabs: object
    mode_tabs: list = field(default_factory=list)  # (gr.Tab, mode name)
    components: dict = field(default_factory=dict)  # name -> component
    groups: dict = field(default_factory=dict)

    def inputs(self) -> set:
        return {self.mode, *self.components.values()}


def _editor(limits, elem_id: str, brush) -> object:
    return checked(CheckedImageEditor, limits, type="filepath", format="png", image_mode="RGBA",
                   sources=["upload", "clipboard"], brush=brush, eraser=gr.Eraser(), layers=False, height=420,
                   elem_id=elem_id, label="Image", transforms=())


def build(ctx) -> Inputs:
    mode = gr.State("img2img")
    lim = ctx.limits  # uploads checked against them before Gradio decodes a pixel (uploads.py)
    with gr.Tabs(elem_id="img2img_mode_tabs") as tabs:
        inputs = Inputs(mode, tabs)
        c = inputs.components
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t1:
            c["image"] = checked(CheckedImage, lim, type="filepath", sources=["upload", "clipboard"],
                                 label="Image for img2img", height=420, elem_id="img2img_image")
        with gr.Tab("Sketch", id="sketch", elem_id="img2img_sketch_tab") as t2:
            c["sketch"] = _editor(lim, "img2img_sketch", gr.Brush(colors=COLORS, color_mode="defaults"))
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t3:
            c["inpaint"] = _editor(lim, "img2img_inpaint", gr.Brush(colors=[("#ffffff", 0.75)], color_mode="fixed"))
        with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as t4:
            c["inpaint_sketch"] = _editor(lim, "img2img_inpaint_sketch",
                                          gr.Brush(colors=COLORS, color_mode="defaults"))
        with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t5:
            with gr.Row():
                c["upload_image"] = checked(CheckedImage, lim, type="filepath", sources=["upload"], label="Image",
                                            height=300, elem_id="img2img_upload_image")
                c["upload_mask"] = checked(CheckedImage, lim, type="filepath", sources=["upload"],
                                           label="Mask (white = repaint)", height=300, elem_id="img2img_upload_mask")
        with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as t6:
            c["batch_files"] = gr.File(file_count="multiple", file_types=["image"], label="Images",
                                       elem_id="img2img_batch_files")
            if ctx.loopback:
                c["batch_dir"] = gr.Textbox(label="Input directory (on the server)", elem_id="img2img_batch_dir",
                                            placeholder="a folder of images; leave empty to use the uploads")
                c["batch_mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (optional; masks by file name)",
                                                 elem_id="img2img_batch_mask_dir")
            else:
                gr.Markdown("Server folders are offered on a loopback server only; upload the images instead.")
    inputs.mode_tabs = list(zip((t1, t2, t3, t4, t5, t6), MODES))
    ctx.hints.update({"img2img_batch_dir": "every image in this folder is a job; results go to the output folder",
                      "img2img_batch_mask_dir": "a mask with the same file name as each image makes it an "
                                                "inpainting job"})
    return inputs


# ----------------------------------------------------------------------------- to (image, mask) pairs


def _mask_of_layers(value: dict, limits, size) -> Image.Image | None:
    mask = None
    for i, path in enumerate(value.get("layers") or []):
        layer = open_upload(path, f"mask layer {i}", limits)
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        if mask is not None and alpha.size != mask.size:
            alpha = alpha.resize(mask.size, Image.Resampling.NEAREST)
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is not None and mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask if mask is not None and mask.getbbox() else None


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def pairs(ctx, inputs: Inputs, data: dict) -> tuple[list[tuple[Image.Image, Image.Image | None, str]], str]:
    """[(init image, mask or None, name)] of the selected mode; ApiError for what is missing."""
    c, lim = inputs.components, ctx.limits
    mode = data.get(inputs.mode) or "img2img"
    if mode == "img2img":
        image = open_upload(data.get(c["image"]), "image", lim)
        _need(image, "upload an image to the img2img tab")
        return [(_rgb(image), None, "")], mode
    if mode == "inpaint_upload":
        image = open_upload(data.get(c["upload_image"]), "image", lim)
        mask = open_upload(data.get(c["upload_mask"]), "mask", lim)
        _need(image, "upload an image to Inpaint upload")
        _need(mask, "upload a mask to Inpaint upload (white = repaint)")
        return [(_rgb(image), mask.convert("L"), "")], mode
    if mode == "batch":
        return _batch(ctx, c, data), mode
    value = data.get(c[mode]) or {}
    background = open_upload(value.get("background"), "image", lim)
    _need(background, f"upload an image to the {LABELS[mode]} tab")
    composite = open_upload(value.get("composite"), "image", lim) or background
    if mode == "sketch":
        return [(_rgb(composite), None, "")], mode
    mask = _mask_of_layers(value, lim, background.size)
    _need(mask, f"paint the area to repaint on the {LABELS[mode]} image")
    init = background if mode == "inpaint" else composite
    return [(_rgb(init), mask, "")], mode


def _need(value, message: str) -> None:
    if value is None:
        raise ApiError(422, message)


def _batch(ctx, c, data) -> list:
    lim = ctx.limits
    folder = (data.get(c["batch_dir"]) or "").strip() if "batch_dir" in c else ""
    mask_folder = (data.get(c["batch_mask_dir"]) or "").strip() if "batch_mask_dir" in c else ""
    if folder:
        files = sorted(p for p in Path(folder).expanduser().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if Path(folder).expanduser().is_dir() else None
        if files is None:
            raise ApiError(422, f"input directory {folder!r} is not a folder on the server")
    else:
        files = [Path(p) for p in (data.get(c["batch_files"]) or [])]
    if not files:
        raise ApiError(422, "upload images (or name an input directory) for the batch")
    if len(files) > lim.max_script_images:
        raise ApiError(422, f"a batch takes at most {lim.max_script_images} images, got {len(files)}")
    masks = Path(mask_folder).expanduser() if mask_folder else None
    out = []
    for path in files:
        image = open_upload(str(path), path.name, lim)
        mask = None
        if masks is not None:
            found = [m for m in masks.glob(path.stem + ".*") if m.suffix.lower() in IMAGE_SUFFIXES]
            mask = open_upload(str(found[0]), found[0].name, lim).convert("L") if found else None
        out.append((_rgb(image), mask, path.stem))
    return out
