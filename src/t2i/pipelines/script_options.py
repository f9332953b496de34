"""The scripts' own options (X/Y/Z plot, prompt matrix, loopback), beside the generation params
they run with. Torch-free, like generation_params.py, so the CLI builds its flags without torch."""
from __future__ import annotations

from dataclasses import dataclass

from t2i.pipelines.params import param
from t2i.pipelines.xyz_axes import AXIS_OPTIONS

DELIMITERS = {"comma": ", ", "space": " "}
CURVES = ("Linear", "Aggressive", "Lazy")
_AXIS_HELP = ("axis as 'Type: values', e.g. 'Steps: 10-30 (+10)' or 'Sampler: Euler a, DDIM'; types: "
              + ", ".join(o.label for o in AXIS_OPTIONS) + " (those the pipeline's parameters have)")


@dataclass
class XYZOptions:
    x: str = param("", "X " + _AXIS_HELP, group="script", flag="--x")
    y: str = param("", "Y axis, like --x", flag="--y")
    z: str = param("", "Z axis, like --x: one X/Y grid per value", flag="--z")
    draw_legend: bool = param(True, "label the axes")
    include_sub_images: bool = param(False, "also return (CLI: save) each cell's image")
    include_sub_grids: bool = param(False, "also return (CLI: save) the X/Y grid of each Z value")
    keep_random_seeds: bool = param(False, "seed -1 stays random in every cell (the web UI's 'Keep -1 for "
                                           "seeds'); by default one random seed serves the whole plot")
    margin_size: int = param(0, "pixels between the cells of a grid", minimum=0, maximum=500)


@dataclass
class PromptMatrixOptions:
    put_at_start: bool = param(False, "put the optional parts before the first part instead of after it")
    different_seeds: bool = param(False, "image i uses seed + i instead of one seed for all")
    prompt_type: str = param("positive", "which prompt holds the |-separated parts", choices=("positive", "negative"))
    variations_delimiter: str = param("comma", "what joins the parts", choices=tuple(DELIMITERS))
    margin_size: int = param(0, "pixels between the cells of the grid", minimum=0, maximum=500)


@dataclass
class LoopbackOptions:
    loops: int = param(4, "how many times img2img runs, each on the previous output", minimum=1, maximum=1000)
    denoising_strength_change_factor: float = param(1.0, "multiply the denoising strength by this after each loop "
                                                         "(kept within 0.1..1)", minimum=0.0, maximum=10.0,
                                                    flag="--denoising-change-factor")
    final_denoising_strength: float | None = param(None, "instead of a change factor: the strength of the last "
                                                         "loop, reached along --denoising-curve", minimum=0.0,
                                                   maximum=1.0)
    denoising_curve: str = param("Linear", "with a final strength: Linear, Aggressive (changes early) or Lazy "
                                           "(changes late)", choices=CURVES)


@dataclass
class SDUpscaleOptions:
    """The web UI's "SD upscale" script: upscale, then img2img tile by tile (tiles of the params'
    width x height), blended across the overlaps."""
    upscaler: str = param("Lanczos", "upscaler before the img2img tiles: Lanczos, Nearest, or the name of an upscaler "
                                     "file in --upscaler-dir", group="script", flag="--sd-upscaler")
    scale_factor: float = param(2.0, "upscale factor", minimum=1.0, maximum=8.0, step=0.05)
    overlap: int = param(16, "pixels the img2img tiles overlap (blended)", label="Tile overlap", minimum=0,
                         maximum=1024, step=8, flag="--tile-overlap")


@dataclass
class Img2ImgAltOptions:
    """The web UI's "img2img alternative test": invert the image to noise under its original
    prompt (reverse Euler), then sample that noise with the new prompt."""
    original_prompt: str = param("", "the prompt the input image was made with (the inversion's prompt)",
                                 group="script")
    original_negative_prompt: str = param("", "the negative prompt the input image was made with")
    decode_cfg_scale: float = param(1.0, "CFG scale of the inversion", label="Decode CFG scale", minimum=0.0,
                                    maximum=30.0, step=0.1)
    decode_steps: int = param(0, "steps of the inversion; 0 = the sampling steps", label="Decode steps", minimum=0,
                              maximum=1000)
    randomness: float = param(0.0, "fresh seeded noise mixed into the inverted noise (0 = none, 1 = all)",
                              minimum=0.0, maximum=1.0, step=0.01)
