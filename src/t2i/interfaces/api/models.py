"""The API's request and response models. The generation fields come from the pipelines' schema
(`t2i.pipelines.schema.request_fields`: the params dataclasses' own names, types, defaults, help and
bounds), so they cannot drift from the CLI; on top go the keys only the web UI's API has
(`sampler_index`, `override_settings`, `script_name`, ...) and its integer codes for resize mode,
masked content and mask mode. Unknown keys are ignored, as the web UI does.

Models are built on first use (`functools.cache`), not at import.
"""
from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from t2i.pipelines.generation_params import InpaintParams, Txt2ImgParams
from t2i.pipelines.schema import request_fields
from t2i.pipelines.upscale import UpscaleParams

_CONFIG = ConfigDict(extra="ignore", populate_by_name=True)
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"


def _opt(kind, default=None, description: str = "", **kw):
    return (kind, Field(default, description=description, **kw))


# Keys of both generation routes that only the web UI's API has.
COMMON_EXTRAS = {
    "sampler_index": _opt(str | None, None, "the web UI's older name for sampler_name: used when sampler_name is "
                                            "not given"),
    "override_settings": _opt(dict[str, Any] | None, None, "options for this request only: sd_model_checkpoint, "
                                                           "sd_vae, CLIP_stop_at_last_layers (others are ignored)"),
    "override_settings_restore_afterwards": _opt(bool, True, "accepted; options never outlive their request here"),
    "script_name": _opt(str | None, None, "x/y/z plot or prompt matrix; img2img also loopback and poor man's "
                                          "outpainting"),
    "script_args": _opt(list[Any] | dict[str, Any] | None, None, "the script's arguments, positional as the web "
                                                                 "UI's scripts take them, or by t2i option name"),
    "send_images": _opt(bool, True, "return the images in the answer"),
    "save_images": _opt(bool, True, "save the images (with their infotext) in the server's output folder"),
    "do_not_save_samples": _opt(bool, False, "do not save the images (grids still saved)"),
    "do_not_save_grid": _opt(bool, False, "do not save the grids"),
    "alwayson_scripts": _opt(dict[str, Any] | None, None, "accepted when empty or disabled: t2i has no always-on "
                                                          "scripts"),
    # the schema's restore_faces, as the web UI types it (null = false)
    "restore_faces": _opt(bool | None, None, "run the face restorer of t2i serve --face-restorer over each image"),
    "refiner_checkpoint": _opt(str | None, None, "not supported: must be empty"),
    "refiner_switch_at": _opt(float | None, None, "not supported (ignored)"),
    "s_min_uncond": _opt(float | None, None, "not supported: must be 0"),
    "t2i_job_id": _opt(str | None, None, "your own id for this job (8-64 letters, digits, _ or -): "
                                         "POST /sdapi/v1/interrupt?job_id=ID then stops this job only, and "
                                         "GET /t2i/v1/jobs/ID shows it", pattern=JOB_ID_PATTERN),
}

TXT2IMG_EXTRAS = {
    "firstphase_width": _opt(int | None, None, "the web UI's old hires-fix key (ignored, as it does)"),
    "firstphase_height": _opt(int | None, None, "the web UI's old hires-fix key (ignored, as it does)"),
    "hr_checkpoint_name": _opt(str | None, None, "hires fix with another checkpoint: not supported, must be empty"),
    "hr_sampler_name": _opt(str | None, None, "hires sampler: empty or the sampler of the first pass"),
    "hr_scheduler": _opt(str | None, None, "hires schedule type: empty or that of the first pass"),
    "hr_prompt": _opt(str | None, None, "hires prompt: empty or the prompt"),
    "hr_negative_prompt": _opt(str | None, None, "hires negative prompt: empty or the negative prompt"),
}

IMG2IMG_EXTRAS = {
    "init_images": (list[str], Field(..., min_length=1, description="input images, base64 (a data:image/png;"
                                                                   "base64, prefix is allowed)")),
    "mask": _opt(str | None, None, "inpainting mask, base64: white = repaint"),
    "resize_mode": _opt(int | str, 0, "0 Just resize, 1 Crop and resize, 2 Resize and fill, 3 Just resize "
                                      "(latent upscale; t2i resizes in pixels); or the name"),
    "inpainting_fill": _opt(int | str, 0, "masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing; "
                                          "or the name"),
    "inpainting_mask_invert": _opt(int | bool, 0, "1: repaint the black area of the mask instead"),
    "image_cfg_scale": _opt(float | None, None, "instruct-pix2pix models only (ignored)"),
    "initial_noise_multiplier": _opt(float | None, None, "not supported: must be 1"),
    "include_init_images": _opt(bool, False, "echo init_images in `parameters`"),
}

