"""How a model is loaded and run: which files, which device and precision, memory and speed
options. One typed dataclass, part of the schema (its fields carry the same metadata as the
pipelines' params), so `--model`, `--vae`, `--precision`, ... are declared once for every command,
the REST API's settings and the web UI's settings tab.

A `Session` (pipelines/session.py) caches a loaded model by the settings that shape its weights
(`LoadSettings.model_key`); the per-run options (slicing, tiling) are planned for each run.
"""
from __future__ import annotations

from dataclasses import dataclass

from t2i.errors import ParamError
from t2i.pipelines.params import param

SWITCH = ("auto", "off", "on")
OFFLOAD = ("none", "model", "sequential")
DEFAULT_MODEL = "default"  # the bundled model, wherever a model is taken


@dataclass(frozen=True)
class LoadSettings:
    model: str | None = param(None, "a t2i or diffusers model folder, a Stable Diffusion .safetensors/.ckpt file, "
                                    "or `default` (the bundled shapes model; also when not given)",
                              label="Stable Diffusion checkpoint", group="model", api=None)
    vae: str | None = param(None, "a separate VAE file (.safetensors, .pt, .ckpt) or diffusers VAE folder to use "
                                  "instead of the model's own VAE", label="SD VAE", group="model", api=None)
    lora_dirs: tuple[str, ...] = param((), "folder with LoRA files for <lora:name:weight> prompt tags; repeat for "
                                           "several (default: loras and models/Lora)", label="LoRA folders",
                                       group="model", flag="--lora-dir", cli_action="append", api=None)
    embedding_dirs: tuple[str, ...] = param((), "folder with textual-inversion embeddings, used by writing their file "
                                                "name in the prompt; repeat for several (default: embeddings and "
                                                "models/embeddings)", label="Embedding folders", group="model",
                                            flag="--embeddings-dir", cli_action="append", api=None)
    first_stage: str | None = param(None, "autoregressive models: the VQGAN, when it is not beside the transformer",
                                    group="model", api=None)
    precision: str = param("auto", "auto: fastest correct precision for the device; full: float32 everywhere",
                           group="speed", choices=("auto", "full"), api=None)
    device: str | None = param(None, "torch device, e.g. cpu or cuda:0 (default: cuda if available, else cpu)",
                               group="speed", api=None)
    threads: int | None = param(None, "CPU threads for torch (default: torch's choice)", group="speed", minimum=1,
                                maximum=1024, api=None)
    attention_slicing: str = param("auto", "compute attention a few heads at a time (auto: on only for CUDA GPUs "
                                           "under 8 GiB)", group="memory", choices=SWITCH, cli_action="optional",
                                   api=None)
    vae_tiling: str = param("auto", "decode and encode in overlapping tiles: bounded memory for large images (auto: "
                                    "on above 1024x1024 pixels, above 2048x2048 on GPUs of 12 GiB or more)",
                            group="memory", choices=SWITCH, cli_action="optional", api=None)
    offload: str = param("none", "CUDA only: keep the weights in main memory and move each model part (model) or "
                                 "each layer (sequential: least GPU memory, slowest) to the GPU when it runs",
                         group="memory", choices=OFFLOAD, api=None)
    compile: bool = param(False, "torch.compile the UNet (minutes of compiling on first use of each size; needs a "
                                 "C++ compiler on a CPU); the compiled code is kept in --compile-cache, so "
                                 "later runs load it in seconds", group="speed", api=None)
    compile_cache: str | None = param(None, "folder where --compile keeps compiled UNets between runs, one entry per "
                                            "architecture, precision, torch version and CPU (default: compile in "
                                            "t2i's cache folder, ~/.cache/t2i/compile or $T2I_CACHE_DIR/compile); "
                                            "`off`: keep none", group="speed", api=None)
    vae_decoder: tuple[str, ...] = param(("full",), "'full' (default) or 'tiny FILE': decode with a TAESD-format "
                                                    "tiny decoder (a file such as taesd_decoder.safetensors, or a "
                                                    "diffusers AutoencoderTiny folder): faster, approximate",
                                         label="KIND FILE", group="speed", cli_action="nargs+", api=None)
    # Upscalers and face restorers from the user's weight files (pipelines/model_upscalers.py).
    upscaler_dirs: tuple[str, ...] = param((), "folder with upscaler weights (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, "
                                               "... files that spandrel loads); --upscaler NAME and --hr-upscaler "
                                               "NAME take a file's stem; repeat for several (default: models/ESRGAN, "
                                               "models/RealESRGAN, models/SwinIR, models/Swin2SR, models/HAT, "
                                               "models/DAT)", label="Upscaler folders", group="upscale",
                                           flag="--upscaler-dir", cli_action="append", api=None)
    face_restorer: str | None = param(None, "face restorer for --restore-faces: a GFPGAN, CodeFormer or RestoreFormer "
                                            "weights file, or its name in models/GFPGAN or models/Codeformer",
                                      group="upscale", api=None)
    upscaler_tile: int = param(192, "model upscalers run in tiles of this many input pixels a side (bounded "
                                    "memory); 0 = the whole image at once", label="Upscaler tile size",
                               group="upscale", minimum=0, maximum=4096, api=None)
    upscaler_tile_overlap: int = param(16, "overlap of the upscaler tiles in input pixels (blended: no seams)",
                                       label="Upscaler tile overlap", group="upscale", minimum=0, maximum=512,
                                       api=None)
    safety_checker: str | None = param(None, "a local folder with the Stable Diffusion safety checker "
                                             "(StableDiffusionSafetyChecker: config.json and weights); flagged "
                                             "images are blacked out and marked `NSFW: true`; off by default",
                                       group="output", api=None)

    @property
    def model_path(self) -> str | None:
        """The model to load; None for the bundled one (`default` or not given)."""
        return None if self.model in (None, "", DEFAULT_MODEL) else self.model

    @property
    def tiny_decoder(self) -> str | None:
        """The tiny decoder file of `vae_decoder`, or None for the full VAE decoder."""
        kind = self.vae_decoder
        if not kind or tuple(kind) == ("full",):
            return None
        if kind[0] == "tiny" and len(kind) == 2:
            return kind[1]
        raise ParamError(f"--vae-decoder takes 'full' or 'tiny FILE', got {' '.join(kind)!r}")

    def model_key(self) -> tuple:
        """What makes two loads the same model in memory (per-run options are not part of it)."""
        return (self.model_path, self.vae, self.lora_dirs, self.embedding_dirs, self.first_stage, self.precision,
                self.device, self.offload, self.compile, self.tiny_decoder)
