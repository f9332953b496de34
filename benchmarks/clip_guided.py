"""CLIP-guided generation (t2i.pipelines.clip_guided) from the bundled model's VAE latent, judged
by the `shapes` prompt checker: per-attribute accuracy, fully-correct share, and CPU-seconds
(process time) per image. One image per prompt, image i from seed image_seed + i.

    OMP_NUM_THREADS=1 python benchmarks/clip_guided.py --n 50 --steps 30 --init noise blank [--lr 0.1]
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch

    from t2i.checkpoints.registry import load_model
    from t2i.evaluate.clip_scorer import load_scorer
    from t2i.evaluate.shapes_checker import check, evaluation_prompts, score
    from t2i.pipelines.clip_guided import clip_guided
    from t2i.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--prompt-seed", type=int, default=12345)
    parser.add_argument("--image-seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.1])
    parser.add_argument("--init", nargs="+", default=["noise", "blank"])
    parser.add_argument("--tv", type=float, default=0.0, help="total-variation weight")
    parser.add_argument("--save", default=None, help="folder for the images")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(None, Runtime.auto("full", "cpu")).model
    scorer = load_scorer(None)
    f = model.vae_scale_factor
    shape = (model.latent_channels, model.config.resolution // f, model.config.resolution // f)
    prompts = evaluation_prompts(args.n, args.prompt_seed)
    print(f"{args.n} prompts, {args.steps} steps, tv {args.tv}, 1 thread")
    for init in args.init:
        for lr in args.lr:
            results, gains, start = [], [], time.process_time()
            for i, prompt in enumerate(prompts):
                images, history = clip_guided(model.decode_latents, shape, scorer, prompt, 1, args.image_seed + i,
                                              args.steps, lr, init, freeze=(model,), tv=args.tv)
                results.append(check(images[0], prompt))
                gains.append((history[0], history[-1]))
                if args.save:
                    from pathlib import Path

                    Path(args.save).mkdir(parents=True, exist_ok=True)
                    images[0].save(Path(args.save) / f"{init}-{lr}-{i:03d}.png")
            cpu = (time.process_time() - start) / len(prompts)
            s = score(results)
            sim0 = sum(g[0] for g in gains) / len(gains)
            sim1 = sum(g[1] for g in gains) / len(gains)
            attrs = ", ".join(f"{k} {v:.0%}" for k, v in s["attributes"].items())
            print(f"init {init}, lr {lr}: fully correct {s['correct']:.0%}; {attrs}; CLIP cos {sim0:.3f} -> "
                  f"{sim1:.3f}; {cpu:.2f} CPU-s/image", flush=True)


if __name__ == "__main__":
    main()
