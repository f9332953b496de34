"""A DCGAN-style GAN (Radford et al. 2016, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks"), unconditional or class-conditional.

    gan = GAN(GANConfig(resolution=64, class_names=("red circle", ...)))
    fake = gan.generator(z, labels)                 # (B, z_dim) -> (B, 3, 64, 64) in [-1, 1]
    logits = gan.discriminator(fake, labels)        # (B,)
    images = sample(gan, n=16, seed=0, class_name="red circle")

Generator: z (plus a class embedding) -> a 4x4 map by a transposed conv, then stride-2
transposed convs double the size up to `resolution`. Discriminator: the mirror image with
stride-2 convs and LeakyReLU; class conditioning by projection (Miyato & Koyama 2018, "cGANs
with Projection Discriminator"): logit = w·h + embed(y)·h.

Departures from the paper, and why: GroupNorm instead of BatchNorm in the generator (batch
statistics would make image i depend on the rest of its batch, breaking seed-per-image
reproducibility, and their running averages are not covered by the trainer's EMA); no
normalisation in the discriminator (the optional R1 penalty differentiates through it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import ClassNames, Groups, Resolution, Width, check_model_size
from t2i.models.common import FamilyFileModel, check_seed_count, per_image_normal, resolve_class, to_pil_images

FAMILY = "gan"


@dataclass
class GANConfig:
    resolution: Resolution = 64  # square; 4 * 2^k: the generator doubles a 4x4 map k times
    z_dim: Width = 128  # noise dimensions; more than the data's degrees of freedom is enough
    channels: Width = 32  # width at full resolution; doubles at each halving of the size ...
    max_channels: Width = 256  # ... up to this cap (the 4x4 end otherwise costs most parameters)
    norm_groups: Groups = 8  # GroupNorm groups in the generator; must divide every width
    class_names: ClassNames = ()  # empty: unconditional; set from the data by the recipe
    class_embed_dim: Width = 32  # generator: a class embedding of this size joins z

    def __post_init__(self):
        self.class_names = tuple(self.class_names)
        levels = math.log2(self.resolution / 4) if self.resolution >= 8 else -1
        if levels < 1 or not levels.is_integer():
            raise ValueError(f"GAN resolution must be 4 * 2^k (8, 16, 32, 64, 128, ...), got {self.resolution}")
        if any(w % self.norm_groups for w in self.widths()):
            raise ValueError(f"norm_groups={self.norm_groups} must divide every width {self.widths()}")
        check_model_size("GAN", self.approx_params())

    def approx_params(self) -> int:
        """Generator and discriminator: 4x4 (transposed) convolutions between widths, the 3x3 RGB
        ends, the discriminator's head, the class embeddings."""
        w, n = self.widths(), self.num_classes
        convs = sum(16 * a * b for a, b in zip(w[:-1], w[1:]))
        z = self.z_dim + (self.class_embed_dim if n else 0)
        return 16 * z * w[0] + 2 * convs + 54 * w[-1] + 16 * w[0] + n * (self.class_embed_dim + 16 * w[0])

    @property
    def levels(self) -> int:
        return int(math.log2(self.resolution // 4))

    def widths(self) -> list[int]:
        """Channels from the 4x4 map (first) to full resolution (last)."""
        return [min(self.channels * 2 ** (self.levels - i), self.max_channels) for i in range(self.levels + 1)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths()
        in_dim = cfg.z_dim + (cfg.class_embed_dim if cfg.num_classes else 0)
        self.class_embed = nn.Embedding(cfg.num_classes, cfg.class_embed_dim) if cfg.num_classes else None
        self.stem = nn.Sequential(  # (B, in_dim, 1, 1) -> (B, w0, 4, 4)
            nn.ConvTranspose2d(in_dim, w[0], 4, 1, 0), nn.GroupNorm(cfg.norm_groups, w[0]), nn.ReLU())
        self.ups = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(a, b, 4, 2, 1), nn.GroupNorm(cfg.norm_groups, b), nn.ReLU())
            for a, b in zip(w[:-1], w[1:]))  # each doubles H and W
        self.to_rgb = nn.Conv2d(w[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this generator is class-conditional: pass labels (B,)")
            z = torch.cat([z, self.class_embed(labels)], dim=1)  # (B, z_dim + E)
        h = self.stem(z[:, :, None, None])  # (B, w0, 4, 4)
        for up in self.ups:
            h = up(h)  # (B, w_i, 4 * 2^i, 4 * 2^i)
        return torch.tanh(self.to_rgb(h))  # (B, 3, R, R) in [-1, 1]


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths()[::-1]  # full resolution first
        self.from_rgb = nn.Sequential(nn.Conv2d(3, w[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 4, 2, 1), nn.LeakyReLU(0.2)) for a, b in zip(w[:-1], w[1:]))
        features = w[-1] * 16
        self.head = nn.Linear(features, 1)
        self.class_embed = nn.Embedding(cfg.num_classes, features) if cfg.num_classes else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-2:] != (self.cfg.resolution, self.cfg.resolution):
            raise ValueError(f"discriminator takes {self.cfg.resolution}x{self.cfg.resolution} images, "
                             f"got {tuple(x.shape[-2:])}")
        h = self.from_rgb(x)  # (B, w0, R, R)
        for down in self.downs:
            h = down(h)  # halves H and W
        h = h.flatten(1)  # (B, w_last * 16)
        logits = self.head(h).squeeze(1)  # (B,)
        if self.class_embed is not None:
            if labels is None:
                raise ValueError("this discriminator is class-conditional: pass labels (B,)")
            logits = logits + (self.class_embed(labels) * h).sum(dim=1)  # projection term
        return logits


class GAN(FamilyFileModel, nn.Module):
    """Generator and discriminator with the config they were built from; one file on disk."""

    kind, config_class = FAMILY, GANConfig
    freeze_on_load = False  # loaded models of this family have always kept requires_grad

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)


# -- losses ----------------------------------------------------------------------------------
LOSSES = ("nonsaturating", "hinge")


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Discriminator loss. nonsaturating: the original GAN's cross-entropy (Goodfellow et al.
    2014); hinge: Lim & Ye 2017 / Miyato et al. 2018."""
    if kind == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {LOSSES}")


def g_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Generator loss: -log D(G(z)) (non-saturating, Goodfellow et al. 2014) or -D(G(z)) (hinge)."""
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {LOSSES}")


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """E ||grad_x D(x)||^2 on real data (Mescheder et al. 2018, "Which Training Methods for GANs
    do actually Converge?"); `real_images` must require grad. Multiply by gamma / 2."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


# -- sampling --------------------------------------------------------------------------------
@torch.no_grad()
def sample(model: GAN, n: int, seed: int, class_name: str | int | None = None,
           width: int | None = None, height: int | None = None, batch_size: int = 64) -> list:
    """n images; image i from z drawn with seed + i. A conditional model draws `class_name` for
    every image, or class i mod K for image i when None. The generator makes only its trained
    size (its 4x4 start is a fixed-size map): other sizes raise."""
    cfg = model.config
    for what, value in (("width", width), ("height", height)):
        if value is not None and value != cfg.resolution:
            raise ValueError(f"a GAN generates only its trained size {cfg.resolution}x{cfg.resolution}; "
                             f"got {what} {value}")
    seeds = check_seed_count(n, seed)
    labels = resolve_class(cfg.class_names, class_name, n)
    z = per_image_normal(seeds, (cfg.z_dim,))  # (n, z_dim)
    device = next(model.parameters()).device
    generator = model.generator.eval()
    images = []
    for i in range(0, n, batch_size):
        y = labels[i:i + batch_size].to(device) if labels is not None else None
        images += to_pil_images(generator(z[i:i + batch_size].to(device), y))
    return images
