"""Where a fine-tuned concept fails: re-score the concept images a finetune_concept.py run kept
(OUT/METHOD-concept/, -set1/, -set2/) by the attributes of each prompt's scene (the concept's size,
colour, one or two objects, background), with the same check the run used ("appears").

    python benchmarks/concept_breakdown.py --out DIR --method lora --concept ring
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from concept_shapes import CONCEPTS, concept_correct, concept_scenes
from PIL import Image


def attributes(scene) -> list[str]:
    first = scene.objects[0]
    objects = "one object" if len(scene.objects) == 1 else "two objects"
    return [objects, f"size {scene.size or '(not stated)'}", f"colour {first.color}", f"background {scene.background}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a finetune_concept.py --out folder")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--concept", default="ring", choices=CONCEPTS)
    parser.add_argument("--prompts", type=int, default=100, help="as the run's --prompts")
    args = parser.parse_args()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for eval_set in (0, 1, 2):
        folder = args.out / f"{args.method}-concept{f'-set{eval_set}' if eval_set else ''}"
        if not folder.is_dir():
            continue
        scenes = concept_scenes(args.concept, args.prompts, seed=777 + eval_set)  # as finetune_concept.py
        for index, scene in enumerate(scenes):
            image = Image.open(folder / f"{index:03d}.png").convert("RGB")
            appears = concept_correct(image, scene)[0]
            for key in ["all", *attributes(scene)]:
                counts[key][0] += int(appears)
                counts[key][1] += 1
    if not counts:
        raise SystemExit(f"no {args.method}-concept folders under {args.out}")
    print(f"| {args.concept} appears, by the prompt's scene | of | rate |\n|---|---|---|")
    for key in sorted(counts, key=lambda k: (k != "all", k)):
        hits, total = counts[key]
        print(f"| {key} | {hits} / {total} | {hits / total:.0%} |")


if __name__ == "__main__":
    main()
