"""Invisible watermark (dwtDctSvd, t2i.pipelines.watermark): how many bits come back, from PNG and
after JPEG compression, on the kinds of images t2i makes; and how much the mark changes them.

Image kinds, 256x256 (the method's minimum):
- `shapes`: dataset samples drawn at 256 px (flat colours and hard edges: the method's worst case);
- `model 256`: the bundled model's txt2img at 256x256 (it was trained at 64: busy textures);
- `model 64 -> 256`: the bundled model at 64, Lanczos-upscaled (smooth, like an upscaled output);
- `photo-like`: smooth random colour waves with a little grain.
The payload is "t2i-watermark" (13 bytes, 104 bits); bit accuracy 0.5 is chance.

    nice python benchmarks/watermark_robustness.py --n 20
"""
from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from PIL import Image

PAYLOAD = "t2i-watermark"


def photo_like(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:256] / 256
    waves = [127 + 80 * np.sin(2 * np.pi * (rng.uniform(1, 4) * x + rng.uniform(1, 4) * y) + rng.uniform(0, 6))
             for _ in range(3)]
    return Image.fromarray(np.clip(np.stack(waves, -1) + rng.normal(0, 4, (256, 256, 3)), 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from t2i.checkpoints.registry import load_model
    from t2i.data.shapes import ShapesDataset
    from t2i.pipelines.generation_params import Txt2ImgParams
    from t2i.pipelines.txt2img import txt2img
    from t2i.pipelines.watermark import bit_accuracy, put_watermark
    from t2i.runtime import Runtime

    loaded = load_model(None, Runtime.auto("full", "cpu", args.threads))
    data = ShapesDataset(length=args.n, seed=99, resolution=256)
    captions = [data[i]["caption"] for i in range(args.n)]

    def model_image(i: int, size: int) -> Image.Image:
        return txt2img(loaded, Txt2ImgParams(prompt=captions[i], seed=i, steps=15, width=size, height=size)).images[0]

    kinds = {
        "shapes": lambda i: data[i]["image"].convert("RGB"),
        "model 256": lambda i: model_image(i, 256),
        "model 64 -> 256": lambda i: model_image(i, 64).resize((256, 256), Image.Resampling.LANCZOS),
        "photo-like": photo_like,
    }
    print(f"payload {PAYLOAD!r} ({len(PAYLOAD) * 8} bits), {args.n} images per kind, 256x256")
    print(f"{'kind':<18}{'PSNR':>7}{'PNG':>8}{'JPEG 95':>9}{'JPEG 90':>9}{'JPEG 75':>9}{'>=0.9 @90':>11}"
          f"{'unmarked':>10}")
    for name, make in kinds.items():
        rows = []
        for i in range(args.n):
            image = make(i)
            marked = put_watermark(image, PAYLOAD)
            mse = ((np.asarray(marked, float) - np.asarray(image, float)) ** 2).mean()
            rows.append((10 * np.log10(255 ** 2 / max(mse, 1e-12)), bit_accuracy(marked, PAYLOAD),
                         bit_accuracy(jpeg(marked, 95), PAYLOAD), bit_accuracy(jpeg(marked, 90), PAYLOAD),
                         bit_accuracy(jpeg(marked, 75), PAYLOAD), bit_accuracy(image, PAYLOAD)))
        r = np.array(rows)
        print(f"{name:<18}{r[:, 0].mean():>6.1f}dB{r[:, 1].mean():>8.3f}{r[:, 2].mean():>9.3f}{r[:, 3].mean():>9.3f}"
              f"{r[:, 4].mean():>9.3f}{(r[:, 3] >= 0.9).mean():>11.2f}{r[:, 5].mean():>10.3f}")


if __name__ == "__main__":
    main()
