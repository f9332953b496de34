"""How well does an autoencoder reconstruct held-out images? PSNR, SSIM and a feature distance.

    ae = load_autoencoder("runs/ae-kl-f8")          # or "default", a model folder, a .safetensors file
    images = heldout_shapes(64, resolution=64)        # (N, H, W, 3) uint8, seed 999: not training data
    scores = evaluate_reconstruction(ae, images)      # {"psnr": ..., "ssim": ..., "feature_distance": ...}

Metrics (each the mean over images of a per-image value; images in [0, 1]):
- PSNR = 10 log10(1 / MSE) in dB over all pixels and channels; identical images give inf.
- SSIM (Wang, Bovik, Sheikh & Simoncelli 2004): local means, variances and covariance under an
  11x11 Gaussian window (sigma 1.5), constants C1 = (0.01 L)^2 and C2 = (0.03 L)^2 with L = 1,
  computed per RGB channel on the valid (unpadded) region and averaged: the paper's settings.
- Feature distance: a *random features* baseline, not a perceptual metric. No trained feature
  network ships offline (LPIPS needs ImageNet VGG/AlexNet weights, and t2i's shapes checker is
  analytic, not a network), so `RandomFeatures` is a fixed-seed, randomly initialised 4-layer
  conv net; the distance is LPIPS's recipe without learned weights: features unit-normalised
  along channels at each layer, squared differences summed over channels, averaged over
  positions and layers. It compares structure at several scales (edges and blobs that random
  filters respond to) and is comparable only between numbers measured with this same net.
- rFID: FID between the reconstructions and the originals in the features of the network t2i
  trained on `shapes` (t2i.evaluate.features / t2i.evaluate.fid): a distance in a *trained*
  feature space, next to the random-features baseline. Not Inception FID; biased upward at small
  N (128-d features), so compare only rows measured on the same images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from t2i.checkpoints.family_file import load_family_file, read_metadata
from t2i.checkpoints.registry import bundled_model_dir
from t2i.data.images import render_shapes
from t2i.data.shapes import ShapesDataset
from t2i.errors import ModelLoadError
from t2i.evaluate.features import load_feature_net
from t2i.evaluate.fid import fid_from_features, image_features
from t2i.models.autoencoder import FILE_FAMILY, KLAutoencoder
from t2i.models.vqgan import VQGAN

HELDOUT_SEED = 999  # training configs use shapes seed 0: seed 999 renders other scenes
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) images in [0, data_range] -> (B,) PSNR in dB (inf where x == y)."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(data_range ** 2 / mse)).float()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)  # (size, size), sums to 1


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) images in [0, data_range] -> (B,) mean SSIM over channels and valid positions."""
    b, c, h, w = x.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    window = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)
    x, y = x.double(), y.double()
    window = window.to(x.device)

    def blur(t: torch.Tensor) -> torch.Tensor:  # per-channel weighted local mean
        return F.conv2d(t, window, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1).float()


class RandomFeatures(nn.Module):
    """A fixed-seed random conv net (3x3 convs, ReLU, strides 1, 2, 2, 2): a random-features
    baseline for a feature distance, see the module docstring. Same seed, same weights."""

    widths = (16, 32, 64, 128)

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers, c_in = [], 3
        for i, c_out in enumerate(self.widths):
            conv = nn.Conv2d(c_in, c_out, 3, stride=1 if i == 0 else 2, padding=1)
            with torch.no_grad():  # He initialisation keeps activations from vanishing with depth
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2 / (c_in * 9)))
                conv.bias.zero_()
            layers.append(conv)
            c_in = c_out
        self.convs = nn.ModuleList(layers)
        self.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> one (B, C_l, H_l, W_l) map per layer."""
        feats, h = [], images
        for conv in self.convs:
            h = F.relu(conv(h))
            feats.append(h)
        return feats

    @torch.no_grad()
    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) LPIPS-style distance without learned weights between images in [-1, 1]."""
        total = torch.zeros(len(x), device=x.device)
        for fx, fy in zip(self(x), self(y)):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            total += (fx - fy).pow(2).sum(1).mean((1, 2))
        return total / len(self.convs)


@dataclass
class Autoencoder:
    """Any first stage, reduced to what the evaluation needs."""

    name: str
    kind: str  # "kl" or "vq"
    factor: int  # spatial downsampling factor
    params: int
    reconstruct: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) in [-1, 1] -> same
    device: torch.device


