"""A convolutional variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational
Bayes") over pixels, with a vector latent and a tunable KL weight (beta-VAE, Higgins et al. 2017).

    vae = ConvVAE(ConvVAEConfig(resolution=64, latent_dim=64))
    recon, mu, logvar = vae(x, eps)                 # x (B, 3, 64, 64) in [-1, 1], eps (B, 64)
    loss, rec, kl = elbo_loss(x, recon, mu, logvar, kl_weight=1.0)
    images = sample(vae, n=16, seed=0)              # decode z ~ N(0, I)
    frames = interpolate(vae, image_a, image_b, n=8)

The latent is a vector (not a spatial map as in latent diffusion's autoencoder), so that a
sample from the N(0, I) prior decodes to one coherent image; it fixes the image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from t2i.config import Groups, Levels, Resolution, Width, check_model_size
from t2i.models.common import FamilyFileModel, check_seed_count, from_pil_images, per_image_normal, to_pil_images

FAMILY = "vae"


@dataclass
class ConvVAEConfig:
    resolution: Resolution = 64  # square; divisible by 2^len(channels)
    channels: Levels = (32, 64, 128, 256)  # encoder widths, one stride-2 stage each
    latent_dim: Width = 64  # enough for shapes' few factors (colours, shape, size, position)
    norm_groups: Groups = 8  # GroupNorm groups; must divide every width

    def __post_init__(self):
        self.channels = tuple(self.channels)
        factor = 2 ** len(self.channels)
        if not self.channels or self.resolution % factor or self.resolution < factor:
            raise ValueError(f"VAE resolution {self.resolution} must be a multiple of 2^{len(self.channels)} "
                             f"(one halving per entry of channels {self.channels})")
        if any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every width {self.channels}")
        check_model_size("VAE", self.approx_params())

    def approx_params(self) -> int:
        """4x4 stride-2 convolutions both ways, the 3x3 RGB ends, and the three linear maps
        between the flattened bottom feature map and the latent (which grow with resolution^2)."""
        c = self.channels
        convs = sum(16 * a * b for a, b in zip((c[0], *c[:-1]), c))  # the decoder mirrors the encoder
        return 2 * convs + 54 * c[0] + 3 * c[-1] * self.bottom ** 2 * self.latent_dim

    @property
    def bottom(self) -> int:
        """Side of the smallest feature map (the encoder's last, the decoder's first)."""
        return self.resolution // 2 ** len(self.channels)


def _block(conv: nn.Module, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.GroupNorm(groups, out_channels), nn.SiLU())


class ConvVAE(FamilyFileModel, nn.Module):
    kind, config_class = FAMILY, ConvVAEConfig
    freeze_on_load = False  # loaded models of this family have always kept requires_grad

    def __init__(self, config: ConvVAEConfig):
        super().__init__()
        self.config = cfg = config
        c, g, s = cfg.channels, cfg.norm_groups, cfg.bottom
        self.encoder = nn.Sequential(
            _block(nn.Conv2d(3, c[0], 3, padding=1), c[0], g),
            *(_block(nn.Conv2d(a, b, 4, 2, 1), b, g) for a, b in zip((c[0], *c[:-1]), c)),
            nn.Flatten(),  # (B, c[-1] * s * s)
        )
        self.to_moments = nn.Linear(c[-1] * s * s, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, c[-1] * s * s)
        rev = c[::-1]
        self.decoder = nn.Sequential(
            *(_block(nn.ConvTranspose2d(a, b, 4, 2, 1), b, g) for a, b in zip(rev, (*rev[1:], rev[-1]))),
            nn.Conv2d(rev[-1], 3, 3, padding=1),  # the Gaussian decoder's mean; unbounded
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, R, R) -> mu, logvar, each (B, latent_dim)."""
        r = self.config.resolution
        if x.ndim != 4 or x.shape[1:] != (3, r, r):
            raise ValueError(f"the VAE encodes (B, 3, {r}, {r}) images, got shape {tuple(x.shape)}")
        mu, logvar = self.to_moments(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp(logvar) finite early in training

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 3, R, R), roughly in [-1, 1]."""
        c, s = self.config.channels[-1], self.config.bottom
        return self.decoder(self.from_latent(z).view(-1, c, s, s))

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        """Reconstruct through the reparameterisation z = mu + sigma * eps (eps None: z = mu).

        eps comes from the caller so that training randomness is a function of (seed, step)."""
        mu, logvar = self.encode(x)
        z = mu if eps is None else mu + (0.5 * logvar).exp() * eps.to(mu)
        return self.decode(z), mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per image, summed over latent dimensions: (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)


def elbo_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              kl_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction, KL): per-image sum of squared errors + kl_weight * KL, averaged
    over the batch and divided by the number of pixel values (3 R^2) so the loss is O(1) at any
    size; the division rescales both terms alike, so kl_weight keeps its beta-VAE meaning.
    kl_weight < 1 gives sharper reconstructions and a less regular latent space."""
    d = x[0].numel()
    rec = (recon - x).pow(2).flatten(1).sum(1).mean() / d
    kl = kl_divergence(mu, logvar).mean() / d
    return rec + kl_weight * kl, rec, kl


@torch.no_grad()
def sample(model: ConvVAE, n: int, seed: int, width: int | None = None, height: int | None = None,
           batch_size: int = 64) -> list:
    """n images decoded from z ~ N(0, I); image i from z drawn with seed + i."""
    cfg = model.config
    for what, value in (("width", width), ("height", height)):
        if value is not None and value != cfg.resolution:
            raise ValueError(f"a VAE with a vector latent decodes only its trained size "
                             f"{cfg.resolution}x{cfg.resolution}; got {what} {value}")
    z = per_image_normal(check_seed_count(n, seed), (cfg.latent_dim,))  # (n, latent_dim)
    device = next(model.parameters()).device
    model.eval()
    return [im for i in range(0, n, batch_size) for im in to_pil_images(model.decode(z[i:i + batch_size].to(device)))]


@torch.no_grad()
def interpolate(model: ConvVAE, image_a, image_b, n: int = 8) -> list:
    """n frames decoded along the straight line from image_a's latent (posterior mean) to
    image_b's; the first and last frames are the two reconstructions. Images are PIL images
    (centre-cropped and resized to the model's resolution)."""
    if n < 2:
        raise ValueError(f"interpolation needs n >= 2 frames, got {n}")
    device = next(model.parameters()).device
    model.eval()
    x = from_pil_images([image_a, image_b], model.config.resolution).to(device)
    mu, _ = model.encode(x)  # (2, latent_dim)
    t = torch.linspace(0, 1, n, device=device)[:, None]  # (n, 1)
    z = (1 - t) * mu[0] + t * mu[1]  # (n, latent_dim)
    return to_pil_images(model.decode(z))
