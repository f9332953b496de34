"""A test concept list for the CLIP safety checker: block every image with red in it.

Two concepts, CompVis-style (a unit embedding and a cosine threshold each): "red object" and
"red background", each the mean text embedding of every full `shapes` caption that has it. Each
threshold is set halfway between the highest similarity of a held-out image without it and the
lowest of an image with it (calibration set; where they overlap, at the best balanced accuracy), then measured on a fresh held-out set: the share
of red images blocked and of other images passed. Prints the thresholds (tests/test_clip_bundled.py
uses them) and optionally writes the concept folder.

    OMP_NUM_THREADS=1 python benchmarks/clip_safety_concepts.py [--clip DIR] [--write DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from t2i.data.shapes import ShapesDataset
from t2i.evaluate.clip_captions import pair_caption, pair_candidates, single_caption, single_candidates
from t2i.evaluate.clip_scorer import load_scorer
from t2i.pipelines.clip_safety import concepts_from_texts, save_concepts


def red_texts() -> dict[str, list[str]]:
    objects = [single_caption(*c) for c in single_candidates() if c[0] == "red"]
    objects += [pair_caption(*c) for c in pair_candidates() if "red" in (c[0], c[3])]
    backgrounds = [single_caption(*c) for c in single_candidates() if c[4] == "red"]
    backgrounds += [pair_caption(*c) for c in pair_candidates() if c[5] == "red"]
    return {"red object": objects, "red background": backgrounds}


def has(scene, concept: str) -> bool:
    if concept == "red background":
        return scene.background == "red"
    return any(o.color == "red" for o in scene.objects)


def images_and_scenes(n: int, seed: int):
    ds = ShapesDataset(n, seed, 64, p_two=0.3, p_short=0.0)
    items = [ds[i] for i in range(n)]
    return [it["image"] for it in items], [it["scene"] for it in items]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", help="CLIP folder (default: the bundled CLIP)")
    ap.add_argument("--n", type=int, default=1000, help="images in the calibration set and in the test set")
    ap.add_argument("--write", type=Path, help="write the concept folder here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpu0 = time.process_time()
    scorer = load_scorer(args.clip)
    names, embeds = concepts_from_texts(scorer, red_texts())
    images, scenes = images_and_scenes(args.n, 31337)
    sims = scorer.embed_images(images) @ embeds.T  # (N, K)
    thresholds = []
    for k, name in enumerate(names):
        positive = torch.tensor([has(s, name) for s in scenes])
        low, high = float(sims[positive, k].min()), float(sims[~positive, k].max())
        if low > high:  # separable: halfway between
            thresholds.append(round((low + high) / 2, 4))
        else:  # the threshold with the best balanced accuracy
            values = sims[:, k].sort().values
            cuts = (values[1:] + values[:-1]) / 2
            hit = (sims[positive, k][None, :] > cuts[:, None]).float().mean(1)
            miss = (sims[~positive, k][None, :] <= cuts[:, None]).float().mean(1)
            thresholds.append(round(float(cuts[(hit + miss).argmax()]), 4))
        print(f"{name}: calibration min(with) {low:.4f}, max(without) {high:.4f} -> threshold {thresholds[-1]:.4f}"
              f"{'' if low > high else '  (NOT separable: some images fall on the wrong side)'}")
    images, scenes = images_and_scenes(args.n, 424242)
    flagged = ((scorer.embed_images(images) @ embeds.T) > torch.tensor(thresholds)).any(-1)
    red = torch.tensor([any(has(s, n) for n in names) for s in scenes])
    print(f"test set of {args.n}: red images blocked {float(flagged[red].float().mean()):.1%} ({int(red.sum())}), "
          f"others passed {float((~flagged[~red]).float().mean()):.1%} ({int((~red).sum())})")
    if args.write:
        print("wrote", save_concepts(args.write, names, embeds, thresholds))
    print(f"CPU time: {(time.process_time() - cpu0) / 60:.2f} CPU-minutes (1 thread)")


if __name__ == "__main__":
    main()
