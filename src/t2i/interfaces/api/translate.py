"""A web-UI API request -> what a Session runs (`Prepared`), the way the web UI reads its requests.

- `sampler_index` stands in for `sampler_name` when that is not given; schedule names and labels
  alike ("automatic", "Karras"); `eta`, `s_tmax` 0 (= no limit) and the other sampler settings as
  the pipelines take them, so `webuiapi`'s defaults give the web UI's images.
- `resize_mode`, `inpainting_fill`, `inpainting_mask_invert` as the web UI's integers (or names).
- img2img with `mask` is inpainting; script "poor man's outpainting" is outpainting.
- `override_settings` (and the server's options): `sd_model_checkpoint` by title, `sd_vae`,
  `CLIP_stop_at_last_layers` (a request's own `clip_skip` wins).
- Web-UI features t2i lacks are refused when asked for (a refiner, another hires checkpoint or
  sampler, ...), never silently ignored; empty or default values pass.

The same function checks a request when it is submitted and builds the run in the worker, so a
job stored in the queue runs exactly as it was checked.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from t2i.errors import ParamError
from t2i.interfaces.api import codec, limits, models
from t2i.interfaces.api.catalog import Catalog, Item
from t2i.interfaces.api.config import Limits
from t2i.interfaces.api.errors import ApiError, from_t2i_error
from t2i.interfaces.api.scripts import OUTPAINT, choose_script
from t2i.pipelines.generation_params import (
    FILL_MODES,
    HR_UPSCALERS,
    RESIZE_MODES,
    Img2ImgParams,
    InpaintParams,
    OutpaintParams,
    Txt2ImgParams,
)
from t2i.pipelines.params import api_name
from t2i.pipelines.schema import params_from_request
from t2i.pipelines.script_options import PromptMatrixOptions, XYZOptions
from t2i.pipelines.upscale import UpscaleParams

KINDS = ("txt2img", "img2img", "extra-single-image", "extra-batch-images")
SAME = (None, "", "None", "none", "Use same sampler", "Use same checkpoint", "Use same scheduler")


@dataclass
class Context:
    catalog: Catalog
    limits: Limits
    styles_file: object = None  # Path or None (./styles.csv when present)
    face_restorer: str | None = None


@dataclass
class Prepared:
    kind: str
    request: BaseModel
    params: object
    script: object = None
    images: list | None = None
    mask: object = None
    model: Item | None = None  # the checkpoint (or super-resolution model for the extras)
    vae: Item | None = None
    save_images: bool = True
    save_grids: bool = True
    send_images: bool = True
    names: list = field(default_factory=list)  # extra-batch-images: the files' names

    def echo(self) -> dict:
        """The request as the answer's `parameters` echo it: images left out, as the web UI does."""
        data = self.request.model_dump()
        if not data.get("include_init_images"):
            for key in ("init_images", "mask", "image", "imageList"):
                if key in data:
                    data[key] = None
        return data


