"""Bounds on the diffusers / transformers component configs of a Stable Diffusion model (a
diffusers folder's `*/config.json`, or the `t2i_sd_configs` a t2i single file embeds), checked
before a module is built.

These configs come from files, so they are untrusted like t2i's own embedded configs
(t2i.config): `layers_per_block: 100000` would make diffusers build a hundred thousand blocks,
and even with empty weights that costs minutes and gigabytes. Only the size-like keys are
checked, with t2i.config's limits (far above SDXL); every other key is for diffusers and
transformers to judge.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from t2i.config import BlockDepth, Groups, Heads, Levels, Resolution, Width, between, check_value, count
from t2i.errors import ModelConfigError

Depths = Annotated[tuple[BlockDepth, ...], count(1, 8)]
BlockTypes = Annotated[tuple[str, ...], count(1, 8)]  # one per level: their count is the depth of the UNet
Channels = Annotated[int, between(1, 64)]  # image / latent channels in and out

_UNET_VAE = {
    "block_out_channels": Levels,
    "down_block_types": BlockTypes,
    "up_block_types": BlockTypes,
    "layers_per_block": BlockDepth | Depths,
    "norm_num_groups": Groups | None,
    "in_channels": Channels,
    "out_channels": Channels,
    "sample_size": Resolution | tuple[Resolution, Resolution] | None,
}
LIMITS: dict[str, dict[str, Any]] = {
    "unet": {
        **_UNET_VAE,
        "transformer_layers_per_block": BlockDepth | Depths,  # SDXL: up to 10
        "attention_head_dim": Heads | Annotated[tuple[Heads, ...], count(1, 8)] | None,
        "num_attention_heads": Heads | Annotated[tuple[Heads, ...], count(1, 8)] | None,
        "cross_attention_dim": Width | Annotated[tuple[Width, ...], count(1, 8)] | None,
        "addition_time_embed_dim": Width | None,
        "projection_class_embeddings_input_dim": Width | None,
        "num_class_embeds": Annotated[int, between(1, 100_000)] | None,
    },
    "vae": {**_UNET_VAE, "latent_channels": Channels},
    "text_encoder": {
        "hidden_size": Width,
        "intermediate_size": Annotated[int, between(1, 32768)],
        "num_hidden_layers": Annotated[int, between(1, 128)],
        "num_attention_heads": Heads,
        "vocab_size": Annotated[int, between(1, 1 << 20)],
        "max_position_embeddings": Annotated[int, between(1, 1 << 16)],
        "projection_dim": Width | None,
    },
}


def check_component_config(part: str, config: Any, source: str | Path) -> None:
    """ModelConfigError naming `source` and the key when a size in `config` (the `part`: unet,
    vae, text_encoder or text_encoder_2) is not an integer within t2i's limits."""
    if not isinstance(config, dict):
        raise ModelConfigError(f"{source}: the {part} config is not a JSON object; the file is damaged")
    for key, hint in LIMITS[part.removesuffix("_2")].items():
        if key in config:
            check_value(config[key], hint, f"{source}: {key}", ModelConfigError)


def check_sd_configs(configs: dict, source: str | Path) -> None:
    """Every component config of a Stable Diffusion model (a dict of part -> config)."""
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if part in configs:
            check_component_config(part, configs[part], f"{source}: {part}")
