"""`t2i sample`'s params and pipeline: a grid from a GAN, VAE, pixel DDPM or VQGAN + AR model
(t2i.pipelines.families), or AR completions of an image's bottom half.

    result = sample(load_family_model("runs/gan"), SampleParams(n=16, seed=0, class_name="red circle"))
"""
from __future__ import annotations

from PIL import Image

from t2i.metadata import build_infotext
from t2i.outputs import make_grid
from t2i.pipelines.families import FamilyModel, complete_family, sample_family
from t2i.pipelines.params import ParamError
from t2i.pipelines.sample_params import SampleParams


def _options(params: SampleParams) -> dict:
    return dict(prompt=params.prompt, negative_prompt=params.negative_prompt, sampler=params.sampler,
                steps=params.steps, eta=params.eta, guidance_scale=params.guidance_scale, top_k=params.top_k,
                top_p=params.top_p, temperature=params.temperature, use_cache=params.use_cache,
                database=params.database, retrieval=params.retrieval)


def sample(loaded: FamilyModel, params: SampleParams, complete: Image.Image | None = None,
           complete_name: str | None = None) -> tuple[Image.Image, str, list[Image.Image]]:
    """(grid, its infotext, the images): `params.n` samples, or with `complete` that many AR
    completions keeping the image's top half."""
    if complete is not None:
        if params.width or params.height:
            raise ParamError("--complete keeps the image's size (the model's); leave out --width and --height")
        images = complete_family(loaded, complete, params.n, params.seed, params.class_name, **_options(params))
    else:
        images = sample_family(loaded, params.n, params.seed, params.class_name, params.width, params.height,
                               **_options(params))
    info = build_infotext(params.prompt or params.class_name or "", params.negative_prompt or "", {
        "Steps": params.steps, "Sampler": params.sampler, "CFG scale": params.guidance_scale, "Seed": params.seed,
        "Size": images[0].size, "Model": loaded.name, "Family": loaded.family, "Eta": params.eta,
        "Top-k": params.top_k, "Top-p": params.top_p, "Temperature": params.temperature,
        "Completed": complete_name, "Retrieval": params.retrieval, "Database": params.database})
    return make_grid(images), info, images
