"""SD upscale and img2img alternative test on the bundled model, measured with the shapes checker.

Inputs are `shapes` dataset samples (`--data-seed`, not the training data's seed 0) at the model's
resolution (64 px), each with its own caption.

SD upscale: each input upscaled x4 (64 -> 256) with Lanczos, then img2img over 64 px tiles
overlapping by 16 (denoising `--sd-strengths`, `--steps`, the image's own caption and seed). The
checker reads the input and the result (at 256, and resized back to 64); "keeps" = every stated
attribute it confirms on the input it still confirms on the result, per attribute and overall.

img2img alternative test: each input inverted under its own caption (reverse Euler, `--steps`,
CFG 1), then sampled (Euler, same steps, CFG 1) with
- the same caption: PSNR of the result against the input and against the VAE round trip of the
  input (the best any latent method can do), and the checker's verdict on the result;
- the caption with the first object's colour word changed (to a colour not in the scene): does
  the checker see the new colour (colour attribute, against the new caption) and the old layout
  (shape, position/relation attributes, against the new caption)? Also at `--alt-cfg` for sampling.

    nice python benchmarks/image_scripts_quality.py --n 40 --steps 30
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def psnr(a, b) -> float:
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def recolored(scene, caption: str) -> tuple[str, str] | None:
    """The caption with the first object's colour word replaced by a colour not in the scene."""
    from t2i.data.shapes import COLORS

    used = {scene.background, *(o.color for o in scene.objects)}
    old = f"{scene.objects[0].color} {scene.objects[0].shape}"
    if old not in caption:
        return None
    new_color = next(c for c in COLORS if c not in used)
    return caption.replace(old, f"{new_color} {scene.objects[0].shape}", 1), new_color


def kept(before, after) -> dict[str, bool]:
    """Per attribute the input passed: does the result pass it too?"""
    return {k: after.attributes[k] for k, ok in before.attributes.items() if ok}


def summarise(rows: list[dict]) -> str:
    names = sorted({k for r in rows for k in r})
    parts = [f"{k} {np.mean([r[k] for r in rows if k in r]):.2f} (n={sum(k in r for r in rows)})" for k in names]
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sd-strengths", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--alt-cfg", type=float, default=3.0)
    ap.add_argument("--data-seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", choices=("sd", "alt"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from PIL import Image

    from t2i.checkpoints.registry import load_model
    from t2i.data.shapes import ShapesDataset
    from t2i.evaluate.shapes_checker import check
    from t2i.pipelines.generation_params import Img2ImgParams
    from t2i.pipelines.imageops import decode, encode, images_to_tensor
    from t2i.pipelines.img2img_alt import img2img_alt
    from t2i.pipelines.script_options import Img2ImgAltOptions, SDUpscaleOptions
    from t2i.pipelines.sd_upscale import sd_upscale
    from t2i.runtime import Runtime

    loaded = load_model(None, Runtime.auto("full", "cpu", args.threads))
    data = ShapesDataset(length=args.n, seed=args.data_seed, p_two=0.4, p_short=0.3,
                         resolution=loaded.model.config.resolution)
    print(f"model {loaded.name}, {args.n} shapes samples (data seed {args.data_seed}), {args.steps} steps, "
          f"{args.threads} threads, float32 CPU")
    baseline = [check(data[i]["image"], data[i]["caption"]) for i in range(args.n)]
    print(f"checker on the inputs: {np.mean([b.correct for b in baseline]):.2f} fully correct")

    for strength in ([] if args.skip == "sd" else args.sd_strengths):
        start = time.perf_counter()
        at256, at64, full256, full64 = [], [], [], []
        for i in range(args.n):
            sample = data[i]
            params = Img2ImgParams(prompt=sample["caption"], steps=args.steps, seed=i, cfg_scale=7.0,
                                   denoising_strength=strength)
            out = sd_upscale(loaded, params, sample["image"], SDUpscaleOptions("Lanczos", 4.0, 16)).images[0]
            big, small = check(out, sample["caption"]), check(out.resize((64, 64), Image.Resampling.LANCZOS),
                                                             sample["caption"])
            at256.append(kept(baseline[i], big))
            at64.append(kept(baseline[i], small))
            if baseline[i].correct:
                full256.append(big.correct)
                full64.append(small.correct)
        seconds = time.perf_counter() - start
        print(f"\nSD upscale 64->256 (Lanczos x4, 64 px tiles, overlap 16, strength {strength}): "
              f"{seconds / args.n:.1f} s/image")
        print(f"  all attributes kept, of inputs the checker passes: at 256 {np.mean(full256):.2f}, "
              f"resized to 64 {np.mean(full64):.2f} (n={len(full256)})")
        print(f"  per attribute kept, at 256: {summarise(at256)}")
        print(f"  per attribute kept, at 64:  {summarise(at64)}")

    if args.skip != "alt":
        start = time.perf_counter()
        to_input, to_roundtrip, same_ok, color_new, layout_new, color_cfg, layout_cfg = [], [], [], [], [], [], []
        for i in range(args.n):
            sample, scene = data[i], data.scene(i)
            caption = sample["caption"]
            options = Img2ImgAltOptions(original_prompt=caption, decode_cfg_scale=1.0)
            params = Img2ImgParams(prompt=caption, steps=args.steps, seed=i, cfg_scale=1.0)
            same = img2img_alt(loaded, params, sample["image"], options).images[0]
            with torch.no_grad():
                rt = decode(loaded.model, encode(loaded.model, images_to_tensor([sample["image"]])))[0]
            to_input.append(psnr(same, sample["image"]))
            to_roundtrip.append(psnr(same, rt))
            if baseline[i].correct:
                same_ok.append(check(same, caption).correct)
            change = recolored(scene, caption)
            if change is None:
                continue
            new_caption, _ = change
            for cfg, colors, layouts in ((1.0, color_new, layout_new), (args.alt_cfg, color_cfg, layout_cfg)):
                out = img2img_alt(loaded, Img2ImgParams(prompt=new_caption, steps=args.steps, seed=i, cfg_scale=cfg),
                                  sample["image"], options).images[0]
                verdict = check(out, new_caption)
                colors.append(verdict.attributes.get("color", False))
                layouts.append(all(verdict.attributes.get(k, True) for k in ("shape", "position", "relation",
                                                                               "count")))
        seconds = time.perf_counter() - start
        print(f"\nimg2img alternative test ({args.steps} steps inversion and sampling, Euler): "
              f"{seconds / args.n:.1f} s/image")
        print(f"  same caption, CFG 1: PSNR to input {np.mean(to_input):.1f} dB (median {np.median(to_input):.1f}), "
              f"to the VAE round trip {np.mean(to_roundtrip):.1f} dB; checker still passes "
              f"{np.mean(same_ok):.2f} (n={len(same_ok)})")
        for cfg, colors, layouts in ((1.0, color_new, layout_new), (args.alt_cfg, color_cfg, layout_cfg)):
            print(f"  colour word changed, sampling CFG {cfg}: new colour seen {np.mean(colors):.2f}, layout kept "
                  f"(shape/position/relation/count) {np.mean(layouts):.2f} (n={len(colors)})")


if __name__ == "__main__":
    main()
