"""The diffusion pipelines' parameters (txt2img, img2img, inpaint, outpaint): the schema's
largest part. Torch-free on purpose, so the CLI can build its flags (and `t2i --help` and
argument errors answer) without loading torch; the pipelines import their params from here."""
from __future__ import annotations

from dataclasses import dataclass

from t2i.diffusion.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from t2i.pipelines.params import param

MAX_SEED = 2**32 - 1
# Hires fix upscalers: the latent ones (torch interpolation, pipelines/hires.py), then image ones.
LATENT_UPSCALER_NAMES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                         "Latent (nearest)", "Latent (nearest-exact)")
IMAGE_UPSCALER_NAMES = ("Lanczos", "Nearest")
HR_UPSCALERS: tuple[str, ...] = (*LATENT_UPSCALER_NAMES, *IMAGE_UPSCALER_NAMES)
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill")
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
DIRECTIONS = ("left", "right", "up", "down")


@dataclass
class GenerationParams:
    """What every diffusion pipeline shares (txt2img, img2img, inpaint, outpaint)."""

    prompt: str = param("", "what the image should show", group="prompt", cli=False, infotext="Prompt")
    negative_prompt: str = param("", "what the image should not show", group="prompt", infotext="Negative prompt")
    styles: tuple[str, ...] = param((), "styles of the styles file to apply, in order (their prompts are expanded "
                                        "into the prompt and negative prompt)", group="prompt", flag="--style",
                                    cli_action="append", axis=None)
    steps: int = param(20, "denoising steps", label="Sampling steps", minimum=1, maximum=1000, step=1,
                       infotext="Steps", axis="Steps")
    cfg_scale: float = param(7.0, "classifier-free guidance scale (1 = no guidance)", label="CFG Scale", minimum=0.0,
                             maximum=100.0, step=0.5, infotext="CFG scale", axis="CFG Scale", axis_aliases=("cfg",))
    sampler: str = param("DPM++ 2M", "sampler name, e.g. " + ", ".join(SAMPLER_NAMES[:6]) + ", ... "
                         "(combined names such as 'DPM++ 2M Karras' work)", label="Sampling method",
                         infotext="Sampler", api="sampler_name", axis="Sampler", axis_aliases=("sampler_name",),
                         axis_show_label=False)
    scheduler: str = param("Automatic", "schedule type: " + ", ".join(SCHEDULE_TYPES), label="Schedule type",
                           infotext="Schedule type", axis="Schedule type", axis_aliases=("schedule",))
    eta: float = param(0.0, "noise added per step by DDIM-style samplers (0 = deterministic)", group="advanced",
                       minimum=0.0, maximum=1.0, step=0.01, infotext="Eta DDIM", axis="Eta")
    seed: int = param(-1, "seed of the first image; image i uses seed + i; -1 = random", group="seed", minimum=-1,
                      maximum=MAX_SEED, infotext="Seed", axis="Seed")
    width: int | None = param(None, "width in pixels (default: the model's training resolution)", group="size",
                              minimum=8, maximum=8192, step=8, infotext="Size", infotext_part=0, axis="Width")
    height: int | None = param(None, "height in pixels (default: the model's training resolution)", group="size",
                               minimum=8, maximum=8192, step=8, infotext="Size", infotext_part=1, axis="Height")
    batch_size: int = param(1, "images generated together in one batch", group="batch", minimum=1, maximum=256)
    n_iter: int = param(1, "number of batches", label="Batch count", group="batch", minimum=1, maximum=10_000)
    # Variations: the noise of `subseed` (+ i for image i) slerped into the seed's noise.
    subseed: int = param(-1, "variation seed; image i uses subseed + i; -1 = random", label="Variation seed",
                         group="seed", minimum=-1, maximum=MAX_SEED, infotext="Variation seed", axis="Var. seed",
                         axis_aliases=("variation seed",))
    subseed_strength: float = param(0.0, "how much of the variation seed's noise to blend in (0 = none, 1 = all)",
                                    label="Variation strength", group="seed", minimum=0.0, maximum=1.0, step=0.01,
                                    infotext="Variation seed strength", axis="Var. strength",
                                    axis_aliases=("variation strength", "variation seed strength"))
    seed_resize_from_w: int = param(0, "draw the seed's noise at this width, centred, to keep a seed's look at a "
                                       "new size; 0 = off", label="Resize seed from width", group="seed", minimum=-1,
                                    maximum=8192, infotext="Seed resize from", infotext_part=0)
    seed_resize_from_h: int = param(0, "height for seed_resize_from_w; 0 = off", label="Resize seed from height",
                                    group="seed", minimum=-1, maximum=8192, infotext="Seed resize from",
                                    infotext_part=1)
    clip_skip: int = param(1, "text encoder layer to condition on, counted from the end: 1 = the last, 2 = the "
                              "penultimate (then the final layer norm, as the web UI does)", group="advanced",
                           minimum=1, maximum=12, infotext="Clip skip", axis="Clip skip")
    tiling: bool = param(False, "seamless textures: the image wraps around at its edges (circular padding in the "
                                "UNet and VAE)", group="advanced", infotext="Tiling")
    # The web UI's noise settings for Euler (diffusers' Euler takes them; other samplers ignore them).
    s_churn: float = param(0.0, "Euler: sigma churn, extra noise added at each step (0 = none)", label="Sigma churn",
                           group="advanced", minimum=0.0, maximum=100.0, infotext="Sigma churn", axis="Sigma Churn")
    s_tmin: float = param(0.0, "Euler: sigma churn applies from this noise level (sigma) up", label="Sigma tmin",
                          group="advanced", minimum=0.0, maximum=1000.0, infotext="Sigma tmin", axis="Sigma min")
    s_tmax: float = param(0.0, "Euler: sigma churn applies up to this noise level (sigma); 0 = no limit",
                          label="Sigma tmax", group="advanced", minimum=0.0, maximum=1000.0, infotext="Sigma tmax",
                          axis="Sigma max")
    s_noise: float = param(1.0, "Euler: scale of the sigma churn noise", label="Sigma noise", group="advanced",
                           minimum=0.0, maximum=10.0, infotext="Sigma noise", axis="Sigma noise")
    # LoRAs besides the prompt's <lora:name:weight> tags (t2i.extra_networks): Python API only.
    loras: dict | None = param(None, "LoRA name (in the LoRA folders) or file path -> weight, or -> (text encoder, "
                                     "UNet) weights", group="prompt", cli=False, api="t2i_loras")
    # Few-step generation with an LCM-LoRA (t2i.pipelines.fast): the bundled model ships one; steps,
    # sampler and CFG scale still at their defaults become 4, LCM and 1 (other values given win).
    fast: bool = param(False, "few-step generation: the model's LCM-LoRA (the bundled model ships one; other models "
                              "need --fast-lora), 4 steps of the LCM sampler at CFG scale 1 (steps, sampler and CFG "
                              "scale other than their defaults win)", label="Fast (LCM, 4 steps)",
                       infotext="Fast", api="t2i_fast")
    fast_lora: str | None = param(None, "the LCM-LoRA file that --fast applies (a kohya or diffusers LoRA file, e.g. "
                                        "one `t2i train` wrote with family: lcm); implies --fast",
                                  label="Fast LoRA file", api=None)
    # CompVis's --fixed_code: every image of the run starts from the run's seed (the same starting
    # latent); variation seeds still advance per image, so image i is its seed and subseed + i.
    fixed_code: bool = param(False, "one starting latent for every image of the run: all images use the first "
                                    "seed (variation seeds still advance, so --subseed-strength gives variations "
                                    "of one composition)", group="seed", infotext="Fixed code", api="t2i_fixed_code")
    # After generation, per image: face restoration, the safety checker (LoadSettings), the watermark.
    restore_faces: bool = param(False, "run the face restorer (--face-restorer) over each image; no face detector "
                                       "weights exist offline, so it restores the whole image", label="Restore faces",
                                group="output")
    watermark: str = param("", "an invisible watermark (invisible-watermark's dwtDctSvd) with this text in each "
                               "image; images must be at least 256 px a side; read it with `t2i watermark detect`",
                           group="output", api="t2i_watermark")


