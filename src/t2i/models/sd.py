"""Stable Diffusion 1.x / 2.x / SDXL models loaded from users' files, behind the same small
interface as t2i's own LatentDiffusion, so every pipeline runs them unchanged:

    model.encode_prompts(["a cat"])   # (B, T, D) text context for the UNet
    model.unet, model.vae, model.tokenizer, model.text_encoder
    model.decode_latents(z)           # scaled latents -> images in [-1, 1]
    model.scheduler_config()          # the DDPM training schedule as diffusers scheduler kwargs

The parts are diffusers / transformers modules; building them from files lives in
t2i.checkpoints.single_file (models never do I/O).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from t2i.config import Resolution, above, between
from t2i.diffusion.text_states import final_layer_norm, text_hidden_states
from t2i.models.ldm import VAELatents
from t2i.models.text import tokenize

FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class SDModelConfig:
    family: Literal["sd1", "sd2", "sdxl"] = "sd1"
    resolution: Resolution = 512  # the training resolution: default width and height
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # v: SD 2.x 768 models
    scaling_factor: Annotated[float, above(0)] = 0.18215  # latents * scaling_factor have unit variance (SDXL: 0.13025)
    # the web UI's "Clip skip": 1 = last text encoder layer, 2 = the one before, ...
    clip_skip: Annotated[int, between(1, 64)] = 1
    inpainting: bool = False  # 9-channel UNet input: latents + mask + masked-image latents

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.clip_skip < 1:
            raise ValueError(f"clip_skip must be >= 1 (1 = last layer), got {self.clip_skip}")

    def to_dict(self) -> dict:
        return asdict(self)


_final_layer_norm = final_layer_norm  # the one definition lives in t2i.diffusion.text_states


class StableDiffusionModel(VAELatents, nn.Module):
    """The parts of a Stable Diffusion checkpoint plus what the file itself cannot say."""

    def __init__(self, config: SDModelConfig, *, tokenizer, text_encoder, unet, vae, scheduler_config: dict,
                 tokenizer_2=None, text_encoder_2=None, notes: tuple[str, ...] = ()):
        super().__init__()
        if (config.family == "sdxl") != (text_encoder_2 is not None):
            raise ValueError("SDXL models need text_encoder_2 and tokenizer_2; SD 1.x/2.x models have one encoder")
        self.config = config
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.text_encoder, self.text_encoder_2 = text_encoder, text_encoder_2
        self.unet, self.vae = unet, vae
        self.tiny_decoder: nn.Module | None = None  # an optional fast approximate decoder (t2i.speedups)
        self._scheduler_config = {**scheduler_config, "prediction_type": config.prediction_type}
        self.notes = tuple(notes)  # what loading assumed, for the user (e.g. epsilon vs v for SD 2.x)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def scheduler_config(self) -> dict:
        return dict(self._scheduler_config)

    def _hidden(self, tokenizer, text_encoder, prompts: list[str], skip: int):
        """(hidden states `skip` layers from the end (1 = last), encoder output)."""
        ids = tokenize(tokenizer, prompts).to(self.device)
        out = text_encoder(ids, output_hidden_states=skip > 1)
        return (out.last_hidden_state if skip == 1 else out.hidden_states[-skip]), out

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(B, T, D) text context as the original models condition on it.

        SD 1.x/2.x: the encoder's last layer (SD 2.x's file already ends at OpenCLIP's penultimate
        layer); clip skip N takes hidden states N layers from the end through the final layer norm,
        as the web UI does. SDXL: both encoders' penultimate hidden states, concatenated."""
        if self.config.family == "sdxl":
            return self.encode_prompts_sdxl(prompts)[0]
        ids = tokenize(self.tokenizer, prompts).to(self.device)
        return text_hidden_states(self.text_encoder, ids, self.config.clip_skip)  # as PromptEncoder does

    def encode_prompts_sdxl(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: ((B, T, 768 + 1280) context, (B, 1280) pooled projection of the second encoder)."""
        if self.config.family != "sdxl":
            raise ValueError(f"encode_prompts_sdxl needs an SDXL model, this one is {self.config.family}")
        skip = self.config.clip_skip + 1  # SDXL's default is already the penultimate layer
        first, _ = self._hidden(self.tokenizer, self.text_encoder, prompts, skip)
        second, out = self._hidden(self.tokenizer_2, self.text_encoder_2, prompts, skip)
        return torch.cat([first, second], dim=-1), out.text_embeds


