"""Zero-shot attribute accuracy of a CLIP on held-out `shapes` images, by ranking caption candidates.

Every full caption of the shapes grammar is a candidate; each attribute is read from its marginal
over the candidates (t2i.evaluate.clip_captions.rank_shapes). Single-object scenes: colour, shape,
size, position, background (candidates: single-object captions only). Two-object scenes: the
objects' colours and shapes, the relation, the background (candidates: all captions, so the
object count is scored too).

    OMP_NUM_THREADS=1 python benchmarks/clip_zero_shot.py                    # the bundled CLIP
    OMP_NUM_THREADS=1 python benchmarks/clip_zero_shot.py --clip runs/clip   # a run folder
"""
from __future__ import annotations

import argparse
import time

import torch

from t2i.data.shapes import ShapesDataset
from t2i.evaluate.clip_captions import rank_shapes
from t2i.evaluate.clip_scorer import load_scorer


def truth_single(scene) -> dict[str, str]:
    obj = scene.objects[0]
    return {"color": obj.color, "shape": obj.shape, "size": scene.size, "position": scene.position,
            "background": scene.background}


def truth_pair(scene) -> dict[str, str]:
    a, b = scene.objects
    return {"objects": "2", "color": a.color, "shape": a.shape, "relation": scene.relation,
            "color_b": b.color, "shape_b": b.shape, "background": scene.background}


def accuracy(ranked, truths) -> dict[str, float]:
    names = list(truths[0])
    acc = {name: sum(r.scores.get(name, ("", 0))[0] == t[name] for r, t in zip(ranked, truths)) / len(truths)
           for name in names}
    acc["all"] = sum(all(r.scores.get(n, ("", 0))[0] == t[n] for n in names) for r, t in zip(ranked, truths)) / len(truths)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", help="CLIP folder or run folder (default: the bundled CLIP)")
    ap.add_argument("--n", type=int, default=1000, help="held-out images per table")
    ap.add_argument("--seed", type=int, default=4242, help="shapes seed (training uses 0)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu0 = time.process_time()
    scorer = load_scorer(args.clip)
    params = sum(p.numel() for p in scorer.model.parameters())
    print(f"CLIP {scorer.name}: {params / 1e6:.2f}M parameters; {args.n} held-out images per table, seed {args.seed}")
    single = ShapesDataset(args.n, args.seed, 64, p_two=0.0, p_short=0.0)
    items = [single[i] for i in range(args.n)]
    acc = accuracy(rank_shapes(scorer, [it["image"] for it in items], single_only=True),
                   [truth_single(it["scene"]) for it in items])
    print("\nsingle-object scenes (single-object candidates)")
    print(" | ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    pairs = ShapesDataset(args.n, args.seed + 1, 64, p_two=1.0, p_short=0.0)
    items = [pairs[i] for i in range(args.n)]
    acc = accuracy(rank_shapes(scorer, [it["image"] for it in items]), [truth_pair(it["scene"]) for it in items])
    print("\ntwo-object scenes (all candidates)")
    print(" | ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    print(f"\nCPU time: {(time.process_time() - cpu0) / 60:.2f} CPU-minutes ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
