"""LoRA (Hu et al. 2021) trained with peft on the UNet's attention (optionally every linear layer
of its transformer blocks, and with conv_rank > 0 its 3x3 convolutions: LoCon) and, with
train_text_encoder, on the text encoder(s)' attention and MLP layers, as kohya's trainer does.

Written as `NAME.safetensors` in the kohya format (`lora_unet_…`/`lora_te_…` names, the trained
alpha per layer: t2i's `<lora:NAME:w>`, the web UI, ComfyUI and diffusers' load_lora_weights read
it) and `diffusers/pytorch_lora_weights.safetensors` in diffusers' own peft format (alpha in the
`lora_adapter_metadata` header, as diffusers' save_lora_weights writes it).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

ADAPTER = "default"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")  # CLIPAttention and CLIPMLP


def unet_targets(unet: nn.Module, targets: str, with_conv: bool) -> tuple[list[str], list[str]]:
    """(linear and 1x1 layer names, 3x3 convolution names) of the UNet to put LoRA layers on."""
    linear, conv = [], []
    for name, module in unet.named_modules():
        in_transformer = ".attentions." in f".{name}"
        if in_transformer and isinstance(module, (nn.Linear, nn.Conv2d)):
            if targets == "transformer" and (isinstance(module, nn.Linear) or module.kernel_size == (1, 1)):
                linear.append(name)
            elif targets == "attention" and isinstance(module, nn.Linear) and name.endswith(ATTENTION):
                linear.append(name)
        elif with_conv and isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and any(
                part in name for part in (".resnets.", ".downsamplers.", ".upsamplers.")):
            conv.append(name)
    if not linear:
        raise ValueError("this UNet has no attention layers for LoRA to train")
    return linear, conv


def text_targets(encoder: nn.Module) -> list[str]:
    return [name for name, module in encoder.named_modules()
            if isinstance(module, nn.Linear) and name.endswith(TEXT_TARGETS)]


def _inject(module: nn.Module, names: list[str], rank: int, alpha: float,
            conv: tuple[list[str], int, float] | None = None) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    conv_names, conv_rank, conv_alpha = conv or ([], 0, 0.0)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names + conv_names, lora_dropout=0.0,
                        init_lora_weights=True,
                        rank_pattern={n: conv_rank for n in conv_names},
                        alpha_pattern={n: conv_alpha for n in conv_names})
    inject_adapter_in_model(config, module, adapter_name=ADAPTER)


def add_lora(model, options, train_text_encoder: bool) -> list[str]:
    """Freeze `model` and put trainable LoRA layers on it; returns the components it trains."""
    model.requires_grad_(False)
    alpha = float(options.alpha if options.alpha is not None else options.rank)
    conv_alpha = float(options.conv_alpha if options.conv_alpha is not None else options.conv_rank)
    linear, conv = unet_targets(model.unet, options.targets, options.conv_rank > 0)
    _inject(model.unet, linear, options.rank, alpha, (conv, options.conv_rank, conv_alpha))
    components = ["unet"]
    if train_text_encoder:
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(model, name, None)
            if encoder is not None:
                _inject(encoder, text_targets(encoder), options.rank, alpha)
                components.append(name)
    return components


def lora_layers(model, components: list[str]) -> dict[str, tuple]:
    """{"<component>.<module>": (down, up, alpha)} of the trained LoRA layers (peft's A, B)."""
    from peft.tuners.lora import LoraLayer

    layers = {}
    for component in components:
        for name, module in getattr(model, component).named_modules():
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
                layers[f"{component}.{name}"] = (module.lora_A[ADAPTER].weight.detach().float().cpu(),
                                                 module.lora_B[ADAPTER].weight.detach().float().cpu(),
                                                 float(module.lora_alpha[ADAPTER]))
    return layers


def family_of(model) -> str:
    """sd1, sd2 or sdxl; t2i's own models use SD 1.x names."""
    return getattr(model.config, "family", "sd1")


def save_lora(model, components: list[str], outdir: Path, name: str, metadata: dict[str, str],
              scale: float = 1.0, dtype: torch.dtype | None = None) -> Path:
    """Write OUTDIR/NAME.safetensors (kohya) and OUTDIR/diffusers/pytorch_lora_weights.safetensors.
    scale multiplies every layer's change (its up weights), so weight 1 applies `scale` times what
    was trained; dtype (e.g. float16) casts the written weights."""
    from t2i.checkpoints.atomic_write import write_state_dict
    from t2i.extra_networks.lora import kohya_state_dict

    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
    layers = {key: (cast(down), cast(up * scale), alpha) for key, (down, up, alpha) in
              lora_layers(model, components).items()}
    family = family_of(model)
    kohya = kohya_state_dict(layers, family=family, unet_config=model.unet.config)
    ranks = sorted({int(t.shape[0]) for k, t in kohya.items() if k.endswith(".lora_down.weight")})
    alphas = sorted({float(t) for k, t in kohya.items() if k.endswith(".alpha")})
    info = {"format": "pt", "ss_network_module": "networks.lora", "ss_network_dim": str(ranks[-1]),
            "ss_network_alpha": f"{alphas[-1]:g}",
            "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}.get(family, family),
            **metadata}
    path = outdir / f"{name}.safetensors"
    write_state_dict(path, kohya, info)  # atomic
    peft_state, adapter = {}, {}
    for key, (down, up, alpha) in layers.items():
        component, _, module = key.partition(".")
        peft_state[f"{key}.lora_A.weight"] = down.contiguous()
        peft_state[f"{key}.lora_B.weight"] = up.contiguous()
        adapter.setdefault(component, {"r": int(down.shape[0]), "lora_alpha": alpha, "target_modules": [],
                                       "rank_pattern": {}, "alpha_pattern": {}})
        entry = adapter[component]
        entry["target_modules"].append(module)
        if int(down.shape[0]) != entry["r"] or alpha != entry["lora_alpha"]:  # LoCon layers: their own rank
            entry["rank_pattern"][module], entry["alpha_pattern"][module] = int(down.shape[0]), alpha
    flat = {f"{component}.{k}": v for component, entry in adapter.items() for k, v in entry.items()}
    diffusers_path = outdir / "diffusers" / "pytorch_lora_weights.safetensors"
    diffusers_path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", "lora_adapter_metadata": json.dumps(flat, sort_keys=True)}
    write_state_dict(diffusers_path, peft_state, header)
    return path