def _validate(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as err:  # a stored request that no longer validates (the server was updated)
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(422, f"{where}: {first['msg']}", field=str(first["loc"][0]) if first["loc"] else None)


def _api_names(cls) -> dict[str, str]:
    return {f.name: api_name(f) for f in dataclasses.fields(cls) if api_name(f)}


def api_names(kind: str = "txt2img") -> dict[str, str]:
    """Every field's API name (`sampler` -> `sampler_name`) of a job kind's params, for errors raised
    in its run: the generation fields, or UpscaleParams' for the extras."""
    if kind.startswith("extra-"):
        return _api_names(UpscaleParams)
    return _api_names(Txt2ImgParams) | _api_names(OutpaintParams)


def _params(cls, values: dict, **overrides):
    try:
        return params_from_request(cls, values, **overrides)
    except (ParamError, ValueError) as err:
        raise from_t2i_error(err, _api_names(cls)) from None


def _check_sampler(params) -> None:
    from t2i.diffusion.samplers import resolve_sampler

    try:
        resolve_sampler(params.sampler, params.scheduler)
    except ValueError as err:
        field_name = "scheduler" if "schedule type" in str(err) and "unknown sampler" not in str(err) else "sampler_name"
        raise ApiError(422, str(err), field=field_name) from None


def _check_styles(params, ctx: Context) -> None:
    if not params.styles:
        return
    from t2i.pipelines.styles import default_styles_file, load_styles, select_styles

    try:
        path = ctx.styles_file or default_styles_file()
        select_styles(load_styles(path) if path is not None else None, list(params.styles))
    except (ParamError, ValueError, FileNotFoundError) as err:
        raise ApiError(422, f"styles: {err}", field="styles") from None


def _refuse(req: BaseModel, values: dict) -> None:
    """Web-UI features t2i does not have, when a request asks for them."""
    def no(name: str, why: str):
        raise ApiError(422, f"{name}: {why}", field=name)

    if req.refiner_checkpoint not in SAME:
        no("refiner_checkpoint", "t2i has no refiner pass; leave it empty")
    if req.s_min_uncond:
        no("s_min_uncond", "not supported by t2i; send 0")
    for name, script in (req.alwayson_scripts or {}).items():
        args = script.get("args") if isinstance(script, dict) else script
        if args is not None and not isinstance(args, list):
            no("alwayson_scripts", f"{name!r}: each script is an object with an \"args\" list, as in the web UI "
               f"({{\"args\": [false]}} for a disabled one)")
        if args and args[0] not in (False, None):
            no("alwayson_scripts", f"t2i has no always-on script {name!r}")
    if getattr(req, "initial_noise_multiplier", None) not in (None, 1, 1.0):
        no("initial_noise_multiplier", "not supported by t2i; send 1")
    if getattr(req, "hr_checkpoint_name", None) not in SAME:
        no("hr_checkpoint_name", "the hires fix runs with the same checkpoint in t2i; leave it empty")
    for name, same_as in (("hr_sampler_name", "sampler_name"), ("hr_scheduler", "scheduler"),
                          ("hr_prompt", "prompt"), ("hr_negative_prompt", "negative_prompt")):
        value = getattr(req, name, None)
        if value not in SAME and value != values.get(same_as):
            no(name, f"t2i's hires pass uses the first pass's {same_as}; leave {name} empty")


def _settings(req: BaseModel, options: dict, ctx: Context) -> tuple[Item, Item | None, int | None]:
    """(checkpoint, VAE, clip skip) from the server's options and the request's override_settings."""
    override = req.override_settings or {}
    merged = {**options, **override}
    where = "override_settings" if "sd_model_checkpoint" in override else "sd_model_checkpoint"
    model = ctx.catalog.checkpoint(merged.get("sd_model_checkpoint") or ctx.catalog.start_title(), where)
    vae = ctx.catalog.vae(merged.get("sd_vae"), "override_settings" if "sd_vae" in override else "sd_vae")
    clip = merged.get("CLIP_stop_at_last_layers")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, int)):
        raise ApiError(422, "CLIP_stop_at_last_layers must be a whole number 1..12", field="override_settings")
    return model, vae, clip


def _code(value, names: tuple[str, ...], field_name: str, aliases: dict | None = None) -> str:
    """A web-UI integer code (or the name itself) -> the name."""
    table = {**{i: n for i, n in enumerate(names)}, **(aliases or {})}
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(422, f"{field_name} must be 0..{len(table) - 1} or one of {', '.join(names)}", field=field_name)
    if isinstance(value, int):
        if value not in table:
            raise ApiError(422, f"{field_name} must be 0..{len(table) - 1}, got {value}", field=field_name)
        return table[value]
    match = [n for n in names if n.lower() == value.strip().lower()]
    if not match:
        raise ApiError(422, f"{field_name} must be one of {', '.join(names)}, got {value!r}", field=field_name)
    return match[0]


