"""What the web UI's scripts (X/Y/Z plot, prompt matrix, loopback, batch img2img) share: running
the pipeline that fits a params object, checking params before a long run, fixing random seeds
once for a whole run, and adding keys to an image's infotext."""
from __future__ import annotations

import secrets
from dataclasses import replace

from t2i.metadata import add_infotext_params  # noqa: F401  (re-exported: the scripts' infotext keys)
from t2i.pipelines.hires import hires_size
from t2i.pipelines.img2img import Img2ImgParams, as_image_list, img2img, resolve_img2img_params
from t2i.pipelines.inpaint import InpaintParams, inpaint
from t2i.pipelines.outpaint import OutpaintParams, outpaint
from t2i.pipelines.postprocess import check_before_run, finish_result
from t2i.pipelines.txt2img import (MAX_SEED, GenerationParams, GenerationResult, StepCallback, resolve_params,
                                   txt2img)


def is_image_params(params) -> bool:
    """True for img2img-style params (img2img, inpaint, outpaint), which need input images."""
    return isinstance(params, Img2ImgParams)


def run_pipeline(loaded, params: GenerationParams, images=None, masks=None,
                 callback: StepCallback | None = None) -> GenerationResult:
    """txt2img, img2img, inpaint or outpaint, picked by the type of `params`, with its images
    finished (safety checker, face restoration, watermark: postprocess.finish_images), so that
    every script's cells, frames and grids are built from finished images."""
    return finish_result(loaded, params, _run_unfinished(loaded, params, images, masks, callback))


def _run_unfinished(loaded, params: GenerationParams, images, masks, callback) -> GenerationResult:
    if not is_image_params(params):
        if images is not None:
            raise ValueError(f"{type(params).__name__} generates from text; pass Img2ImgParams to start from images")
        return txt2img(loaded, params, callback=callback)
    if images is None:
        raise ValueError(f"{type(params).__name__} needs input images")
    if isinstance(params, OutpaintParams):
        return outpaint(loaded, params, images, callback=callback)
    if isinstance(params, InpaintParams):
        if masks is None:
            raise ValueError("inpainting needs a mask")
        return inpaint(loaded, params, images, masks, callback=callback)
    if masks is not None:
        raise ValueError("a mask needs InpaintParams, not Img2ImgParams")
    return img2img(loaded, params, images, callback=callback)


def check_params(loaded, params: GenerationParams, images=None) -> GenerationParams:
    """Raise ParamError now for params that the pipeline would refuse later (a long run fails
    before its first image, not in the middle). Returns them resolved."""
    if not is_image_params(params):
        resolved = resolve_params(params, loaded)
    else:
        resolved = resolve_img2img_params(params, loaded, as_image_list(images)[0].size)
    # what finishing the images would refuse (a watermark on a small image, no face restorer); an
    # outpainted canvas is larger than its input, so its watermark's size is checked on the result
    if isinstance(params, OutpaintParams):
        check_before_run(loaded, replace(resolved, watermark=""), 0, 0)
    elif resolved.watermark or resolved.restore_faces:
        check_before_run(loaded, resolved, *_final_size(resolved, loaded))
    return resolved


def _final_size(resolved: GenerationParams, loaded) -> tuple[int, int]:
    """The size of the images a run returns: the hires pass's when the hires fix is on."""
    if getattr(resolved, "enable_hr", False):
        return hires_size(resolved, loaded.model.vae_scale_factor)
    return resolved.width, resolved.height


def fix_seeds(params: GenerationParams) -> GenerationParams:
    """Seed and variation seed -1 replaced by one random value each, so that every run made from
    the result shares them (the web UI's behaviour for a script's whole grid)."""
    return replace(params, seed=random_seed() if params.seed == -1 else params.seed,
                   subseed=random_seed() if params.subseed == -1 else params.subseed)


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)