INT_CODED = ("resize_mode", "inpainting_fill", "inpainting_mask_invert")


@functools.cache
def txt2img_request() -> type[BaseModel]:
    fields = {**request_fields(Txt2ImgParams), **COMMON_EXTRAS, **TXT2IMG_EXTRAS}
    return create_model("StableDiffusionTxt2ImgProcessingAPI", __config__=_CONFIG, **fields)


@functools.cache
def img2img_request() -> type[BaseModel]:
    """img2img, and inpainting when `mask` is given: the fields of InpaintParams (a superset of
    Img2ImgParams') except the three the web UI sends as integers."""
    fields = {**request_fields(InpaintParams, exclude=INT_CODED), **COMMON_EXTRAS, **IMG2IMG_EXTRAS}
    return create_model("StableDiffusionImg2ImgProcessingAPI", __config__=_CONFIG, **fields)


_EXTRAS_KEYS = {
    "resize_mode": _opt(int, 0, "0: scale by upscaling_resize (1 = to upscaling_resize_w x h: not supported)",
                        ge=0, le=1),
    "show_extras_results": _opt(bool, True, "accepted"),
    # gfpgan_visibility, codeformer_visibility, codeformer_weight: UpscaleParams' fields (the schema)
    "upscaling_resize": _opt(float, 2.0, "upscale factor: a whole number 1..8", ge=1, le=8),
    "upscaling_resize_w": _opt(int, 512, "resize_mode 1 only", ge=1),
    "upscaling_resize_h": _opt(int, 512, "resize_mode 1 only", ge=1),
    "upscaling_crop": _opt(bool, True, "resize_mode 1 only"),
    "upscaler_1": _opt(str, "None", "None, Lanczos, Nearest, Bicubic or a super-resolution model (GET "
                                    "/sdapi/v1/upscalers)"),
    "upscaler_2": _opt(str, "None", "a second upscaler: not supported, must be None"),
    "extras_upscaler_2_visibility": _opt(float, 0.0, "must be 0", ge=0, le=1),
    "upscale_first": _opt(bool, False, "accepted"),
    # t2i's own key (the web UI's extras API never saves): its web UI saves into a folder of its choosing
    "save_images": _opt(bool, True, "save the results in the server's output folder (OUTDIR/extras)"),
}


class ImageItem(BaseModel):
    data: str = Field(..., description="base64 image")
    name: str = Field("", description="file name for the saved result (sanitised)")


@functools.cache
def extras_single_request() -> type[BaseModel]:
    fields = {**request_fields(UpscaleParams, exclude=("upscaler", "scale")), **_EXTRAS_KEYS,
              "image": (str, Field(..., description="base64 image"))}
    return create_model("ExtrasSingleImageRequest", __config__=_CONFIG, **fields)


@functools.cache
def extras_batch_request() -> type[BaseModel]:
    fields = {**request_fields(UpscaleParams, exclude=("upscaler", "scale")), **_EXTRAS_KEYS,
              "imageList": (list[ImageItem], Field(..., min_length=1, description="images with names"))}
    return create_model("ExtrasBatchImagesRequest", __config__=_CONFIG, **fields)


class PngInfoRequest(BaseModel):
    model_config = _CONFIG
    image: str = Field(..., description="base64 image (a data:image/png;base64, prefix is allowed)")


class JobRef(BaseModel):
    model_config = _CONFIG
    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN, description="stop only this job")


# ----------------------------------------------------------------------------- answers (for /docs)


class ImagesResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs, infotext in each")
    parameters: dict = Field(description="the request as run")
    info: str = Field(description="a JSON string: seeds, prompts, infotexts, model, ...")


class ExtrasSingleResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchResponse(BaseModel):
    html_info: str
    images: list[str]


class PngInfoResponse(BaseModel):
    info: str
    items: dict
    parameters: dict


class JobAccepted(BaseModel):
    id: str
    state: str
    position: int | None


class ErrorResponse(BaseModel):
    error: str
    detail: str
    field: str | None = None
    error_id: str


ERRORS = {code: {"model": ErrorResponse} for code in (401, 413, 422, 429, 503)}
