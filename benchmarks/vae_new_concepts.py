"""Which new concepts can the bundled model's VAE carry at all? A fine-tuning method that keeps the
VAE can only teach what survives its encode/decode round trip, so this decides what
benchmarks/finetune_concept.py teaches.

- colours outside the `shapes` palette: a medium square of each on black and on white; prints the
  mean colour of the square's middle after the round trip (the VAE was trained on the eight
  palette colours only);
- new shapes: the 100 concept prompts' own drawings (concept_shapes.concept_scenes, seed 777, as
  the benchmark's concept prompts), round trip, then concept_shapes' check: how many keep the shape.
  `--sheet FILE` also writes drawings (top) and round trips (bottom) of a few of them.

    OMP_NUM_THREADS=1 python benchmarks/vae_new_concepts.py [--sheet /tmp/rings.png]
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from concept_shapes import CONCEPTS, concept_correct, concept_scenes, draw
from PIL import Image

NEW_COLOURS = {"pink": (255, 140, 190), "cyan": (30, 210, 220), "brown": (120, 70, 30), "grey": (128, 128, 128),
               "magenta": (230, 30, 200), "teal": (0, 128, 128), "lime": (160, 230, 40)}


def round_trip(model, images: list[Image.Image]) -> list[Image.Image]:
    from t2i.models.common import to_pil_images

    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        return to_pil_images(model.decode_latents(model.encode_images(pixels * 2 - 1, sample=False)))


def square(colour: tuple[int, int, int], background: tuple[int, int, int], side: int = 24) -> Image.Image:
    image = Image.new("RGB", (64, 64), background)
    image.paste(Image.new("RGB", (side, side), colour), ((64 - side) // 2, (64 - side) // 2))
    return image


def main() -> None:
    from t2i.checkpoints.registry import load_model
    from t2i.data.shapes import PALETTE
    from t2i.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="concept prompts per shape")
    parser.add_argument("--sheet", default=None, help="write a PNG of drawings and round trips of the first 16 rings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model(None, Runtime.auto("full", "cpu")).model

    print("| colour | drawn | after the round trip, on black | on white |\n|---|---|---|---|")
    for name, rgb in NEW_COLOURS.items():
        images = round_trip(model, [square(rgb, PALETTE["black"]), square(rgb, PALETTE["white"])])
        middles = [tuple(int(v) for v in np.asarray(im, dtype=np.float32)[26:38, 26:38].reshape(-1, 3).mean(0)) for im in images]
        print(f"| {name} | {rgb} | {middles[0]} | {middles[1]} |")

    print("\n| shape | its check on the drawings | on their round trips | large | medium | small | two objects |\n|---|---|---|---|---|---|---|")
    for concept in CONCEPTS:
        scenes = concept_scenes(concept, args.n, seed=777)
        drawn = [draw(s) for s in scenes]
        back = round_trip(model, drawn)
        kept = [concept_correct(im, s)[0] for im, s in zip(back, scenes)]
        kind = ["two" if len(s.objects) > 1 else s.size for s in scenes]
        counts = {k: f"{sum(ok for ok, c in zip(kept, kind) if c == k)}/{kind.count(k)}" for k in ("large", "medium", "small", "two")}
        print(f"| {concept} | {sum(concept_correct(im, s)[0] for im, s in zip(drawn, scenes))}/{len(scenes)} | "
              f"{sum(kept)}/{len(scenes)} | {counts['large']} | {counts['medium']} | {counts['small']} | {counts['two']} |")
        # the check must not call the ordinary shapes drawn in the same places the concept
        for shape in ("circle", "square", "triangle"):
            others = [replace(s, objects=(replace(s.objects[0], shape=shape),) + s.objects[1:]) for s in scenes]
            false = sum(concept_correct(im, s)[0] for im, s in zip(round_trip(model, [draw(o) for o in others]), scenes))
            print(f"|   {shape}s drawn in those scenes, called a {concept} after the round trip | | {false}/{len(scenes)} | | | | |")
        if args.sheet and concept == "ring":
            sheet = Image.new("RGB", (16 * 66, 132), (128, 128, 128))
            for i, (a, b) in enumerate(zip(drawn[:16], back[:16])):
                sheet.paste(a, (i * 66, 0))
                sheet.paste(b, (i * 66, 66))
            sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(args.sheet)


if __name__ == "__main__":
    main()