@dataclass
class Txt2ImgParams(GenerationParams):
    # Hires fix: a first pass at width x height, an upscale, then an img2img pass at the larger size.
    enable_hr: bool = param(False, "hires fix: upscale the first pass and refine it with a second img2img pass",
                            label="Hires. fix", group="hires")
    hr_scale: float = param(2.0, "hires fix: upscale factor", label="Upscale by", group="hires", minimum=1.0,
                            maximum=8.0, step=0.05, infotext="Hires upscale", infotext_implies={"enable_hr": True})
    # no static choices: names of upscaler files in --upscaler-dir are valid too (checked at run time)
    hr_upscaler: str = param("Latent", "hires fix: upscaler, " + ", ".join(HR_UPSCALERS) + ", or the name of an "
                             "upscaler model file in --upscaler-dir", label="Upscaler", group="hires",
                             infotext="Hires upscaler",
                             infotext_implies={"enable_hr": True}, axis="Hires upscaler")
    hr_second_pass_steps: int = param(0, "hires fix: steps of the second pass; 0 = same as steps", label="Hires steps",
                                      group="hires", minimum=0, maximum=1000, infotext="Hires steps",
                                      infotext_implies={"enable_hr": True}, axis="Hires steps")
    hr_resize_x: int = param(0, "hires fix: target width instead of hr_scale; 0 = from hr_scale or the aspect",
                             label="Resize width to", group="hires", minimum=0, maximum=8192, step=8,
                             infotext="Hires resize", infotext_part=0, infotext_implies={"enable_hr": True})
    hr_resize_y: int = param(0, "hires fix: target height instead of hr_scale; 0 = from hr_scale or the aspect",
                             label="Resize height to", group="hires", minimum=0, maximum=8192, step=8,
                             infotext="Hires resize", infotext_part=1, infotext_implies={"enable_hr": True})
    denoising_strength: float = param(0.7, "hires fix: denoising strength of the second pass", group="hires",
                                      minimum=0.0, maximum=1.0, step=0.01, infotext="Denoising strength",
                                      axis="Denoising", axis_aliases=("denoising strength",))
    # DeepCache (t2i.diffusion.deepcache): the first pass reuses the UNet's deep features between steps.
    deepcache_interval: int = param(1, "DeepCache: run the whole UNet every N model evaluations and only its shallow "
                                       "layers in between (faster, approximate); 1 = off", group="advanced",
                                    minimum=1, maximum=100, infotext="DeepCache interval", api="t2i_deepcache_interval")
    # Layout-to-image (t2i.pipelines.layout): layout models only; the prompt gives the background.
    layout: str = param("", "layout models: objects as 'CLASS@x0,y0,x1,y1; ...' (e.g. 'red circle@0.1,0.1,0.4,0.4; "
                            "blue square@0.6,0.5,0.9,0.8'), boxes as fractions of the canvas", group="prompt",
                        infotext="Layout", api="t2i_layout")


