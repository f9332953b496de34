"""`script_name` / `script_args` as the web UI's API takes them -> t2i's script options.

    x/y/z plot              positional as the web UI's script (axis types by index into the web
                            UI's axis list, or by label), or {"x": "Steps: 10,20", "y": ..., ...}
    prompt matrix           [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]
    loopback (img2img)      [loops, final_denoising_strength, denoising_curve, append_interrogation]
                            or the older [loops, denoising_strength_change_factor]
    poor man's outpainting  [pixels, mask_blur, inpainting_fill, directions] (img2img): OutpaintParams

Every script takes its options by t2i name as a JSON object too (`XYZOptions`, ... fields).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from t2i.errors import ParamError
from t2i.interfaces.api.errors import ApiError
from t2i.pipelines.generation_params import DIRECTIONS, FILL_MODES
from t2i.pipelines.schema import params_from_request
from t2i.pipelines.script_options import (
    LoopbackOptions,
    PromptMatrixOptions,
    XYZOptions,
)
from t2i.pipelines.xyz_axes import find_axis_option

XYZ, MATRIX, LOOPBACK, OUTPAINT = "x/y/z plot", "prompt matrix", "loopback", "poor man's outpainting"
TXT2IMG_SCRIPTS = (MATRIX, XYZ)
IMG2IMG_SCRIPTS = (LOOPBACK, OUTPAINT, MATRIX, XYZ)

# The web UI's X/Y/Z axis types, in its order (1.6-1.9): script_args give a type as an index into
# this list without the other task's entries ("t": txt2img only, "i": img2img only).
WEBUI_AXES = (
    ("Nothing", ""), ("Seed", ""), ("Var. seed", ""), ("Var. strength", ""), ("Steps", ""), ("Hires steps", "t"),
    ("CFG Scale", ""), ("Image CFG Scale", "i"), ("Prompt S/R", ""), ("Prompt order", ""), ("Sampler", "t"),
    ("Hires sampler", "t"), ("Sampler", "i"), ("Checkpoint name", ""), ("Negative Guidance minimum sigma", ""),
    ("Sigma Churn", ""), ("Sigma min", ""), ("Sigma max", ""), ("Sigma noise", ""), ("Schedule type", ""),
    ("Schedule min sigma", ""), ("Schedule max sigma", ""), ("Schedule rho", ""), ("Eta", ""), ("Clip skip", ""),
    ("Denoising", ""), ("Initial noise multiplier", ""), ("Extra noise", ""), ("Hires upscaler", "t"),
    ("Cond. Image Mask Weight", "i"), ("VAE", ""), ("Styles", ""), ("UniPC Order", ""), ("Face restore", ""),
    ("Token merging ratio", ""), ("Token merging ratio high-res", ""), ("Always discard next-to-last sigma", ""),
    ("SGM noise multiplier", ""), ("Refiner checkpoint", ""), ("Refiner switch at", ""), ("RNG source", ""),
)
CHOICE_AXES = {"Sampler", "Hires sampler", "Checkpoint name", "Schedule type", "Hires upscaler", "VAE", "Styles",
               "Refiner checkpoint", "RNG source", "Always discard next-to-last sigma", "SGM noise multiplier"}


@dataclass
class ScriptChoice:
    name: str | None = None  # canonical script name
    options: object = None  # XYZOptions, PromptMatrixOptions, LoopbackOptions, or None
    outpaint: dict = field(default_factory=dict)  # OutpaintParams fields (poor man's outpainting)


def _bad(message: str) -> ApiError:
    return ApiError(422, f"script_args: {message}", field="script_args")


def _from_dict(cls, args: dict):
    try:
        return params_from_request(cls, args)
    except (ParamError, ValueError) as err:
        raise _bad(str(err)) from None


def _axis_label(kind, img2img: bool) -> str:
    if isinstance(kind, str):
        return kind.strip()
    if isinstance(kind, bool) or not isinstance(kind, int):
        raise _bad(f"an axis type is an index into the web UI's axis list or its label, got {kind!r}")
    axes = [label for label, only in WEBUI_AXES if not only or only == ("i" if img2img else "t")]
    if not 0 <= kind < len(axes):
        raise _bad(f"axis type {kind} is not in the web UI's axis list (0..{len(axes) - 1})")
    return axes[kind]


def _csv_join(values) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([str(v) for v in values])
    return buffer.getvalue()


def _axis_spec(kind, values, dropdown, csv_mode: bool, params_cls, img2img: bool) -> str:
    label = _axis_label(kind, img2img)
    if label.lower() == "nothing" or not label:
        return ""
    try:
        option = find_axis_option(label, params_cls)
    except ParamError:
        raise _bad(f"X/Y/Z axis type {label!r} is not supported by t2i for this task") from None
    if option.label in CHOICE_AXES and not csv_mode and isinstance(dropdown, list) and dropdown:
        text = _csv_join(dropdown)
    elif isinstance(values, (str, int, float)) and not isinstance(values, bool):
        text = str(values)
    else:
        raise _bad(f"values of axis {label!r} must be a string, got {values!r}")
    return f"{option.label}: {text}"


def _xyz(args, params_cls, img2img: bool) -> XYZOptions:
    if isinstance(args, dict):
        return _from_dict(XYZOptions, args)
    n = len(args)
    if n >= 13 and (args[2] is None or isinstance(args[2], list)):  # 1.6+: each axis has a dropdown list
        types, values, dropdowns = args[0:9:3], args[1:9:3], args[2:9:3]
        legend, lone, sub_grids, keep_seeds = args[9:13]
        vary = args[13:16] if n >= 18 else ()
        margin = args[16] if n >= 18 else (args[13] if n >= 14 else 0)
        csv_mode = bool(args[17] if n >= 18 else (args[14] if n >= 15 else False))
    elif n >= 6:  # 1.1-1.5: [x_type, x_values, y_type, y_values, z_type, z_values, legend, lone, grids, keep, margin]
        types, values, dropdowns = args[0:6:2], args[1:6:2], (None, None, None)
        legend, lone, sub_grids, keep_seeds = (list(args[6:10]) + [True, False, False, False][len(args[6:10]):])
        vary, margin, csv_mode = (), args[10] if n > 10 else 0, True
    else:
        raise _bad("X/Y/Z plot takes the web UI's 15-18 positional arguments (x_type, x_values, x_values_dropdown, "
                   "...) or an object {\"x\": \"Steps: 10,20\", ...}")
    if any(vary):
        raise _bad("vary_seeds_x/y/z are not supported by t2i")
    x, y, z = (_axis_spec(t, v, d, csv_mode, params_cls, img2img) for t, v, d in zip(types, values, dropdowns))
    return _from_dict(XYZOptions, {"x": x, "y": y, "z": z, "draw_legend": legend, "include_sub_images": lone,
                                   "include_sub_grids": sub_grids, "keep_random_seeds": keep_seeds,
                                   "margin_size": margin})


def _matrix(args) -> PromptMatrixOptions:
    if isinstance(args, dict):
        return _from_dict(PromptMatrixOptions, args)
    names = ("put_at_start", "different_seeds", "prompt_type", "variations_delimiter", "margin_size")
    return _from_dict(PromptMatrixOptions, dict(zip(names, args)))


def _loopback(args) -> LoopbackOptions:
    if isinstance(args, dict):
        return _from_dict(LoopbackOptions, args)
    if len(args) >= 3 and isinstance(args[2], str):  # loops, final strength, curve, interrogation
        if len(args) > 3 and args[3] not in (None, "", "None"):
            raise _bad("append_interrogation is not supported by t2i (it has no interrogator): use \"None\"")
        return _from_dict(LoopbackOptions, {"loops": args[0], "final_denoising_strength": args[1],
                                            "denoising_curve": args[2]})
    names = ("loops", "denoising_strength_change_factor")
    return _from_dict(LoopbackOptions, dict(zip(names, args)))


def _outpaint(args) -> dict:
    if isinstance(args, dict):
        return args
    values = dict(zip(("pixels", "mask_blur", "inpainting_fill", "directions"), args))
    fill = values.get("inpainting_fill")
    if isinstance(fill, int) and not isinstance(fill, bool):
        if not 0 <= fill < len(FILL_MODES):
            raise _bad(f"inpainting_fill must be 0..{len(FILL_MODES) - 1}, got {fill}")
        values["inpainting_fill"] = FILL_MODES[fill]
    directions = values.get("directions")
    if isinstance(directions, list):
        if not all(isinstance(d, str) and d.lower() in DIRECTIONS for d in directions) or not directions:
            raise _bad(f"directions must be a non-empty list of {', '.join(DIRECTIONS)}")
        values["directions"] = ",".join(d.lower() for d in directions)
    return values


def choose_script(name: object, args: object, params_cls, img2img: bool) -> ScriptChoice:
    if name in (None, "", "None", "none"):
        return ScriptChoice()
    known = IMG2IMG_SCRIPTS if img2img else TXT2IMG_SCRIPTS
    key = str(name).strip().lower()
    if key not in known:
        raise ApiError(422, f"script_name: {name!r} is not a script t2i runs here; choose one of {', '.join(known)}",
                       field="script_name")
    if args is None:
        args = []
    if not isinstance(args, (list, dict)):
        raise _bad("expected a list (positional, as the web UI) or an object (by option name)")
    if key == XYZ:
        return ScriptChoice(key, _xyz(args, params_cls, img2img))
    if key == MATRIX:
        return ScriptChoice(key, _matrix(args))
    if key == LOOPBACK:
        return ScriptChoice(key, _loopback(args))
    return ScriptChoice(key, None, _outpaint(args))
