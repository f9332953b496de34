"""SD upscale (the web UI's script): upscale an image, then redraw it with img2img tile by tile,
each tile the params' width x height (the size the model draws best), overlapping by `overlap`
pixels and blended across the overlaps, so a small model adds detail to a large image.

    result = sd_upscale(loaded, Img2ImgParams(prompt="a red circle", denoising_strength=0.3, seed=1),
                        image, SDUpscaleOptions(upscaler="Lanczos", scale_factor=4, overlap=16))

Every tile of one output uses the same seed (as the web UI does); output i of a run (n_iter) uses
seed + i. Tiles are blended with weights that ramp linearly across each overlap (the tiling of
t2i.pipelines.model_upscalers). The upscaler is a PIL resize (Lanczos, Nearest) or an upscaler
file by name from the model's upscaler folders.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from t2i.pipelines.hires import IMAGE_UPSCALERS
from t2i.pipelines.img2img import img2img
from t2i.pipelines.model_upscalers import library_of, run_tiled
from t2i.pipelines.params import ParamError
from t2i.pipelines.schema import validate_strict
from t2i.pipelines.script_options import SDUpscaleOptions
from t2i.pipelines.scripting import add_infotext_params, fix_seeds
from t2i.pipelines.txt2img import MAX_SEED, GenerationResult


def upscale_first(loaded, image: Image.Image, options: SDUpscaleOptions) -> Image.Image:
    size = (round(image.width * options.scale_factor), round(image.height * options.scale_factor))
    if options.upscaler in IMAGE_UPSCALERS:
        return image.convert("RGB").resize(size, IMAGE_UPSCALERS[options.upscaler])
    return library_of(loaded).upscale(image, options.upscaler, options.scale_factor)


def check_options(loaded, params, options: SDUpscaleOptions) -> None:
    validate_strict(options)
    if options.upscaler not in IMAGE_UPSCALERS:
        library_of(loaded).model(options.upscaler)  # ParamError listing the upscaler files when unknown
    width = params.width or loaded.model.config.resolution
    height = params.height or loaded.model.config.resolution
    if options.overlap >= min(width, height):
        raise ParamError(f"the tile overlap ({options.overlap}) must be smaller than the tiles ({width}x{height})")


def sd_upscale(loaded, params, image: Image.Image, options: SDUpscaleOptions) -> GenerationResult:
    """`params`: Img2ImgParams; width/height: the tile size (default: the model's resolution)."""
    check_options(loaded, params, options)
    params = fix_seeds(params)  # seed -1: one random seed for the run
    if not isinstance(image, Image.Image):
        raise ValueError(f"SD upscale starts from one PIL image, got {type(image).__name__}")
    factor = loaded.model.vae_scale_factor
    tile_w = params.width or loaded.model.config.resolution
    tile_h = params.height or loaded.model.config.resolution
    big = upscale_first(loaded, image, options)
    # the canvas must hold at least one tile and be a multiple of the VAE factor
    canvas = (max(tile_w, big.width // factor * factor), max(tile_h, big.height // factor * factor))
    big = big.resize(canvas, Image.Resampling.LANCZOS) if big.size != canvas else big
    base = replace(params, width=tile_w, height=tile_h, batch_size=1, n_iter=1)
    x = torch.from_numpy(np.asarray(big, dtype=np.float32) / 255).permute(2, 0, 1)[None]  # (1, 3, H, W)
    images, seeds, infotexts = [], [], []
    for i in range(params.n_iter * params.batch_size):
        seed = (params.seed + i) % (MAX_SEED + 1)
        first = []

        def redraw(tile: torch.Tensor, seed: int = seed, first: list = first) -> torch.Tensor:
            pil = Image.fromarray((tile[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
            result = img2img(loaded, replace(base, seed=seed, width=pil.width, height=pil.height), pil)
            first.append(result)
            return torch.from_numpy(np.asarray(result.images[0], dtype=np.float32) / 255).permute(2, 0, 1)[None]

        out = run_tiled(redraw, x, 1, (tile_h, tile_w), options.overlap)
        images.append(Image.fromarray((out[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()))
        seeds.append(seed)
        info = first[0].infotexts[0].replace(f"Size: {tile_w}x{tile_h}", f"Size: {canvas[0]}x{canvas[1]}")
        infotexts.append(add_infotext_params(info, {"SD upscale overlap": options.overlap,
                                                    "SD upscale upscaler": options.upscaler,
                                                    "SD upscale scale": options.scale_factor}))
    resolved = replace(first[0].params, width=canvas[0], height=canvas[1], seed=params.seed, n_iter=params.n_iter,
                       batch_size=params.batch_size) if images else params
    return GenerationResult(images, seeds, infotexts, resolved, [])