@dataclass
class Img2ImgParams(GenerationParams):
    denoising_strength: float = param(0.75, "how much to change the image: 0 returns it unchanged, 1 ignores it; "
                                            "round(strength x steps) steps run", group="img2img", minimum=0.0,
                                      maximum=1.0, step=0.01, infotext="Denoising strength", axis="Denoising",
                                      axis_aliases=("denoising strength",))
    resize_mode: str = param("Just resize", "how the image fits width x height: " + ", ".join(RESIZE_MODES),
                             group="img2img", choices=RESIZE_MODES, infotext="Resize mode")



@dataclass
class InpaintParams(Img2ImgParams):
    mask_blur: int = param(4, "blur of the mask's edge (Gaussian sigma, pixels)", group="inpaint", minimum=0,
                           maximum=256, infotext="Mask blur")
    inpainting_mask_invert: bool = param(False, "repaint the black area of the mask instead of the white",
                                         label="Mask mode", group="inpaint", flag="--invert-mask",
                                         infotext="Mask mode", infotext_values=("Inpaint masked", "Inpaint not masked"))
    inpainting_fill: str = param("original", "what the masked area starts from: fill (its surroundings' colours), "
                                 "original, latent noise, latent nothing", label="Masked content", group="inpaint",
                                 choices=FILL_MODES, flag="--masked-content", infotext="Masked content")
    inpaint_full_res: bool = param(False, "only masked: paint the mask's box (plus padding) at width x height and "
                                   "paste it back", label="Inpaint area", group="inpaint", flag="--only-masked",
                                   infotext="Inpaint area", infotext_values=("Whole picture", "Only masked"))
    inpaint_full_res_padding: int = param(32, "only masked: pixels of context around the mask's box",
                                          label="Only masked padding, pixels", group="inpaint", minimum=0,
                                          maximum=4096, flag="--only-masked-padding", infotext="Masked area padding")


@dataclass
class OutpaintParams(InpaintParams):
    pixels: int = param(128, "pixels to add on each chosen side", label="Pixels to expand", group="outpaint",
                        minimum=1, maximum=4096, step=8, infotext="Outpaint pixels", api="t2i_outpaint_pixels")
    directions: str = param("left,right,up,down", "sides to extend, comma-separated: " + ", ".join(DIRECTIONS),
                            label="Outpainting direction", group="outpaint", infotext="Outpaint directions",
                            api="t2i_outpaint_directions")
    # Outpainting's own defaults: a new area has no content to keep, so start from its
    # surroundings' colours and denoise more.
    inpainting_fill: str = param("fill", "what the new area starts from: fill (its surroundings' colours), "
                                 "original (stretched edges), latent noise, latent nothing", label="Masked content",
                                 group="inpaint", choices=FILL_MODES, flag="--masked-content", infotext="Masked content")
    denoising_strength: float = param(0.8, "how much to change the masked area: 0 keeps the stretched edges, "
                                           "1 ignores them", group="img2img", minimum=0.0, maximum=1.0, step=0.01,
                                      infotext="Denoising strength", axis="Denoising",
                                      axis_aliases=("denoising strength",))
