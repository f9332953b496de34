"""VQGAN: a vector-quantised autoencoder trained with an adversarial patch loss.

Esser, Rombach & Ommer 2021, "Taming Transformers for High-Resolution Image Synthesis". The
first stage is diffusers' `VQModel` (encoder, nearest-code quantiser, decoder); this file adds
the PatchGAN discriminator (Isola et al. 2017) and the VQGAN objective:

    L = |x - x̂|  (+ w_p · perceptual)                     reconstruction
      + ‖sg[E(x)] - z_q‖² + β ‖E(x) - sg[z_q]‖²           codebook + commitment (VQ-VAE)
      + λ · w_d · (-D(x̂))    once step ≥ disc_start        hinge GAN, generator side
    λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + 1e-4)         adaptive weight at the decoder's last layer

The perceptual term (LPIPS in the paper) needs pretrained VGG weights, and none ship offline:
it is off by default (`perceptual_weight: 0`). To use it, pass any module that maps two image
batches in [-1, 1] to per-image distances (e.g. an LPIPS network loaded from local weights) as
`VQGANLoss(config, perceptual=net)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import (BlockDepth, Codebook, Groups, Levels, Resolution, Width, above, at_least, between,
                        check_model_size)
from t2i.models.common import FamilyFileModel
from t2i.models.sizes import autoencoder_params


@dataclass
class VQGANConfig:
    resolution: Resolution = 64
    block_out_channels: Levels = (64, 128, 128)  # len - 1 downsamplings: 64 px -> 16x16 codes
    layers_per_block: BlockDepth = 1
    code_dim: Width = 32  # codebook vector width; low widths use more of the codebook (Yu et al. 2022)
    num_codes: Codebook = 512
    norm_num_groups: Groups = 32
    mid_attention: bool = True  # self-attention in the bottleneck, as in the paper

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def code_shape(self) -> tuple[int, int]:
        side = self.resolution // self.downsample_factor
        return side, side

    def __post_init__(self):
        if self.resolution % self.downsample_factor:
            raise ValueError(f"resolution {self.resolution} is not divisible by the downsampling factor "
                             f"{self.downsample_factor} of block_out_channels {self.block_out_channels}")
        if self.num_codes < 2:
            raise ValueError(f"num_codes must be at least 2, got {self.num_codes}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide every width "
                             f"{self.block_out_channels}")
        check_model_size("VQGAN", self.approx_params())

    def approx_params(self) -> int:
        return autoencoder_params(self.block_out_channels, self.layers_per_block, self.code_dim) + \
            self.num_codes * self.code_dim


@dataclass
class DiscriminatorConfig:
    channels: Width = 64
    # stride-2 convolutions; 3 gives 70x70 receptive fields (pix2pix's PatchGAN)
    layers: Annotated[int, between(1, 16)] = 3
    norm_groups: Groups = 8

    def __post_init__(self):
        widths = [self.channels * min(2 ** i, 8) for i in range(1, self.layers + 1)]  # as PatchDiscriminator builds
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"disc.norm_groups {self.norm_groups} must divide every width {widths}")


@dataclass
class VQGANLossConfig:
    rec_weight: Annotated[float, at_least(0)] = 1.0  # L1
    perceptual_weight: Annotated[float, at_least(0)] = 0.0  # needs a perceptual network passed in: none ships offline
    codebook_weight: Annotated[float, at_least(0)] = 1.0
    commitment_weight: Annotated[float, at_least(0)] = 0.25  # β
    disc_weight: Annotated[float, at_least(0)] = 0.8  # multiplies the adaptive weight λ (the paper's code uses 0.8)
    # generator step at which the discriminator starts (and its loss counts)
    disc_start: Annotated[int, at_least(0)] = 2000
    max_adaptive_weight: Annotated[float, above(0)] = 1e4


def build_vqmodel(config: VQGANConfig):
    from diffusers import VQModel

    n = len(config.block_out_channels)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        latent_channels=config.code_dim,
        vq_embed_dim=config.code_dim,
        num_vq_embeddings=config.num_codes,
        norm_num_groups=config.norm_num_groups,
        sample_size=config.resolution,
        mid_block_add_attention=config.mid_attention,
        scaling_factor=1.0,
    )


class Quantized(NamedTuple):
    z_q: torch.Tensor  # (B, D, h, w) straight-through: forward = codebook vectors, gradient -> encoder
    codes: torch.Tensor  # (B, h, w) long
    codebook_loss: torch.Tensor  # ‖sg[z_e] - e‖²: moves the codebook towards the encoder outputs
    commitment_loss: torch.Tensor  # ‖z_e - sg[e]‖²: keeps the encoder near its codes


class VQGANOutput(NamedTuple):
    recon: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


class VQGAN(FamilyFileModel, nn.Module):
    """diffusers `VQModel` plus code-level encode/decode. Images are (B, 3, H, W) in [-1, 1].
    Saved as one safetensors file, the config embedded (t2i.checkpoints.family_file)."""

    kind, config_class = "vqgan", VQGANConfig

    def __init__(self, config: VQGANConfig, vq=None):
        super().__init__()
        self.config = config
        self.vq = vq or build_vqmodel(config)

    @property
    def code_shape(self) -> tuple[int, int]:
        return self.config.code_shape

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def last_layer(self) -> nn.Parameter:
        """The decoder's output convolution: where the adaptive GAN weight compares gradients."""
        return self.vq.decoder.conv_out.weight

    def quantize(self, z_e: torch.Tensor) -> Quantized:
        # The quantiser finds the nearest codes; its own loss puts β on the codebook term (kept
        # for compatibility with old checkpoints, see diffusers' VectorQuantizer `legacy`), so the
        # two terms are computed here separately and weighted as in the paper.
        z_q, _, (_, _, indices) = self.vq.quantize(z_e)
        b, _, h, w = z_e.shape
        codes = indices.view(b, h, w)
        e = self.vq.quantize.embedding(codes).permute(0, 3, 1, 2)  # (B, D, h, w)
        codebook = F.mse_loss(e, z_e.detach())
        commitment = F.mse_loss(z_e, e.detach())
        return Quantized(z_q, codes, codebook, commitment)

    def forward(self, images: torch.Tensor) -> VQGANOutput:
        z_e = self.vq.encode(images).latents  # (B, D, h, w)
        q = self.quantize(z_e)
        recon = self.vq.decode(q.z_q, force_not_quantize=True).sample
        return VQGANOutput(recon, q.codes, q.codebook_loss, q.commitment_loss)

    @torch.no_grad()
    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, H/f, W/f) code indices."""
        return self.quantize(self.vq.encode(images).latents).codes

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) code indices -> (B, 3, h·f, w·f) images in [-1, 1]."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (batch, height, width), got shape {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got [{codes.min()}, {codes.max()}]")
        b, h, w = codes.shape
        z_q = self.vq.quantize.get_codebook_entry(codes.reshape(-1), (b, h, w, self.config.code_dim))
        return self.vq.decode(z_q, force_not_quantize=True).sample


class PatchDiscriminator(nn.Module):
    """PatchGAN: a stack of stride-2 convolutions giving one real/fake logit per image patch.

    GroupNorm instead of the original BatchNorm: no batch statistics, so a patch's score depends
    on its own image only (the real and fake passes cannot leak into each other) and train and
    eval modes behave the same."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        c = config.channels
        layers: list[nn.Module] = [nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = c
        for i in range(1, config.layers + 1):
            stride = 2 if i < config.layers else 1  # the last block keeps the resolution
            out = c * min(2 ** i, 8)
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.GroupNorm(config.norm_groups, out),
                       nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN initialisation, as pix2pix and the VQGAN code use
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, 1, h', w') patch logits


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: nn.Parameter,
                    max_weight: float = 1e4) -> torch.Tensor:
    """λ = ‖∇ rec‖ / (‖∇ gan‖ + 1e-4) at `last_layer` (Esser et al. 2021, eq. 7), detached: it
    makes the GAN term's gradient at the decoder output as large as the reconstruction's."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class VQGANLoss(nn.Module):
    """The two halves of the VQGAN objective; `perceptual` is an optional distance network."""

    def __init__(self, config: VQGANLossConfig | None = None, perceptual: nn.Module | None = None):
        super().__init__()
        config = config or VQGANLossConfig()
        if config.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs a perceptual network (e.g. LPIPS with local weights): "
                             "t2i ships none offline; pass VQGANLoss(config, perceptual=net) or set the weight to 0")
        self.config = config
        self.perceptual = perceptual
        if perceptual is not None:
            perceptual.requires_grad_(False).eval()

    def disc_active(self, step: int) -> bool:
        return step >= self.config.disc_start

    def generator_loss(self, model: VQGAN, out: VQGANOutput, images: torch.Tensor,
                       disc: nn.Module | None, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        rec = cfg.rec_weight * (images - out.recon).abs().mean()
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            rec = rec + cfg.perceptual_weight * self.perceptual(images, out.recon).mean()
        vq = cfg.codebook_weight * out.codebook_loss + cfg.commitment_weight * out.commitment_loss
        loss = rec + vq
        logs = {"rec": rec.item(), "codebook": out.codebook_loss.item(), "commit": out.commitment_loss.item()}
        if disc is not None and self.disc_active(step):
            gan = hinge_g_loss(disc(out.recon))
            lam = adaptive_weight(rec, gan, model.last_layer, cfg.max_adaptive_weight)
            loss = loss + cfg.disc_weight * lam * gan
            logs.update(g_gan=gan.item(), lambda_=lam.item())
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(self, disc: nn.Module, images: torch.Tensor,
                           recon: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        real, fake = disc(images), disc(recon.detach())
        loss = hinge_d_loss(real, fake)
        return loss, {"d_loss": loss.item(), "d_real": real.mean().item(), "d_fake": fake.mean().item()}


def usage_from_codes(codes: torch.Tensor, num_codes: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity exp(H) of the code histogram)."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=num_codes).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return (counts > 0).sum().item() / num_codes, math.exp(entropy)


@torch.no_grad()
def codebook_usage(model: VQGAN, images: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """Codebook usage on `images` (B, 3, H, W) in [-1, 1]: (fraction of codes used, perplexity).

    Perplexity is the effective number of codes: num_codes when all are used equally, 1 when
    everything maps to one code (codebook collapse)."""
    device = next(model.parameters()).device
    codes = torch.cat([model.encode_codes(images[i:i + batch_size].to(device)).cpu()
                       for i in range(0, len(images), batch_size)])
    return usage_from_codes(codes, model.num_codes)
