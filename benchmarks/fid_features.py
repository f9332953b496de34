"""How good is t2i's shapes feature net, and what do its FIDs look like? (issue 3)

    python benchmarks/fid_features.py --threads 1

Prints the shipped net's held-out accuracy per attribute (shapes seed 999, scenes never trained
on), the FID noise floor between disjoint real sets (seed 999 vs seed 1000) at N = 500 and 1000,
the FID of real images against degraded copies of the other real set (same N), and against a
set that drops a mode (no two-object scenes).
"""
import argparse

import torch
import torch.nn.functional as F

from t2i.data.images import render_shapes
from t2i.data.shapes import ShapesDataset
from t2i.evaluate.features import head_accuracy, load_feature_net, render_labelled
from t2i.evaluate.fid import fid_from_features, image_features
from t2i.evaluate.recon import heldout_shapes


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    coords = torch.arange(2 * radius + 1, dtype=torch.float32) - radius
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = (torch.outer(g, g) / g.sum() ** 2).expand(3, 1, 2 * radius + 1, 2 * radius + 1)
    return F.conv2d(F.pad(images, (radius,) * 4, mode="replicate"), kernel, groups=3)


def degradations(images: torch.Tensor) -> dict[str, torch.Tensor]:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    half = F.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True)
    return {
        "blur sigma 0.5": blur(images, 0.5),
        "blur sigma 1": blur(images, 1.0),
        "blur sigma 2": blur(images, 2.0),
        "noise std 0.05": (images + 0.05 * noise).clamp(0, 1),
        "noise std 0.15": (images + 0.15 * noise).clamp(0, 1),
        "32px up to 64 (bilinear)": F.interpolate(half, scale_factor=2, mode="bilinear"),
        "8-level colour quantisation": (images * 7).round() / 7,
        "channels rotated (RGB -> BRG)": images[:, [2, 0, 1]],
        "uniform noise images": torch.rand(images.shape, generator=torch.Generator().manual_seed(1)),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--heldout", type=int, default=2000, help="scenes for the accuracy table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net = load_feature_net()

    images, labels = render_labelled(args.heldout, 999, net.config.heads)
    accuracy = head_accuracy(net, images, labels)
    print(f"held-out accuracy ({args.heldout} scenes, seed 999)")
    print("| " + " | ".join(accuracy) + " |")
    print("|" + "---|" * len(accuracy))
    print("| " + " | ".join(f"{v:.4f}" for v in accuracy.values()) + " |")

    print("\n| comparison | N=500 | N=1000 |\n|---|---|---|")
    rows: dict[str, list[float]] = {}
    for n in (500, 1000):
        real = heldout_shapes(n, 64, 999).permute(0, 3, 1, 2).float() / 255
        other = heldout_shapes(n, 64, 1000).permute(0, 3, 1, 2).float() / 255
        real_feats = image_features(real, net)
        rows.setdefault("real (seed 999) vs real (seed 1000)", []).append(
            fid_from_features(real_feats, image_features(other, net)))
        for name, degraded in degradations(other).items():
            rows.setdefault(f"real vs {name}", []).append(fid_from_features(real_feats, image_features(degraded, net)))
        # mode dropping: seed 1000 drawn without two-object scenes (40% of real scenes have two)
        single = render_shapes(ShapesDataset(n, 1000, 64, p_two=0.0), workers=1).images.permute(0, 3, 1, 2) / 255
        rows.setdefault("real vs no two-object scenes (mode dropping)", []).append(
            fid_from_features(real_feats, image_features(single.float(), net)))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")


if __name__ == "__main__":
    main()
