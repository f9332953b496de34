"""What one request may ask of the server (`Limits`), checked before a job is queued, and the
rule that extra networks are named, never given as paths.

A request is checked twice: when it is submitted (every size, step count and image count it
states), and by the worker once the model is known (the sizes a run derives: the model's
resolution for an omitted width, the input's size for img2img, the hires and outpainted sizes).
"""
from __future__ import annotations

import re

from t2i.interfaces.api.catalog import LORA_SUFFIXES
from t2i.interfaces.api.config import Limits
from t2i.interfaces.api.errors import ApiError
from t2i.pipelines.xyz_axes import parse_axis

_NETWORK_TAG = re.compile(r"<\s*([A-Za-z_]+)\s*:([^:>]*)")


def _size(value: int | None, field: str, limits: Limits) -> None:
    if value is None:
        return
    if not limits.min_size <= value <= limits.max_size or value % limits.size_multiple:
        raise ApiError(422, f"{field} must be a multiple of {limits.size_multiple} from {limits.min_size} to "
                            f"{limits.max_size}, got {value}", field=field)


def _steps(value: int, field: str, limits: Limits) -> None:
    if value > limits.max_steps:
        raise ApiError(422, f"{field} must be at most {limits.max_steps} on this server, got {value}", field=field)


def check_generation(params, limits: Limits) -> None:
    """The stated sizes, steps, image count and prompt lengths of a diffusion params object."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(params, name, "")
        if len(text) > limits.max_prompt_chars:
            raise ApiError(422, f"{name} has {len(text)} characters; the limit is {limits.max_prompt_chars}",
                           field=name)
    _steps(params.steps, "steps", limits)
    images = params.batch_size * params.n_iter
    if images > limits.max_images:
        raise ApiError(422, f"batch_size x n_iter = {images} images; the limit is {limits.max_images} a request",
                       field="batch_size")
    _size(params.width, "width", limits)
    _size(params.height, "height", limits)
    for name in ("seed_resize_from_w", "seed_resize_from_h"):
        if getattr(params, name) > limits.max_size:
            raise ApiError(422, f"{name} must be at most {limits.max_size}", field=name)
    if getattr(params, "enable_hr", False):
        _steps(params.hr_second_pass_steps, "hr_second_pass_steps", limits)
        if params.width and params.height:
            check_run_size(hires_target(params, limits.size_multiple), limits, "hr_scale")


def hires_target(params, multiple: int) -> tuple[int, int]:
    from t2i.pipelines.hires import hires_size

    return hires_size(params, multiple)


def check_run_size(size: tuple[int, int], limits: Limits, field: str = "width") -> None:
    """A size a run will make (known once the model or the input is): at most max_size a side."""
    width, height = size
    if max(width, height) > limits.max_size:
        raise ApiError(422, f"this request makes {width}x{height} images; the limit is {limits.max_size} a side",
                       field=field)


def check_network_names(texts: dict[str, str], loras: dict | None = None) -> None:
    """LoRAs and other extra networks by name only (GET /sdapi/v1/loras): a prompt tag or a
    `t2i_loras` key that looks like a path would make the server open a file a client chose."""
    found = [(field, name) for field, text in texts.items() if isinstance(text, str)
             for _kind, name in _NETWORK_TAG.findall(text)]
    found += [("t2i_loras", str(name)) for name in (loras or {})]
    for field, name in found:
        name = name.strip()
        if "/" in name or "\\" in name or ".." in name or name.startswith("~") or name.lower().endswith(LORA_SUFFIXES):
            raise ApiError(422, f"{field}: extra networks are named by their file's name in the server's folders "
                                f"(GET /sdapi/v1/loras), not by a path: {name!r}", field=field)


def check_xyz(options, params, limits: Limits, catalog=None) -> int:
    """The X/Y/Z plot's axes against the limits; returns the number of cells. Checkpoint name
    values must be titles (or names) of the `catalog`'s checkpoints: 422 otherwise, paths too."""
    cells = 1
    for axis_field, spec in (("x", options.x), ("y", options.y), ("z", options.z)):
        axis = parse_axis(spec, type(params))
        if axis is None:
            continue
        check_network_names({"script_args": spec})
        cells *= len(axis.values)
        if axis.option.kind == "checkpoint":
            if catalog is None:
                raise ApiError(422, "script_args: the Checkpoint name axis needs the server's model folders",
                               field="script_args")
            for value in axis.values:
                catalog.checkpoint(value, "script_args")
        for value in axis.values:
            if axis.option.field in ("steps", "hr_second_pass_steps"):
                _steps(value, "script_args", limits)
            elif axis.option.field in ("width", "height"):
                _size(value, "script_args", limits)
    return cells


def check_script_images(count: int, params, limits: Limits) -> None:
    images = count * params.batch_size * params.n_iter
    if images > limits.max_script_images:
        raise ApiError(422, f"this script run makes {images} images (x batch_size x n_iter); the limit is "
                            f"{limits.max_script_images}", field="script_args")
