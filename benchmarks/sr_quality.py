"""How good is a super-resolution model? PSNR / SSIM and shapes-checker accuracy against bicubic and Lanczos.

    python benchmarks/sr_quality.py runs/shapes-sr --n 64 --steps 50
    python benchmarks/sr_quality.py runs/shapes-sr-128 --n 64 --sampler "DPM++ 2M" --steps 20

Held-out `shapes` scenes (seed 999, not training data; t2i.evaluate.recon.HELDOUT_SEED) are rendered
at the model's high resolution, downsampled by its scale (area, i.e. box filter: the recipe's
main degradation without blur), then upscaled by the model (seed i for image i), by bicubic and
by Lanczos (PIL). Reported per method, as a markdown table: mean PSNR (dB) and SSIM against the
original (t2i.evaluate.recon: images in [0, 1]), and the shapes checker's accuracy
(t2i.evaluate.shapes_checker) of the upscaled image against the scene's caption: the fraction
fully correct, and colour / shape accuracy where the caption states them. The "original" row is
the checker on the ground-truth images: the ceiling for every method.
"""
from __future__ import annotations

import argparse
import time

import torch
from PIL import Image


def heldout_scenes(n: int, resolution: int):
    """(images (N, H, W, 3) uint8, captions) of held-out scenes, one and two objects."""
    from t2i.data.images import render_shapes
    from t2i.data.shapes import ShapesDataset
    from t2i.evaluate.recon import HELDOUT_SEED

    source = render_shapes(ShapesDataset(length=n, seed=HELDOUT_SEED, resolution=resolution, p_two=0.4), workers=1)
    return source.images, list(source.captions)


def to_pil(images_uint8: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(im.numpy()) for im in images_uint8]


def measure(method: str, outputs: list[Image.Image], originals: list[Image.Image], captions: list[str]) -> dict:
    from t2i.evaluate.recon import psnr, ssim
    from t2i.evaluate.shapes_checker import check, score
    from t2i.pipelines.imageops import images_to_tensor

    x = (images_to_tensor(outputs) + 1) / 2
    y = (images_to_tensor(originals) + 1) / 2
    scores = score([check(im, c) for im, c in zip(outputs, captions)])
    return {"method": method, "psnr": psnr(x, y).mean().item(), "ssim": ssim(x, y).mean().item(),
            "correct": scores["correct"], "color": scores["attributes"].get("color", float("nan")),
            "shape": scores["attributes"].get("shape", float("nan"))}


def main(argv: list[str] | None = None) -> None:
    from t2i.pipelines.upscale import UpscaleParams, load_sr_model, upscale

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a super-resolution run folder or model .safetensors file")
    parser.add_argument("--n", type=int, default=64, help="held-out images (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", default="DDIM")
    parser.add_argument("--noise-level", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sr = load_sr_model(args.model, args.device)
    cfg = sr.model.config
    images, captions = heldout_scenes(args.n, cfg.resolution)
    originals = to_pil(images)
    low_size = (cfg.resolution // cfg.scale,) * 2
    lows = [im.resize(low_size, Image.Resampling.BOX) for im in originals]  # area downsampling

    rows = [measure("original (checker ceiling)", originals, originals, captions)]
    for name in ("bicubic", "lanczos"):
        out = upscale(lows, UpscaleParams(upscaler=name, scale=cfg.scale)).images
        rows.append(measure(name, out, originals, captions))
    start = time.perf_counter()
    params = UpscaleParams(scale=cfg.scale, steps=args.steps, sampler=args.sampler, seed=0,
                           noise_level=args.noise_level)
    out = upscale(lows, params, sr).images
    seconds = time.perf_counter() - start
    rows.append(measure(f"SR model ({args.sampler}, {args.steps} steps, noise {args.noise_level})", out,
                        originals, captions))

    low_res = f"{low_size[0]}x{low_size[1]}"
    print(f"{sr.name}: {low_res} -> {cfg.resolution}x{cfg.resolution}, {args.n} held-out shapes images "
          f"(seed 999), device {args.device}, threads {torch.get_num_threads()}; SR took {seconds:.1f}s\n")
    print("| method | PSNR (dB) | SSIM | checker correct | colour | shape |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['correct']:.3f} | {r['color']:.3f} | "
              f"{r['shape']:.3f} |")


if __name__ == "__main__":
    main()