def _generation(kind: str, data: dict, options: dict, ctx: Context) -> Prepared:
    img2img = kind == "img2img"
    req = _validate(models.img2img_request() if img2img else models.txt2img_request(), data)
    values = req.model_dump()
    if "sampler_name" not in req.model_fields_set and req.sampler_index:
        values["sampler_name"] = req.sampler_index
    values["restore_faces"] = bool(req.restore_faces)
    if req.restore_faces and not ctx.face_restorer:
        raise ApiError(422, "restore_faces: this server has no face restorer (t2i serve --face-restorer FILE)",
                       field="restore_faces")
    _refuse(req, values)
    model, vae, clip = _settings(req, options, ctx)
    if clip is not None and "clip_skip" not in req.model_fields_set:
        values["clip_skip"] = clip
    cls = Txt2ImgParams
    if img2img:
        values["resize_mode"] = _code(req.resize_mode, RESIZE_MODES, "resize_mode", {3: RESIZE_MODES[0]})
        values["inpainting_fill"] = _code(req.inpainting_fill, FILL_MODES, "inpainting_fill")
        invert = req.inpainting_mask_invert
        if invert not in (0, 1):  # True and False are 1 and 0
            raise ApiError(422, "inpainting_mask_invert must be 0 or 1", field="inpainting_mask_invert")
        values["inpainting_mask_invert"] = bool(invert)
        cls = InpaintParams if req.mask is not None else Img2ImgParams
    choice = choose_script(req.script_name, req.script_args, cls, img2img)
    if choice.name == OUTPAINT:
        if req.mask is not None:
            raise ApiError(422, "mask: poor man's outpainting makes its own mask; send none", field="mask")
        cls = OutpaintParams
        renamed = {"pixels": "t2i_outpaint_pixels", "directions": "t2i_outpaint_directions"}
        values.update({renamed.get(k, k): v for k, v in choice.outpaint.items()})
        values["width"] = values["height"] = None  # the script paints the extended canvas at its own size
    params = _params(cls, values)
    _check_sampler(params)
    _check_styles(params, ctx)
    if getattr(params, "enable_hr", False) and params.hr_upscaler not in HR_UPSCALERS and \
            params.hr_upscaler not in ctx.catalog.image_upscalers():
        raise ApiError(422, f"hr_upscaler: no upscaler {params.hr_upscaler!r}; one of {', '.join(HR_UPSCALERS)} or "
                            f"an upscaler file's name (GET /sdapi/v1/upscalers)", field="hr_upscaler")
    limits.check_generation(params, ctx.limits)
    limits.check_network_names({"prompt": params.prompt, "negative_prompt": params.negative_prompt}, params.loras)
    if isinstance(choice.options, XYZOptions):
        cells = limits.check_xyz(choice.options, params, ctx.limits, ctx.catalog)
        limits.check_script_images(cells, params, ctx.limits)
    elif isinstance(choice.options, PromptMatrixOptions):
        which = "prompt" if choice.options.prompt_type == "positive" else "negative_prompt"
        text = getattr(params, which)
        if "|" not in text:
            raise ApiError(422, f"{which}: the prompt matrix needs |-separated parts, e.g. 'a circle|red|small'",
                           field=which)
        parts = len(text.split("|"))
        limits.check_script_images(2 ** (parts - 1) if parts < 32 else 2**31, params, ctx.limits)
    elif choice.options is not None:  # loopback
        limits.check_script_images(choice.options.loops, params, ctx.limits)
    images = mask = None
    if img2img:
        images = codec.decode_images(req.init_images, "init_images", ctx.limits)
        mask = codec.decode_image(req.mask, "mask", ctx.limits) if req.mask is not None else None
        if not getattr(params, "inpaint_full_res", False) and choice.name != OUTPAINT:  # works at the input's size
            limits.check_run_size((params.width or images[0].width, params.height or images[0].height), ctx.limits)
    save = req.save_images
    return Prepared(kind, req, params, choice.options, images, mask, model, vae,
                    save_images=save and not req.do_not_save_samples, save_grids=save and not req.do_not_save_grid,
                    send_images=req.send_images)


def _extras(kind: str, data: dict, ctx: Context) -> Prepared:
    batch = kind == "extra-batch-images"
    req = _validate(models.extras_batch_request() if batch else models.extras_single_request(), data)
    if (req.gfpgan_visibility or req.codeformer_visibility) and not ctx.face_restorer:
        name = "gfpgan_visibility" if req.gfpgan_visibility else "codeformer_visibility"
        raise ApiError(422, f"{name}: this server has no face restorer (t2i serve --face-restorer FILE: GFPGAN, "
                            f"RestoreFormer or CodeFormer weights)", field=name)
    if req.upscaler_2 not in SAME and req.extras_upscaler_2_visibility > 0:
        raise ApiError(422, "a second upscaler is not supported by t2i: upscaler_2 None", field="upscaler_2")
    if req.resize_mode != 0:
        raise ApiError(422, "resize_mode 1 (to a size) is not supported by t2i: scale by upscaling_resize",
                       field="resize_mode")
    if not float(req.upscaling_resize).is_integer():
        raise ApiError(422, f"upscaling_resize must be a whole number 1..8 in t2i, got {req.upscaling_resize}",
                       field="upscaling_resize")
    kind_name, item = ctx.catalog.upscaler(req.upscaler_1)
    scale = 1 if kind_name is None else int(req.upscaling_resize)
    values = {**req.model_dump(), "upscaler": kind_name or "nearest", "scale": scale}
    params = _params(UpscaleParams, values)
    if batch:
        images = [codec.decode_image(it.data, f"imageList[{i}].data", ctx.limits) for i, it in enumerate(req.imageList)]
        names = [it.name for it in req.imageList]
    else:
        images, names = [codec.decode_image(req.image, "image", ctx.limits)], []
    if len(images) > ctx.limits.max_images:
        raise ApiError(422, f"imageList has {len(images)} images; the limit is {ctx.limits.max_images}",
                       field="imageList")
    for im in images:
        if im.width * im.height * scale * scale > ctx.limits.max_upload_pixels:
            raise ApiError(422, f"upscaling a {im.width}x{im.height} image by {scale} makes more than "
                                f"{ctx.limits.max_upload_pixels} pixels", field="upscaling_resize")
    return Prepared(kind, req, params, None, images, None, item, None, names=names, save_images=req.save_images)


def prepare(kind: str, data: dict, options: dict, ctx: Context) -> Prepared:
    """Check a request and build its run; ApiError (422 naming the field) when it cannot run."""
    if kind in ("txt2img", "img2img"):
        return _generation(kind, data, options, ctx)
    if kind in ("extra-single-image", "extra-batch-images"):
        return _extras(kind, data, ctx)
    raise ApiError(404, f"no job kind {kind!r}; one of {', '.join(KINDS)}")
