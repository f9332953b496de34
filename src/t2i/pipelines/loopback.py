"""Loopback: img2img run `loops` times, each loop starting from the previous loop's output, the
web UI's script.

    result = loopback(loaded, Img2ImgParams(prompt="a red circle", denoising_strength=0.5, seed=1),
                      image, LoopbackOptions(loops=4, denoising_strength_change_factor=0.9))

Loop i (from 0) uses seed + i and a denoising strength that changes after every loop, in one of
two ways:
- change factor (the web UI's original script): strength *= factor, kept within 0.1 .. 1;
- final denoising strength (its later version): from `denoising_strength` at the first loop to
  `final_denoising_strength` at the last, along a curve: Linear, Aggressive (sin: changes early)
  or Lazy (1 - cos: changes late).
With a batch count n > 1, the chain runs n times from the input (seeds continuing) and the
result holds each chain's last image; otherwise it holds every loop's image. The images'
infotexts add the loopback settings; the grid shows the images in one row. Interrupted after
the first loop, it returns what the finished loops made (`interrupted` says how far it got).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from PIL import Image

from t2i.pipelines.script_options import CURVES, LoopbackOptions  # noqa: F401  (re-exported)
from t2i.pipelines.annotated_grid import tile_images
from t2i.pipelines.params import ParamError
from t2i.pipelines.postprocess import finish_grid
from t2i.pipelines.schema import validate_strict as validate
from t2i.pipelines.script_progress import ScriptInterrupted, partial_note
from t2i.pipelines.scripting import add_infotext_params, check_params, fix_seeds, is_image_params, run_pipeline
from t2i.pipelines.txt2img import MAX_SEED, StepCallback

MIN_FACTOR_STRENGTH = 0.1  # the change factor never takes the strength below this (the web UI's clamp)


@dataclass
class LoopbackResult:
    images: list[Image.Image]  # every loop's output (batch count 1) or each chain's last
    infotexts: list[str]
    seeds: list[int]
    grid: Image.Image  # the images in one row
    interrupted: str | None = None  # how far an interrupted loopback got (partial_note)


def check_options(options: LoopbackOptions) -> None:
    validate(options)
    if options.final_denoising_strength is not None and options.denoising_strength_change_factor != 1.0:
        raise ParamError("give either a denoising strength change factor or a final denoising strength, not both")


def loop_strengths(initial: float, options: LoopbackOptions) -> list[float]:
    """The denoising strength of each loop."""
    if options.final_denoising_strength is None:
        strengths = [initial]
        for _ in range(options.loops - 1):
            strengths.append(min(max(strengths[-1] * options.denoising_strength_change_factor,
                                     MIN_FACTOR_STRENGTH), 1.0))
        return strengths
    if options.loops == 1:
        return [initial]
    shape = {"Linear": lambda t: t, "Aggressive": lambda t: math.sin(t * math.pi / 2),
             "Lazy": lambda t: 1 - math.cos(t * math.pi / 2)}[options.denoising_curve]
    change = options.final_denoising_strength - initial
    return [initial + change * shape(i / (options.loops - 1)) for i in range(options.loops)]


def _infotext_keys(options: LoopbackOptions) -> dict:
    """The keys the web UI's loopback adds (its two versions)."""
    if options.final_denoising_strength is None:
        return {"Denoising strength change factor": options.denoising_strength_change_factor}
    return {"Final denoising strength": options.final_denoising_strength, "Denoising curve": options.denoising_curve}


def loopback(loaded, params, image: Image.Image, options: LoopbackOptions, *, mask: Image.Image | None = None,
             callback: StepCallback | None = None) -> LoopbackResult:
    """`params` are Img2ImgParams (or InpaintParams with `mask`, which every loop repaints)."""
    check_options(options)
    if not is_image_params(params):
        raise ParamError("loopback runs img2img: pass Img2ImgParams (or InpaintParams with a mask)")
    if not isinstance(image, Image.Image):
        raise ValueError(f"loopback starts from one PIL image, got {type(image).__name__}")
    chains = params.n_iter
    params = fix_seeds(replace(params, batch_size=1, n_iter=1))
    check_params(loaded, params, [image])
    strengths = loop_strengths(params.denoising_strength, options)
    extra = _infotext_keys(options)
    masks = None if mask is None else [mask]
    images, infotexts, seeds = [], [], []
    seed, loops_done, interrupted = params.seed, 0, None
    for _ in range(chains):
        current, last = image, None  # last: the chain's latest finished run
        for strength in strengths:
            try:
                last = run_pipeline(loaded, replace(params, seed=seed, denoising_strength=strength), [current],
                                    masks, callback)
            except ScriptInterrupted:
                if loops_done == 0:  # nothing finished: nothing to return
                    raise
                interrupted = partial_note(loops_done, chains * len(strengths), "loops")
                break
            loops_done += 1
            current = last.images[0]
            seed = (last.seeds[0] + 1) % (MAX_SEED + 1)
            if chains == 1:
                _keep(last, extra, images, infotexts, seeds)
        if chains > 1 and last is not None:  # each chain's last image (an interrupted chain's latest)
            _keep(last, extra, images, infotexts, seeds)
        if interrupted:
            break
    # each loop's run_pipeline finished its image (as the web UI's per-loop processing does); the grid
    # of finished frames gets the watermark
    return LoopbackResult(images, infotexts, seeds, finish_grid(params, tile_images(images, cols=len(images))),
                          interrupted)


def _keep(result, extra: dict, images: list, infotexts: list, seeds: list) -> None:
    images.append(result.images[0])
    infotexts.append(add_infotext_params(result.infotexts[0], extra))
    seeds.append(result.seeds[0])
