"""Latent diffusion in the Stable Diffusion architecture, from small typed configs.

Components (all diffusers / transformers classes, so the saved folder is a regular diffusers
Stable Diffusion folder): AutoencoderKL first stage, UNet2DConditionModel with cross-attention
on the CLIP text model's last hidden states, the real CLIP tokenizer, a DDPM noise schedule.
Saved and loaded as that folder by t2i.checkpoints.diffusers_folder (save_ldm_folder, load_ldm_folder).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import torch
from torch import nn

from t2i.config import (BlockDepth, Beta, ClassNames, Groups, Heads, Levels, LevelFlags, Resolution, Timesteps, Width,
                        above, between, check_model_size, from_dict)
from t2i.models.ldm_conditioning import ClassTokens, LayoutChannels, LayoutTokens, RetrievalTokens
from t2i.models.sizes import autoencoder_params, cross_transformer, unet_params
from t2i.models.text import TextEncoderConfig, build_text_encoder, load_tokenizer, tokenize
from t2i.models.vae_precision import run_vae


@dataclass
class VAEConfig:
    block_out_channels: Levels = (32, 64, 64)  # len - 1 downsamplings: 3 blocks = factor 4
    layers_per_block: BlockDepth = 1
    latent_channels: Width = 4
    norm_num_groups: Groups = 16

    def __post_init__(self):
        self.block_out_channels = tuple(self.block_out_channels)
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"vae.norm_num_groups {self.norm_num_groups} must divide every width "
                             f"{self.block_out_channels}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class UNetConfig:
    block_out_channels: Levels = (32, 64, 128)
    cross_attention: LevelFlags = (False, True, True)  # per resolution level, top first
    layers_per_block: BlockDepth = 1
    attention_heads: Heads = 4
    norm_num_groups: Groups = 16

    def __post_init__(self):
        self.block_out_channels, self.cross_attention = tuple(self.block_out_channels), tuple(self.cross_attention)
        if len(self.cross_attention) != len(self.block_out_channels):
            raise ValueError("unet.cross_attention needs one flag per entry of unet.block_out_channels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"unet.norm_num_groups {self.norm_num_groups} must divide every width "
                             f"{self.block_out_channels}")
        # attention widths (the flagged levels and the middle block) split evenly into heads
        attended = [c for c, a in zip(self.block_out_channels, self.cross_attention) if a]
        if any(c % self.attention_heads for c in attended + [self.block_out_channels[-1]]):
            raise ValueError(f"unet.attention_heads {self.attention_heads} must divide the width of every "
                             f"attention level and the last level {self.block_out_channels}")


@dataclass
class NoiseScheduleConfig:
    """DDPM training schedule.

    Default: the original DDPM linear betas (Ho et al. 2020). Its last step keeps less signal
    (sqrt(alpha_bar_T) ~ 0.006) than SD's scaled-linear (~ 0.07), which matters for small
    latents: with SD's schedule a model learns to read the background colour from the noise.
    """

    num_train_timesteps: Timesteps = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: Beta = 0.0001
    beta_end: Beta = 0.02
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    # trailing: sampling starts at the last training step
    timestep_spacing: Literal["trailing", "leading", "linspace"] = "trailing"

    def to_diffusers(self) -> dict:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "prediction_type": self.prediction_type,
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 0 if self.timestep_spacing == "trailing" else 1,
            "timestep_spacing": self.timestep_spacing,
        }


@dataclass
class LDMConfig:
    resolution: Resolution = 64
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    scaling_factor: Annotated[float, above(0)] = 1.0  # latents * scaling_factor have unit variance; set after stage 1
    # What the UNet cross-attends to (t2i.models.ldm_conditioning): text (the prompt), class (one
    # learned token per class, + a null class for guidance), none (unconditional: one learned
    # token), layout (the prompt, then one token per (class, box) object). The tokens of class,
    # none and layout are text.hidden_size wide; only text and layout models have a text encoder.
    # retrieval (RDM): one token per retrieved neighbour's CLIP image embedding (t2i.training.ldm_retrieval).
    conditioning: Literal["text", "class", "none", "layout", "retrieval"] = "text"
    class_names: ClassNames = ()  # class and layout models: index = class id (set by the recipe from the data)
    max_objects: Annotated[int, between(1, 64)] = 2  # layout models: object tokens per image
    # layout models: the boxes also as extra UNet input channels, one per class (t2i.models.ldm_conditioning)
    layout_map: bool = False
    retrieval_k: Annotated[int, between(1, 64)] = 4  # retrieval models: neighbours per image
    retrieval_dim: Annotated[int, between(0, 8192)] = 0  # retrieval models: CLIP width (the recipe reads the database's)

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        if self.class_names and self.conditioning in ("text", "none", "retrieval"):
            raise ValueError(f"class_names are for class and layout models; this one is conditioned on "
                             f"{self.conditioning!r}")
        if self.layout_map and self.conditioning != "layout":
            raise ValueError(f"layout_map is for layout models; this one is conditioned on {self.conditioning!r}")
        check_model_size("latent diffusion", self.approx_params())

    @property
    def map_channels(self) -> int:
        """The UNet's input channels beyond the latents: one per class for layout-map models."""
        return len(self.class_names) if self.layout_map else 0

    @property
    def has_text_encoder(self) -> bool:
        return self.conditioning in ("text", "layout")

    def approx_params(self) -> int:
        u, v, t = self.unet, self.vae, self.text
        unet = unet_params(u.block_out_channels, u.layers_per_block, u.cross_attention, v.latent_channels,
                           cross_transformer(t.hidden_size))
        vae = autoencoder_params(v.block_out_channels, v.layers_per_block, v.latent_channels)
        tokens = {"text": 0, "class": (len(self.class_names) + 1) * t.hidden_size, "none": t.hidden_size,
                  "layout": LayoutTokens.approx_params(len(self.class_names), t.hidden_size),
                  "retrieval": RetrievalTokens.approx_params(self.retrieval_dim, t.hidden_size)}[self.conditioning]
        map_input = 9 * self.map_channels * u.block_out_channels[0]  # the wider first convolution
        return unet + map_input + vae + tokens + (t.approx_params() if self.has_text_encoder else 0)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downsample_factor

    def to_dict(self) -> dict:
        return asdict(self)


    @classmethod
    def from_dict(cls, data: dict, where: str = "model") -> "LDMConfig":
        """Strictly (t2i.config.from_dict): a ConfigError names `where` and the field."""
        return from_dict(cls, data, where=where)


