"""`t2i evaluate fid REAL FAKE`: FID between two image sets in t2i's `shapes` features (t2i.evaluate.fid)."""
from __future__ import annotations

import sys
from pathlib import Path

SHAPES_DEFAULT_N = 1000


def add_fid_command(evaluate_sub) -> None:
    fid = evaluate_sub.add_parser(
        "fid", help="FID between two image sets (folders or held-out shapes) in t2i's shapes-trained features",
        description="Print the FID between REAL and FAKE, each a folder of images (read recursively, sorted by "
                    "name, centre-cropped and resized to --resolution) or `shapes` (held-out shapes images of "
                    "--seed) or `shapes:SEED`. Features come from the small network t2i trained on shapes "
                    "(t2i.evaluate.features): numbers compare only with each other at the same image count, "
                    "never with Inception FID.")
    fid.add_argument("real", metavar="REAL", help="an image folder, `shapes` or `shapes:SEED`")
    fid.add_argument("fake", metavar="FAKE", help="an image folder, `shapes` or `shapes:SEED`")
    fid.add_argument("--n", type=int, help=f"images per set: shapes renders this many (default {SHAPES_DEFAULT_N}), "
                                           f"a folder gives its first N (default: all)")
    fid.add_argument("--seed", type=int, default=999, help="shapes seed for `shapes` (default: %(default)s, "
                                                          "the held-out seed no training config uses)")
    fid.add_argument("--resolution", type=int, default=64, help="size images are loaded at (default: %(default)s)")
    fid.add_argument("--batch-size", type=int, default=250)
    fid.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    fid.set_defaults(run=_run_fid)


def load_image_set(spec: str, n: int | None, seed: int, resolution: int):
    """(N, 3, H, W) float in [0, 1] for a folder, `shapes` or `shapes:SEED`; and a description."""
    from t2i.data.images import load_folder
    from t2i.evaluate.recon import heldout_shapes

    if n is not None and n < 2:
        raise ValueError(f"--n must be at least 2 (FID needs a covariance per set), got {n}")
    if spec == "shapes" or spec.startswith("shapes:"):
        if spec != "shapes":
            try:
                seed = int(spec.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"{spec!r}: expected shapes:SEED with an integer seed, e.g. shapes:1000") from None
        n = n or SHAPES_DEFAULT_N
        images = heldout_shapes(n, resolution, seed)
        description = f"{n} shapes images, seed {seed}"
    else:
        if not Path(spec).is_dir():
            raise FileNotFoundError(f"{spec} is not a folder; give an image folder, `shapes` or `shapes:SEED`")
        images = load_folder(spec, resolution).images[:n]
        if len(images) < 2:
            raise ValueError(f"{spec} holds {len(images)} image; FID needs at least 2 per set")
        description = f"{len(images)} images from {spec}"
    return images.permute(0, 3, 1, 2).float() / 255, description


def _run_fid(args) -> None:
    import torch

    from t2i.evaluate.features import load_feature_net
    from t2i.evaluate.fid import fid_from_features, image_features

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    net = load_feature_net(device=device)
    feats = []
    for name, spec in (("real", args.real), ("fake", args.fake)):
        images, description = load_image_set(spec, args.n, args.seed, args.resolution)
        print(f"{name}: {description}", file=sys.stderr)
        feats.append(image_features(images, net, args.batch_size))
    print(f"{fid_from_features(*feats):.4f}")
