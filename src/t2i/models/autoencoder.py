"""A KL-regularised autoencoder on its own: the Stable Diffusion first stage without the rest.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", train two
kinds of first stage at several downsampling factors f: KL (a Gaussian posterior pulled weakly
towards N(0, I)) and VQ (a codebook, see t2i.models.vqgan). The KL model is diffusers'
`AutoencoderKL`, built exactly as the latent diffusion recipe builds its stage 1 (same
`VAEConfig`), so a trained one can be dropped into an LDM config of the same shape.

    ae = KLAutoencoder(KLAutoencoderConfig(resolution=64, vae=VAEConfig(block_out_channels=(32, 64, 64))))
    recon = ae.reconstruct(images)   # (B, 3, H, W) in [-1, 1] -> same shape, posterior mode
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from t2i.config import Resolution, check_model_size
from t2i.models.common import FamilyFileModel
from t2i.models.ldm import LDMConfig, VAEConfig, build_vae
from t2i.models.sizes import autoencoder_params

FILE_FAMILY = "autoencoder-kl"  # the t2i_family of its model file (t2i.checkpoints.family_file)


@dataclass
class KLAutoencoderConfig:
    resolution: Resolution = 64
    vae: VAEConfig = field(default_factory=VAEConfig)  # len(block_out_channels) - 1 downsamplings

    @property
    def downsample_factor(self) -> int:
        return self.vae.downsample_factor

    def __post_init__(self):
        if self.resolution % self.downsample_factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor "
                             f"{self.downsample_factor} of block_out_channels {self.vae.block_out_channels}")
        check_model_size("KL autoencoder", self.approx_params())

    def approx_params(self) -> int:
        return autoencoder_params(self.vae.block_out_channels, self.vae.layers_per_block, self.vae.latent_channels)


class KLAutoencoder(FamilyFileModel, nn.Module):
    """diffusers `AutoencoderKL` with a config t2i can embed in a model file."""

    kind, config_class = FILE_FAMILY, KLAutoencoderConfig

    def __init__(self, config: KLAutoencoderConfig, vae=None):
        super().__init__()
        self.config = config
        self.vae = vae or build_vae(LDMConfig(resolution=config.resolution, vae=config.vae))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode to the posterior mode (no sampling: deterministic) and decode."""
        return self.vae.decode(self.vae.encode(images).latent_dist.mode()).sample
