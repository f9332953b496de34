"""Layout-to-image: `t2i generate "on a white background" --layout "red circle@0.1,0.1,0.4,0.4; ..."`.

A layout is `;`-separated objects `CLASS@x0,y0,x1,y1`, the box corners as fractions of the canvas
(x to the right, y downwards, as in `shapes`). A layout model (`model.conditioning: layout`,
t2i.models.ldm_conditioning) reads the prompt for the background and one token per object; the
unconditional side of guidance is the negative prompt with no objects.

    layout = "red circle@0.1,0.1,0.4,0.4; blue square@0.6,0.5,0.9,0.8"
    cond, uncond, objects = layout_conditioning(model, "on a white background", "", layout)
    unet = model.layout_unet(objects, batch_size)  # layout-map models: the boxes as input channels too
"""
from __future__ import annotations

from dataclasses import dataclass

from t2i.pipelines.params import ParamError

EXAMPLE = "red circle@0.1,0.1,0.4,0.4; blue square@0.6,0.5,0.9,0.8"


@dataclass(frozen=True)
class LayoutObject:
    name: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1]


def _box(part: str, numbers: str) -> tuple[float, float, float, float]:
    values = [v.strip() for v in numbers.split(",")]
    if len(values) != 4:
        raise ParamError(f"layout part {part!r}: the box needs 4 numbers x0,y0,x1,y1, got {len(values)}")
    try:
        box = tuple(float(v) for v in values)
    except ValueError:
        raise ParamError(f"layout part {part!r}: the box x0,y0,x1,y1 must be numbers, got {numbers.strip()!r}") from None
    if not all(0.0 <= v <= 1.0 for v in box):
        raise ParamError(f"layout part {part!r}: box coordinates are fractions of the canvas, from 0 to 1")
    if box[0] >= box[2] or box[1] >= box[3]:
        raise ParamError(f"layout part {part!r}: a box needs x0 < x1 and y0 < y1 (x0,y0 is the top-left corner)")
    return box


def parse_layout(text: str) -> list[LayoutObject]:
    """Objects of a layout string, in order; ParamError naming the part that is wrong."""
    objects = []
    for part in text.split(";"):
        if not part.strip():
            continue  # a trailing ";"
        name, at, numbers = part.partition("@")
        if not at:
            raise ParamError(f"layout part {part.strip()!r}: expected CLASS@x0,y0,x1,y1, e.g. {EXAMPLE!r}")
        name = " ".join(name.split())
        if not name:
            raise ParamError(f"layout part {part.strip()!r}: the class name before '@' is missing")
        objects.append(LayoutObject(name, _box(part.strip(), numbers)))
    if not objects:
        raise ParamError(f"the layout names no objects; expected e.g. {EXAMPLE!r}")
    return objects


def layout_rows(objects: list[LayoutObject], class_names: tuple[str, ...], max_objects: int) -> list[list[float]]:
    """Rows of class index, x0, y0, x1, y1 for a model with these classes and object slots."""
    if len(objects) > max_objects:
        raise ParamError(f"this layout model takes at most {max_objects} objects, the layout has {len(objects)}")
    rows = []
    for obj in objects:
        if obj.name not in class_names:
            raise ParamError(f"layout part {obj.name!r}: unknown class; this model's classes are: "
                             f"{', '.join(class_names)}")
        rows.append([float(class_names.index(obj.name)), *obj.box])
    return rows


def layout_conditioning(model, prompt: str, negative_prompt: str, layout: str):
    """(cond, uncond, objects): the context tensors (1, T + M, D) of a layout model (prompt +
    objects, and the negative prompt with no objects) and the objects (1, M, 5) themselves."""
    import torch

    from t2i.models.ldm_conditioning import null_objects

    cfg = model.config
    rows = layout_rows(parse_layout(layout), cfg.class_names, cfg.max_objects) if layout.strip() else []
    objects = null_objects(1, cfg.max_objects)
    for k, row in enumerate(rows):
        objects[0, k] = torch.tensor(row)
    with torch.no_grad():
        cond = model.layout_context([prompt], objects)
        uncond = model.layout_context([negative_prompt], null_objects(1, cfg.max_objects))
    return cond, uncond, objects


def check_layout_map_use(model, params, what: str = "txt2img") -> None:
    """ParamError for what a layout-map model (its boxes are UNet input channels) cannot run:
    img2img and inpainting, the hires fix's second pass and DeepCache, which call the UNet
    without its layout."""
    if not getattr(model.config, "layout_map", False):
        return
    if what != "txt2img":
        raise ParamError(f"this layout-to-image model takes its boxes as UNet input channels and runs txt2img "
                         f"only, not {what}; use `t2i generate PROMPT --layout ...`")
    if getattr(params, "enable_hr", False):
        raise ParamError("the hires fix is not available for this layout-to-image model (its second pass has no "
                         "layout); turn it off and upscale the result with `t2i upscale`")
    if getattr(params, "deepcache_interval", 1) > 1:
        raise ParamError("DeepCache is not available for this layout-to-image model; use deepcache_interval 1")