def heldout_shapes(n: int, resolution: int = 64, seed: int = HELDOUT_SEED) -> torch.Tensor:
    """(n, H, W, 3) uint8 `shapes` images from a seed no training config uses."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    return render_shapes(ShapesDataset(length=n, seed=seed, resolution=resolution), workers=1).images


@torch.no_grad()
def evaluate_reconstruction(ae: Autoencoder, images_uint8: torch.Tensor, batch_size: int = 16,
                            features: RandomFeatures | None = None, feature_net=None) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and random-feature distance of `ae` on (N, H, W, 3) uint8 images,
    and rFID in the trained `shapes` feature space (`feature_net`: default the shipped one)."""
    h, w = images_uint8.shape[1:3]
    if h % ae.factor or w % ae.factor:
        raise ValueError(f"{ae.name}: image size {h}x{w} is not a multiple of its downsampling factor {ae.factor}")
    features = (features or RandomFeatures()).to(ae.device)
    feature_net = feature_net or load_feature_net(device=ae.device)
    sums = {"psnr": 0.0, "ssim": 0.0, "feature_distance": 0.0}
    real_feats, recon_feats = [], []
    for i in range(0, len(images_uint8), batch_size):
        x = images_uint8[i:i + batch_size].permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(ae.device)
        recon = ae.reconstruct(x).float().clamp(-1, 1)
        x01, r01 = (x + 1) / 2, (recon + 1) / 2
        sums["psnr"] += psnr(r01, x01).sum().item()
        sums["ssim"] += ssim(r01, x01).sum().item()
        sums["feature_distance"] += features.distance(recon, x).sum().item()
        real_feats.append(image_features(x01, feature_net))
        recon_feats.append(image_features(r01, feature_net))
    scores = {key: value / len(images_uint8) for key, value in sums.items()}
    enough = len(images_uint8) >= 2  # a covariance needs two images
    scores["rfid"] = fid_from_features(torch.cat(real_feats), torch.cat(recon_feats)) if enough else math.nan
    return scores


# -- loading ------------------------------------------------------------------------------------

def load_autoencoder(spec: str | Path, device: str | torch.device = "cpu") -> Autoencoder:
    """`default` (the bundled model's VAE), a diffusers model folder (its vae/), an LDM run
    folder (its model/), an autoencoder or VQGAN run folder, or their .safetensors file."""
    device = torch.device(device)
    if str(spec) == "default":
        return _diffusers_vae(bundled_model_dir(), "default", device)
    path = Path(spec)
    if path.is_dir():
        for name in ("autoencoder.safetensors", "vqgan.safetensors"):
            if (path / name).is_file():
                return _from_file(path / name, path.name, device)
        for folder in (path, path / "model"):
            if (folder / "vae" / "config.json").is_file():
                return _diffusers_vae(folder, path.name, device)
        if (path / "config.json").is_file() and (path / "diffusion_pytorch_model.safetensors").is_file():
            return _diffusers_vae(path.parent, path.name, device, subfolder=path.name)
        raise ModelLoadError(f"{path} holds no finished autoencoder (autoencoder.safetensors, vqgan.safetensors) "
                             f"and no diffusers model with a vae/ folder; is training finished?")
    if path.is_file():
        return _from_file(path, path.stem, device)
    raise ModelLoadError(f"{spec} does not exist; give `default`, a model or run folder, or a .safetensors file")


def _from_file(path: Path, name: str, device: torch.device) -> Autoencoder:
    family = read_metadata(path)["t2i_family"]
    if family == FILE_FAMILY:
        model = load_family_file(KLAutoencoder, path).to(device)
        return Autoencoder(name, "kl", model.config.downsample_factor, _count(model), model.reconstruct, device)
    if family == "vqgan":
        model = load_family_file(VQGAN, path).to(device)
        return Autoencoder(name, "vq", model.config.downsample_factor, _count(model),
                           lambda x: model(x).recon, device)
    raise ModelLoadError(f"{path} holds a {family!r} model, not an autoencoder ({FILE_FAMILY} or vqgan)")


def _diffusers_vae(folder: Path, name: str, device: torch.device, subfolder: str = "vae") -> Autoencoder:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True)
    vae = vae.to(device).eval().requires_grad_(False)

    def reconstruct(x: torch.Tensor) -> torch.Tensor:  # posterior mode, as KLAutoencoder does
        return vae.decode(vae.encode(x).latent_dist.mode()).sample

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return Autoencoder(name, "kl", factor, _count(vae), reconstruct, device)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
