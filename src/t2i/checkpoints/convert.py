"""Tensor names between diffusers modules and the original single-file (CompVis / web UI) layout.

One forward map per component, from a diffusers parameter name to where that tensor lives in
an original checkpoint (and how it is stored there). Loading reads through the map; exporting
writes through the same map, so the two directions cannot disagree.

    UNet  down_blocks.1.resnets.0.norm1.weight -> model.diffusion_model.input_blocks.4.0.in_layers.0.weight
    VAE   decoder.up_blocks.0.upsamplers.0.conv.weight -> first_stage_model.decoder.up.3.upsample.conv.weight
    CLIP  encoder.layers.0.mlp.fc1.weight -> cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight
    OpenCLIP  encoder.layers.0.self_attn.k_proj.weight -> ...transformer.resblocks.0.attn.in_proj_weight[1/3]

Text-encoder names are taken without transformers' optional `text_model.` level (transformers 5
drops it from CLIPTextModel but keeps it in CLIPTextModelWithProjection).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from t2i.checkpoints.detect import SD1_CLIP_PREFIXES, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX


@dataclass(frozen=True)
class Target:
    """Where a diffusers tensor lives in the original file. `kind`: "same"; "conv1x1" (stored as
    a 1x1 convolution, a linear layer in diffusers); "transpose"; "qkv" (third `part` of a fused
    q/k/v in-projection)."""

    key: str
    kind: str = "same"
    part: int = 0


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _layers_per_block(config: dict) -> int:
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        raise ValueError(f"layers_per_block={layers!r}: the original layout needs one int for every block")
    return layers


def unet_target(name: str, config: dict) -> Target:
    """Original location of diffusers UNet2DConditionModel tensor `name` (config: the UNet's)."""
    per = _layers_per_block(config) + 1  # input/output blocks per resolution level
    for src, dst in _UNET_TOP.items():
        if name.startswith(src + "."):
            return Target(UNET_PREFIX + dst + name[len(src):])
    parts = name.split(".")
    kind = parts[0]
    if kind == "down_blocks":
        i, sub, j, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
        if sub == "resnets":
            return Target(f"{UNET_PREFIX}input_blocks.{1 + i * per + int(j)}.0.{_resnet(rest)}")
        if sub == "attentions":
            return Target(f"{UNET_PREFIX}input_blocks.{1 + i * per + int(j)}.1.{rest}")
        if sub == "downsamplers":  # rest = "conv.weight"
            return Target(f"{UNET_PREFIX}input_blocks.{(i + 1) * per}.0.op.{rest.partition('.')[2]}")
    if kind == "mid_block":
        sub, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if sub == "resnets":
            return Target(f"{UNET_PREFIX}middle_block.{2 * j}.{_resnet(rest)}")
        if sub == "attentions":
            return Target(f"{UNET_PREFIX}middle_block.1.{rest}")
    if kind == "up_blocks":
        i, sub, j, rest = int(parts[1]), parts[2], parts[3], ".".join(parts[4:])
        if sub == "resnets":
            return Target(f"{UNET_PREFIX}output_blocks.{i * per + int(j)}.0.{_resnet(rest)}")
        if sub == "attentions":
            return Target(f"{UNET_PREFIX}output_blocks.{i * per + int(j)}.1.{rest}")
        if sub == "upsamplers":  # after the resnet, and after the attention where the level has one
            slot = 2 if config["up_block_types"][i].startswith("CrossAttn") else 1
            return Target(f"{UNET_PREFIX}output_blocks.{i * per + per - 1}.{slot}.{rest}")
    raise ValueError(f"UNet tensor {name!r} has no place in the original Stable Diffusion layout")


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_target(name: str, config: dict) -> Target:
    """Original location of diffusers AutoencoderKL tensor `name`."""
    levels = len(config["block_out_channels"])
    for src, dst in (("encoder.conv_norm_out", "encoder.norm_out"), ("decoder.conv_norm_out", "decoder.norm_out")):
        if name.startswith(src + "."):
            return Target(VAE_PREFIX + dst + name[len(src):])
    if name.split(".")[1] in ("conv_in", "conv_out") or name.startswith(("quant_conv.", "post_quant_conv.")):
        return Target(VAE_PREFIX + name)
    parts = name.split(".")
    coder, block = parts[0], parts[1]
    if block in ("down_blocks", "up_blocks"):
        i, sub, j, rest = int(parts[2]), parts[3], parts[4], ".".join(parts[5:])
        level, what = (i, "down") if block == "down_blocks" else (levels - 1 - i, "up")  # decoder counts upward
        if sub == "resnets":
            rest = rest.replace("conv_shortcut", "nin_shortcut")
            return Target(f"{VAE_PREFIX}{coder}.{what}.{level}.block.{j}.{rest}")
        if sub in ("downsamplers", "upsamplers"):
            return Target(f"{VAE_PREFIX}{coder}.{what}.{level}.{what}sample.{rest}")
    if block == "mid_block":
        sub, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if sub == "resnets":
            return Target(f"{VAE_PREFIX}{coder}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}")
        if sub == "attentions":
            for src, dst in _VAE_ATTN.items():
                if rest.startswith(src + "."):
                    kind = "same" if src == "group_norm" else "conv1x1"
                    return Target(f"{VAE_PREFIX}{coder}.mid.attn_1.{dst}{rest[len(src):]}", kind)
    raise ValueError(f"VAE tensor {name!r} has no place in the original Stable Diffusion layout")


def clip_target(name: str, prefix: str) -> Target:
    """Original location of a CLIP ViT-L text tensor (`name` without `text_model.`): the same
    Hugging Face names under `prefix` (which includes `text_model.` in current files)."""
    return Target(prefix + name)


_OPEN_CLIP = {"embeddings.token_embedding.weight": "token_embedding.weight",
              "embeddings.position_embedding.weight": "positional_embedding",
              "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def open_clip_target(name: str, prefix: str) -> Target:
    """Original location of an OpenCLIP text tensor (`name` in transformers' CLIP naming, without
    `text_model.`). OpenCLIP fuses q, k, v into one in-projection and stores the output
    projection as (width, dim), transposed from a Linear weight."""
    if name in _OPEN_CLIP:
        return Target(prefix + _OPEN_CLIP[name])
    if name == "text_projection.weight":
        return Target(prefix + "text_projection", "transpose")
    parts = name.split(".")
    if parts[:2] == ["encoder", "layers"]:
        layer, rest = parts[2], ".".join(parts[3:])
        base = f"{prefix}transformer.resblocks.{layer}."
        for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            if rest.startswith(f"self_attn.{proj}."):
                return Target(base + "attn.in_proj_" + rest.rsplit(".", 1)[1], "qkv", i)
        for src, dst in _OPEN_CLIP_LAYER.items():
            if rest.startswith(src + "."):
                return Target(base + dst + rest[len(src):])
    raise ValueError(f"OpenCLIP text tensor {name!r} has no place in the original layout")


def read_target(state: dict[str, Tensor], target: Target) -> Tensor:
    """The diffusers-shaped tensor for `target` from an original state dict (KeyError if absent)."""
    value = state[target.key]
    if target.kind == "conv1x1":
        return value.reshape(value.shape[0], -1) if value.ndim == 4 else value
    if target.kind == "transpose":
        return value.T.contiguous()  # a strided view would become a parameter that cannot be saved
    if target.kind == "qkv":
        return value.chunk(3, dim=0)[target.part]
    return value


def text_name(name: str) -> str:
    """A transformers CLIP parameter name without its optional `text_model.` level."""
    return name.removeprefix("text_model.")


def to_original(components: dict[str, tuple[dict[str, Tensor], callable]]) -> dict[str, Tensor]:
    """Original-layout state dict from {component: (diffusers state dict, name -> Target)}.
    Fused q/k/v in-projections are concatenated in q, k, v order."""
    out: dict[str, Tensor] = {}
    fused: dict[str, list] = {}
    for component, (state, target_of) in components.items():
        for name, tensor in state.items():
            target = target_of(name)
            if target.key in out or (target.kind != "qkv" and target.key in fused):
                raise ValueError(f"{component} tensor {name!r} maps onto {target.key!r} twice")
            if target.kind == "qkv":
                fused.setdefault(target.key, [None, None, None])[target.part] = tensor
            elif target.kind == "conv1x1":
                out[target.key] = tensor[:, :, None, None] if tensor.ndim == 2 else tensor  # biases stay 1-d
            elif target.kind == "transpose":
                out[target.key] = tensor.T
            else:
                out[target.key] = tensor
    for key, parts in fused.items():
        if any(p is None for p in parts):
            raise ValueError(f"{key}: q, k and v projections are needed to write the fused in-projection")
        out[key] = torch.cat(parts, dim=0)
    return {k: v.detach().contiguous() for k, v in out.items()}


def export_targets(family: str, unet_config: dict, vae_config: dict) -> dict[str, callable]:
    """name -> Target functions for each component of a `family` model, for `to_original`."""
    targets = {"unet": lambda n: unet_target(n, unet_config), "vae": lambda n: vae_target(n, vae_config)}
    if family == "sd1":
        targets["text_encoder"] = lambda n: clip_target(text_name(n), SD1_CLIP_PREFIXES[0])
    elif family == "sdxl":
        targets["text_encoder"] = lambda n: clip_target(text_name(n), SDXL_CLIP_PREFIX)
        targets["text_encoder_2"] = lambda n: open_clip_target(text_name(n), SDXL_OPEN_CLIP_PREFIX)
    else:
        # SD 2.x keeps the penultimate of OpenCLIP's 24 layers; the dropped last layer cannot be
        # written back, and a file without it would not load in the original code.
        raise ValueError(f"export to the original layout supports sd1 and sdxl models, not {family!r}")
    return targets


def original_state_dict(model, family: str | None = None, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The original single-file state dict of `model` (anything with `unet`, `vae`,
    `text_encoder` and, for SDXL, `text_encoder_2`: a t2i model or a diffusers pipeline)."""
    family = family or getattr(getattr(model, "config", None), "family", None) or \
        ("sdxl" if getattr(model, "text_encoder_2", None) is not None else "sd1")
    targets = export_targets(family, dict(model.unet.config), dict(model.vae.config))
    components = {name: (getattr(model, name).state_dict(), target_of) for name, target_of in targets.items()}
    state = to_original(components)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state


def save_single_file(model, path, family: str | None = None, dtype: torch.dtype | None = None) -> None:
    """Write `model` as one original-layout `.safetensors` file (web UIs, ComfyUI, diffusers'
    `from_single_file`), atomically: a temporary file renamed into place."""
    from pathlib import Path

    from safetensors.torch import save_file

    from t2i.atomic import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: single-file exports are written as .safetensors")
    state = original_state_dict(model, family, dtype)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
