"""Fréchet distance between image sets in the feature space of t2i's own `shapes` network.

    score = fid_score(real, fake)   # images (N, 3, H, W) float in [0, 1], any size; lower is closer

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium") fits a Gaussian to the features of each set and reports the Fréchet (2-Wasserstein)
distance between them:

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

**These numbers are not Inception FID.** The features come from t2i.evaluate.features: a small
conv net that t2i trained on `shapes` (its 128-d penultimate layer), shipped in
assets/fid_features/. Scores are comparable only with each other (same network, same image
count: FID is biased upward at small N), never with FID figures from papers, which use
Inception v3 pool3 features on ImageNet-like images. The network only knows `shapes`: on other
images the number still measures a distance, but not one anybody has validated.

The trace of the matrix square root is taken from an eigen-decomposition of the symmetric
product S1^(1/2) S2 S1^(1/2) (it has the same eigenvalues as S1 S2), with float64 and negative
round-off eigenvalues clipped to zero. The reference implementations (pytorch-fid, the TTUR
code) call scipy's sqrtm on S1 S2 instead and drop the tiny imaginary parts it returns; the
symmetric form gives the same value without producing them.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from t2i.evaluate.features import RESOLUTION, FeatureNet, load_feature_net


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name}: expected float images (N, 3, H, W) in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected float images in [0, 1], got dtype {images.dtype}; divide uint8 by 255")
    if len(images) and (images.min() < -1e-3 or images.max() > 1 + 1e-3):
        raise ValueError(f"{name}: pixel values must lie in [0, 1], got [{images.min():.3f}, {images.max():.3f}]; "
                         f"images in [-1, 1] need (x + 1) / 2")


@torch.no_grad()
def image_features(images: torch.Tensor, net: FeatureNet | None = None, batch_size: int = 250) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> (N, 128) float64 features of the shipped network.

    Images of another size are resized to 64x64 (bilinear with antialias, so downscaling averages
    instead of aliasing); runs on the device of `net` (default: the shipped net on the CPU)."""
    _check_images(images, "images")
    net = net or load_feature_net()
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device=device, dtype=torch.float32)
        if x.shape[-2:] != (RESOLUTION, RESOLUTION):
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
        out.append(net.features(x.clamp(0, 1)).double().cpu())
    return torch.cat(out) if out else torch.zeros(0, net.config.feature_dim, dtype=torch.float64)


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"FID needs at least 2 images per set (a covariance), got features of shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: means {mu1.shape} and {mu2.shape}, "
                         f"covariances {sigma1.shape} and {sigma2.shape}")
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1  # symmetric PSD with the eigenvalues of sigma1 @ sigma2
    trace_sqrt = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(value, 0.0))  # round-off can leave -1e-12 for identical sets


def fid_from_features(real: torch.Tensor | np.ndarray, fake: torch.Tensor | np.ndarray) -> float:
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


def fid_score(real: torch.Tensor, fake: torch.Tensor, net: FeatureNet | None = None) -> float:
    """FID between two image sets (N, 3, H, W) float in [0, 1], in the shipped network's features."""
    _check_images(real, "real")
    _check_images(fake, "fake")
    net = net or load_feature_net()
    return fid_from_features(image_features(real, net), image_features(fake, net))
