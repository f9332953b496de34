"""Which Stable Diffusion architecture a single-file checkpoint holds, from its tensor names and
shapes alone (original CompVis / web-UI key layout).

    arch = detect_architecture(state, "model.safetensors")   # Architecture(family="sd1", ...)

| family | text encoder(s) (where in the file)                        | cross-attention width |
|--------|------------------------------------------------------------|-----------------------|
| sd1    | CLIP ViT-L/14 (`cond_stage_model.transformer.`)            | 768                   |
| sd2    | OpenCLIP ViT-H text tower (`cond_stage_model.model.`)      | 1024                  |
| sdxl   | CLIP ViT-L (`conditioner.embedders.0.`) + OpenCLIP bigG (`.1.`) | 768 + 1280 = 2048 |
Inpainting variants have 9 UNet input channels (latents, mask, masked-image latents).

What the tensors cannot tell: whether an SD 2.x model predicts noise (epsilon, the 512 px base
models) or velocity (v-prediction, the 768 px models). `resolve_prediction_type` takes a user
flag, the web UI's sidecar YAML, or the hints some trainers write into the file, and otherwise
assumes epsilon and says so.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from torch import Tensor

from t2i.checkpoints.diffusers_folder import ModelLoadError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIXES = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")
SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
PREDICTION_TYPES = ("epsilon", "v_prediction")
_ATTN2_K = re.compile(re.escape(UNET_PREFIX) + r".*\.attn2\.to_k\.weight$")


@dataclass(frozen=True)
class Architecture:
    family: str  # "sd1" | "sd2" | "sdxl"
    in_channels: int  # 4, or 9 for inpainting models
    context_dim: int  # the UNet's cross-attention width
    text_prefixes: tuple[str, ...]  # where each text encoder's tensors live, in pipeline order
    notes: tuple[str, ...] = field(default=())

    @property
    def inpainting(self) -> bool:
        return self.in_channels == 9

    @property
    def config_name(self) -> str:
        """The bundled config folder under t2i/assets/sd_configs."""
        return {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}[self.family]

    @property
    def label(self) -> str:
        name = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL base"}[self.family]
        return name + (" inpainting" if self.inpainting else "")

    def default_resolution(self, prediction_type: str) -> int:
        if self.family == "sdxl":
            return 1024
        return 768 if self.family == "sd2" and prediction_type == "v_prediction" else 512


def detect_architecture(state: Mapping[str, Tensor], source: str | Path) -> Architecture:
    """The architecture of an original-layout checkpoint; ModelLoadError (naming `source`) for
    anything else, with a hint when the file is a LoRA, a VAE, an embedding or a diffusers UNet."""
    first = state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if first is None:
        raise ModelLoadError(f"{source} is not a Stable Diffusion checkpoint: {_what_else(state)}")
    if first.ndim != 4:
        raise ModelLoadError(f"{source}: {UNET_PREFIX}input_blocks.0.0.weight has shape {tuple(first.shape)}, "
                             f"expected a 4-d convolution weight; the file is damaged or not Stable Diffusion")
    in_channels = int(first.shape[1])
    if in_channels not in (4, 9):
        kind = " (an InstructPix2Pix-style image-conditioned model)" if in_channels == 8 else ""
        raise ModelLoadError(f"{source}: a UNet with {in_channels} input channels{kind} is not supported; "
                             f"t2i loads text-to-image models (4 channels) and inpainting models (9)")
    context = _context_dim(state, source)
    family, prefixes, widths = _text_encoders(state, source)
    if sum(widths) != context:
        raise ModelLoadError(f"{source}: its text encoder output width {' + '.join(map(str, widths))} does not "
                             f"match the UNet's cross-attention width {context}; the file mixes parts of "
                             f"different models or is damaged")
    if family == "sdxl" and UNET_PREFIX + "label_emb.0.0.weight" not in state:
        raise ModelLoadError(f"{source}: an SDXL text encoder pair but no size/crop conditioning "
                             f"({UNET_PREFIX}label_emb.*) in the UNet; the file is damaged")
    if VAE_PREFIX + "decoder.conv_in.weight" not in state:
        raise ModelLoadError(f"{source} has no VAE ({VAE_PREFIX}* tensors); t2i needs a complete checkpoint "
                             f"(UNet, VAE and text encoder in one file)")
    return Architecture(family, in_channels, context, prefixes)


def _context_dim(state: Mapping[str, Tensor], source) -> int:
    for key, tensor in state.items():
        if _ATTN2_K.match(key):
            return int(tensor.shape[1])
    raise ModelLoadError(f"{source}: the UNet has no cross-attention (attn2) layers, so it is not a "
                         f"text-conditioned Stable Diffusion model")


def _text_encoders(state: Mapping[str, Tensor], source) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """(family, tensor prefixes, output widths) of the text encoder(s) in the file."""
    def width(key: str) -> int:
        return int(state[key].shape[-1])

    xl_g = SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight"
    xl_l = SDXL_CLIP_PREFIX + "embeddings.token_embedding.weight"
    if xl_g in state and xl_l in state:
        return "sdxl", (SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX), (width(xl_l), width(xl_g))
    if "conditioner.embedders.0.model.token_embedding.weight" in state:
        raise ModelLoadError(f"{source} is an SDXL refiner (one OpenCLIP text encoder, aesthetic-score "
                             f"conditioning); t2i loads SDXL base models only")
    if any(k.startswith("conditioner.embedders.") for k in state):
        raise ModelLoadError(f"{source} has an incomplete SDXL text encoder pair (conditioner.embedders.*); "
                             f"expected both embedders.0 (CLIP ViT-L) and embedders.1 (OpenCLIP bigG)")
    if SD2_OPEN_CLIP_PREFIX + "token_embedding.weight" in state:
        return "sd2", (SD2_OPEN_CLIP_PREFIX,), (width(SD2_OPEN_CLIP_PREFIX + "token_embedding.weight"),)
    for prefix in SD1_CLIP_PREFIXES:  # older exports leave out the "text_model." level
        key = prefix + "embeddings.token_embedding.weight"
        if key in state:
            return "sd1", (prefix,), (width(key),)
    raise ModelLoadError(f"{source} has a UNet but no text encoder (expected cond_stage_model.* or "
                         f"conditioner.embedders.*); t2i needs a complete checkpoint")


def _what_else(state: Mapping[str, Tensor]) -> str:
    keys = list(state)
    if any(".lora_down." in k or ".lora_A." in k or k.startswith(("lora_unet_", "lora_te")) for k in keys):
        return "it looks like a LoRA file (lora_* tensors); use it as a LoRA on top of a base model"
    if any(k.startswith(("down_blocks.", "conv_in.", "unet.")) for k in keys) and any("attn2" in k for k in keys):
        return "it looks like a diffusers-format UNet alone; give the whole diffusers folder instead"
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys):
        return "it looks like a VAE alone; give a full model checkpoint"
    if any(k in ("string_to_param", "emb_params", "clip_l", "clip_g") for k in keys):
        return "it looks like a textual-inversion embedding; use it as an embedding in the prompt"
    shown = ", ".join(sorted(keys)[:3])
    return f"no {UNET_PREFIX}* tensors (first keys: {shown}); expected an original-layout SD 1.x/2.x/SDXL file"


def resolve_prediction_type(arch: Architecture, path: Path, state: Mapping[str, Tensor],
                            metadata: Mapping[str, str], requested: str | None) -> tuple[str, list[str]]:
    """(prediction type, notes for the user). Order: the caller's flag; a sidecar `<name>.yaml`
    (the web UI's convention: `parameterization: "v"` in the original LDM config); a `v_pred`
    marker tensor or SAI model-spec metadata in the file; else epsilon."""
    if requested is not None:
        if requested not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {requested!r}")
        return requested, []
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        found = _yaml_parameterization(sidecar)
        if found:
            return found, [f"prediction type {found} from {sidecar.name}"]
    if "v_pred" in state:
        return "v_prediction", ["prediction type v_prediction from the file's v_pred marker"]
    spec = (metadata.get("modelspec.prediction_type") or "").lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", ["prediction type v_prediction from the file's modelspec metadata"]
    if spec == "epsilon" or arch.family != "sd2" or arch.inpainting:
        return "epsilon", []
    return "epsilon", [
        "SD 2.x: the weights cannot tell epsilon from v-prediction; assuming epsilon (the 512 px base models). "
        "For a 768 px v-prediction model pass prediction_type='v_prediction' or put its .yaml config beside the file."
    ]


def _yaml_parameterization(path: Path) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ModelLoadError(f"cannot read the model config {path}: {err}") from err
    params = (((data or {}).get("model") or {}).get("params") or {}) if isinstance(data, dict) else {}
    if not isinstance(params, dict):
        return None
    value = params.get("parameterization", "eps")
    return "v_prediction" if value == "v" else "epsilon"
