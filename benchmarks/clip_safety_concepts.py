"""A test concept list for the CLIP safety checker: block every image with red in it.

Four concepts, CompVis-style (a unit image embedding and a cosine threshold each): a red circle,
square or triangle, and a red background (single-object scenes). As CompVis's concepts are image embeddings, each is
the mean image embedding of the calibration images that have it (held-out `shapes`, seed 31337);
its threshold is halfway between the highest similarity of a calibration image without it and
the lowest of one with it (where they overlap, the cut that at most --max-false of the images without it pass). Then
measured on a fresh held-out set (seed 424242): the share of red images blocked and of other
images passed. Optionally writes the concept folder (tests/data/clip_red_concepts).

    OMP_NUM_THREADS=1 python benchmarks/clip_safety_concepts.py [--clip DIR] [--write DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from t2i.data.shapes import ShapesDataset
from t2i.evaluate.clip_scorer import load_scorer
from t2i.pipelines.clip_safety import save_concepts

CONCEPTS = ("red circle", "red square", "red triangle", "red background")


def has(scene, concept: str) -> bool:
    if concept == "red background":
        return scene.background == "red"
    return any(f"{o.color} {o.shape}" == concept for o in scene.objects)


def is_red(scene) -> bool:
    return scene.background == "red" or any(o.color == "red" for o in scene.objects)


def images_and_scenes(n: int, seed: int):
    ds = ShapesDataset(n, seed, 64, p_two=0.0, p_short=0.0)
    items = [ds[i] for i in range(n)]
    return [it["image"] for it in items], [it["scene"] for it in items]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", help="CLIP folder (default: the bundled CLIP)")
    ap.add_argument("--n", type=int, default=4000, help="images in the calibration set and in the test set")
    ap.add_argument("--max-false", type=float, default=0.02, help="per concept, the share of calibration "
                    "images without it that may pass its threshold when the two groups overlap")
    ap.add_argument("--verbose", action="store_true", help="print each concept's calibration")
    ap.add_argument("--write", type=Path, help="write the concept folder here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cpu0 = time.process_time()
    scorer = load_scorer(args.clip)
    names = list(CONCEPTS)
    images, scenes = images_and_scenes(args.n, 31337)
    emb = scorer.embed_images(images)
    embeds = torch.stack([emb[torch.tensor([has(s, n) for s in scenes])].mean(0) for n in names])
    embeds = embeds / embeds.norm(dim=-1, keepdim=True)
    sims = emb @ embeds.T  # (N, K)
    thresholds, separable = [], 0
    for k, name in enumerate(names):
        positive = torch.tensor([has(s, name) for s in scenes])
        low, high = float(sims[positive, k].min()), float(sims[~positive, k].max())
        if low > high:  # separable: halfway between
            thresholds.append(round((low + high) / 2, 4))
        else:  # overlap: the lowest cut that lets at most --max-false of the images without it through
            negatives = sims[~positive, k].sort(descending=True).values
            thresholds.append(round(float(negatives[int(args.max_false * len(negatives))]), 4))
        if args.verbose:
            print(f"{name}: calibration min(with) {low:.4f}, max(without) {high:.4f} -> threshold {thresholds[-1]:.4f}"
                  f"{'' if low > high else '  (NOT separable: some images fall on the wrong side)'}")
        separable += low > high
    print(f"{len(names)} concepts, {separable} separable on the calibration set ({args.n} images)")
    images, scenes = images_and_scenes(args.n, 424242)
    flagged = ((scorer.embed_images(images) @ embeds.T) > torch.tensor(thresholds)).any(-1)
    red = torch.tensor([is_red(s) for s in scenes])
    print(f"test set of {args.n}: red images blocked {float(flagged[red].float().mean()):.1%} ({int(red.sum())}), "
          f"others passed {float((~flagged[~red]).float().mean()):.1%} ({int((~red).sum())})")
    if args.write:
        print("wrote", save_concepts(args.write, names, embeds, thresholds))
    print(f"CPU time: {(time.process_time() - cpu0) / 60:.2f} CPU-minutes (1 thread)")


if __name__ == "__main__":
    main()
