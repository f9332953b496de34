"""Does the CLIP score agree with the prompt checker? Generated images, scored both ways.

Images from the bundled model for `shapes` prompts (evaluation_prompts), at several settings so
that quality varies (few steps and low guidance give more wrong images), plus a set scored
against another image's prompt (a mismatch the checker should reject). Each image is written
with its prompt in the infotext, then scored with `t2i evaluate clip-score`'s code
(t2i.evaluate.clip_score.folder_clip_scores) and judged by t2i.evaluate.shapes_checker.
Prints: per-setting mean CLIP score and checker accuracy; over all images the point-biserial
(Pearson) correlation of the CLIP score with "fully correct", its Spearman correlation with the
share of stated attributes the checker finds right, and the AUC of the score for telling correct
from wrong.

    OMP_NUM_THREADS=1 python benchmarks/clip_score_correlation.py --n-per 100 --out /tmp/clipscore
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prompt_accuracy import generate_many

SETTINGS = [(3, 2.0), (5, 5.0), (10, 5.0), (20, 7.0)]  # (steps, cfg): worst to best


def ranks(x: np.ndarray) -> np.ndarray:
    order = x.argsort(kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for value in np.unique(x):  # ties share their mean rank
        r[x == value] = r[x == value].mean()
    return r


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return float("nan")
    return float((ranks(np.concatenate([pos, neg]))[:len(pos)].sum() - len(pos) * (len(pos) - 1) / 2)
                 / (len(pos) * len(neg)))


def main() -> None:
    import t2i
    from t2i.evaluate.clip_score import folder_clip_scores
    from t2i.evaluate.clip_scorer import load_scorer
    from t2i.evaluate.shapes_checker import check, evaluation_prompts
    from t2i.metadata import write_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-per", type=int, default=100, help="images per setting (5 sets: 4 settings + mismatched)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the images (written with infotext)")
    ap.add_argument("--clip", help="CLIP folder (default: the bundled CLIP)")
    ap.add_argument("--prompt-seed", type=int, default=2468)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu0 = time.process_time()
    loaded = t2i.load(None, precision="full")
    prompts = evaluation_prompts(args.n_per, args.prompt_seed)
    seeds = [7000 + i for i in range(args.n_per)]
    sets = {}
    for steps, cfg in SETTINGS:
        sets[f"{steps} steps, cfg {cfg:g}"] = (generate_many(loaded, prompts, seeds, "DPM++ 2M", steps, cfg, 25), prompts)
    best = sets[f"{SETTINGS[-1][0]} steps, cfg {SETTINGS[-1][1]:g}"][0]
    shifted = prompts[1:] + prompts[:1]  # each image against its neighbour's prompt
    sets["mismatched prompt (20 steps)"] = (best, shifted)
    cpu_gen = time.process_time() - cpu0
    judged = {}
    for k, (name, (images, texts)) in enumerate(sets.items()):
        folder = args.out / f"set{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, (image, prompt) in enumerate(zip(images, texts)):
            write_image(image, folder / f"{i:04d}.png", f"{prompt}\nSteps: 20, Sampler: DPM++ 2M, Seed: {seeds[i]}")
        judged[name] = [check(image, prompt) for image, prompt in zip(images, texts)]
    cpu1 = time.process_time()
    scorer = load_scorer(args.clip)
    clip = {}
    for k, name in enumerate(sets):
        scored, _ = folder_clip_scores(scorer, args.out / f"set{k}")
        clip[name] = np.array([s.score for s in scored])
    cpu_score = time.process_time() - cpu1
    print(f"CLIP {scorer.name}; {args.n_per} prompts per set (prompt seed {args.prompt_seed}); bundled model, DPM++ 2M")
    print("| set | checker: fully correct | mean CLIP score | mean, correct | mean, wrong |")
    print("|---|---|---|---|---|")
    all_scores, all_correct, all_share = [], [], []
    for name in sets:
        correct = np.array([r.correct for r in judged[name]])
        share = np.array([np.mean(list(r.attributes.values())) if r.attributes else 0.0 for r in judged[name]])
        s = clip[name]
        print(f"| {name} | {correct.mean():.1%} | {s.mean():.2f} | {s[correct].mean() if correct.any() else float('nan'):.2f} "
              f"| {s[~correct].mean() if (~correct).any() else float('nan'):.2f} |")
        all_scores.append(s), all_correct.append(correct), all_share.append(share)
    s, c, share = np.concatenate(all_scores), np.concatenate(all_correct), np.concatenate(all_share)
    pearson = float(np.corrcoef(s, c.astype(float))[0, 1])
    spearman = float(np.corrcoef(ranks(s), ranks(share))[0, 1])
    print(f"\nall {len(s)} images: {c.mean():.1%} fully correct; point-biserial r(CLIP score, correct) = {pearson:.3f}; "
          f"Spearman rho(CLIP score, share of attributes right) = {spearman:.3f}; AUC = {auc(s, c):.3f}")
    print(f"CPU time: generation {cpu_gen / 60:.2f} CPU-min, CLIP scoring {cpu_score / 60:.2f} CPU-min "
          f"({1000 * cpu_score / len(s):.1f} CPU-ms/image), {args.threads} thread(s)")


if __name__ == "__main__":
    main()
