"""`t2i evaluate recon`: compare autoencoders on held-out images (t2i.evaluate.recon)."""
from __future__ import annotations

import sys

from t2i.interfaces.cli.clip_score import add_clip_score_command
from t2i.interfaces.cli.fid import add_fid_command


def add_evaluate_commands(sub) -> None:
    p = sub.add_parser("evaluate", help="measure models (reconstruction quality of autoencoders, FID)")
    evaluate_sub = p.add_subparsers(dest="evaluate_command", required=True)
    recon = evaluate_sub.add_parser(
        "recon", help="PSNR, SSIM and a feature distance of autoencoders on held-out shapes images",
        description="Reconstruct N held-out `shapes` images (a seed no training config uses) with each "
                    "autoencoder and print PSNR (dB), SSIM, a random-features distance (a fixed-seed "
                    "random conv net: comparable between rows, not a perceptual metric) and rFID (FID of the "
                    "reconstructions against the originals in t2i's shapes-trained features, not Inception "
                    "FID); see t2i.evaluate.recon.")
    recon.add_argument("models", nargs="+", metavar="MODEL",
                       help="`default` (the bundled model's VAE), a model or run folder (autoencoder, vqgan, "
                            "LDM), or an autoencoder/VQGAN .safetensors file")
    recon.add_argument("--n", type=int, default=64, help="held-out images (default: %(default)s)")
    recon.add_argument("--seed", type=int, default=999, help="shapes seed of the held-out images (default: %(default)s)")
    recon.add_argument("--resolution", type=int, default=64, help="image size in pixels (default: %(default)s)")
    recon.add_argument("--batch-size", type=int, default=16)
    recon.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    recon.set_defaults(run=_run_recon)
    add_fid_command(evaluate_sub)  # cli_fid.py
    add_clip_score_command(evaluate_sub)  # clip_score.py


def _format_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _run_recon(args) -> None:
    import torch

    from t2i.evaluate.recon import RandomFeatures, evaluate_reconstruction, heldout_shapes, load_autoencoder

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    images = heldout_shapes(args.n, args.resolution, args.seed)
    features = RandomFeatures()
    header = (f"{'model':<24} {'kind':<4} {'factor':>6} {'params':>8} {'PSNR':>7} {'SSIM':>7} {'feat-dist':>9} "
              f"{'rFID':>8}")
    print(f"{args.n} held-out shapes images, seed {args.seed}, {args.resolution}x{args.resolution}", file=sys.stderr)
    print(header)
    for spec in args.models:
        ae = load_autoencoder(spec, device)
        s = evaluate_reconstruction(ae, images, args.batch_size, features)
        print(f"{ae.name:<24} {ae.kind:<4} {ae.factor:>6} {_format_params(ae.params):>8} "
              f"{s['psnr']:>7.2f} {s['ssim']:>7.4f} {s['feature_distance']:>9.4f} {s['rfid']:>8.3f}", flush=True)