def build_vae(config: LDMConfig):
    from diffusers import AutoencoderKL

    n = len(config.vae.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae.block_out_channels,
        layers_per_block=config.vae.layers_per_block,
        latent_channels=config.vae.latent_channels,
        norm_num_groups=config.vae.norm_num_groups,
        sample_size=config.resolution,
        scaling_factor=config.scaling_factor,
    )


def build_conditioner(config: LDMConfig) -> nn.Module | None:
    """The learned tokens of a class, unconditional or layout model; None for text models."""
    dim = config.text.hidden_size
    if config.conditioning == "class":
        if not config.class_names:
            raise ValueError("a class-conditional latent diffusion model needs class_names (the recipe sets them "
                             "from the data)")
        return ClassTokens(len(config.class_names), dim)
    if config.conditioning == "none":
        return ClassTokens(0, dim)
    if config.conditioning == "layout":
        if not config.class_names:
            raise ValueError("a layout model needs class_names (the recipe sets them from the data)")
        return LayoutTokens(len(config.class_names), dim, config.max_objects)
    if config.conditioning == "retrieval":
        if not config.retrieval_dim:
            raise ValueError("a retrieval model needs retrieval_dim, its database's CLIP width (the recipe sets it "
                             "from retrieval_database)")
        return RetrievalTokens(config.retrieval_dim, dim)
    return None


def build_unet(config: LDMConfig):
    from diffusers import UNet2DConditionModel

    u = config.unet
    if len(u.cross_attention) != len(u.block_out_channels):
        raise ValueError("unet.cross_attention needs one flag per entry of unet.block_out_channels")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in u.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.cross_attention))
    return UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=config.vae.latent_channels + config.map_channels,
        out_channels=config.vae.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        cross_attention_dim=config.text.hidden_size,
        attention_head_dim=u.attention_heads,  # diffusers' name for the number of heads here
        norm_num_groups=u.norm_num_groups,
    )


class VAELatents:
    """Images <-> scaled latents through `self.vae` and `self.config.scaling_factor`; shared by
    t2i's own models and the Stable Diffusion adapter (t2i.models.sd)."""

    def encode_images(self, images: torch.Tensor, sample: bool = True, generator=None) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> scaled latents (B, C, H/f, W/f)."""
        # a float16 VAE that overflows is run again in float32 (t2i.models.vae_precision)
        dist = run_vae(self.vae, lambda x: self.vae.encode(x).latent_dist, images, lambda d: d.mean)
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]; through `tiny_decoder` when one is set (a TAESD
        decoder, which takes the scaled latents as they are: t2i.speedups.use_tiny_decoder)."""
        tiny = getattr(self, "tiny_decoder", None)  # declared by LatentDiffusion and the SD adapter only
        if tiny is not None:
            return tiny(latents)
        return run_vae(self.vae, lambda z: self.vae.decode(z / self.config.scaling_factor).sample, latents)


class LatentDiffusion(VAELatents, nn.Module):
    """The four parts of a Stable Diffusion model plus the config they were built from."""

    def __init__(self, config: LDMConfig, tokenizer=None, text_encoder=None, unet=None, vae=None, conditioner=None):
        super().__init__()
        self.config = config
        text = config.has_text_encoder
        self.tokenizer = (tokenizer or load_tokenizer(max_length=config.text.max_length)) if text else None
        self.text_encoder = (text_encoder or build_text_encoder(config.text)) if text else None
        self.unet = unet or build_unet(config)
        self.vae = vae or build_vae(config)
        # class / none / layout tokens (t2i.models.ldm_conditioning); None for text models
        self.conditioner = conditioner or build_conditioner(config)
        self.tiny_decoder: nn.Module | None = None  # an optional fast approximate decoder (t2i.speedups)

    @property
    def vae_scale_factor(self) -> int:
        return self.config.vae.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.config.vae.latent_channels

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, T, D) last hidden states of the text encoder, as SD's UNet consumes them."""
        if self.text_encoder is None:
            raise ValueError(f"this latent diffusion model is conditioned on {self.config.conditioning!r}, not text")
        ids = tokenize(self.tokenizer, prompts).to(self.device)
        return self.text_encoder(ids).last_hidden_state

    def class_context(self, labels: torch.Tensor | None, n: int = 1) -> torch.Tensor:
        """(B, 1, D) tokens of class labels (B,) for class models; None (or a `none` model): the
        null class, n of them."""
        if self.config.conditioning not in ("class", "none"):
            raise ValueError(f"class tokens need a class or unconditional model, this one is "
                             f"{self.config.conditioning!r}")
        if labels is None:
            labels = torch.full((n,), self.conditioner.null_class)
        return self.conditioner(labels)

    def layout_context(self, prompts: list[str], objects: torch.Tensor) -> torch.Tensor:
        """(B, T + M, D): the prompts' text states, then the object tokens of `objects` (B, M, 5)."""
        if self.config.conditioning != "layout":
            raise ValueError(f"a layout needs a layout model, this one is conditioned on {self.config.conditioning!r}")
        return torch.cat([self.encode_prompts(prompts), self.conditioner(objects)], dim=1)

    def layout_unet(self, objects: torch.Tensor, batch_size: int) -> nn.Module:
        """The UNet to sample `objects` (1 or B, M, 5) with: this one, or for layout-map models the
        UNet with their map appended to every call's input (LayoutChannels)."""
        if not self.config.layout_map:
            return self.unet
        return LayoutChannels(self.unet, objects, len(self.config.class_names), batch_size)

    def retrieval_context(self, embeddings: torch.Tensor | None, n: int = 1, tokens: int | None = None) -> torch.Tensor:
        """(B, T, D) tokens of CLIP embeddings (B, T, E) for retrieval models; None: the null
        tokens (n rows of `tokens`, default retrieval_k), the unconditional side of guidance."""
        if self.config.conditioning != "retrieval":
            raise ValueError(f"retrieved neighbours need a retrieval model, this one is conditioned on "
                             f"{self.config.conditioning!r}")
        if embeddings is None:
            return self.conditioner.null(n, tokens or self.config.retrieval_k)
        return self.conditioner(embeddings)

    def scheduler_config(self) -> dict:
        return self.config.schedule.to_diffusers()

