"""CLIP-guided generation (t2i.pipelines.clip_guided) with the bundled model, judged by the
`shapes` prompt checker: per-attribute accuracy, fully-correct share, and CPU-seconds (process
time) per image. One image per prompt, image i from seed image_seed + i.

    # optimise the VAE latent (Adam)
    OMP_NUM_THREADS=1 python benchmarks/clip_guided.py --n 50 --steps 30 --init noise blank [--lr 0.1]
    # CLIP-guided diffusion: the LDM sampled with an empty prompt, steered by CLIP's gradient
    OMP_NUM_THREADS=1 python benchmarks/clip_guided.py --method diffusion --n 50 --steps 20 --scale 10 30

--clip FOLDER: a transformers CLIPModel folder instead of the bundled CLIP.
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
    parser.add_argument("--method", choices=("optimize", "diffusion", "diffusion-x0"), default="optimize")
    parser.add_argument("--scale", type=float, nargs="+", default=[100.0], help="diffusion: CLIP guidance scales")
    parser.add_argument("--sampler", default="DDIM", help="diffusion: the sampler")
    parser.add_argument("--clip", default=None, help="a CLIPModel folder (default: the bundled CLIP)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(None, Runtime.auto("full", "cpu")).model
    scorer = load_scorer(args.clip)
    if args.method.startswith("diffusion"):
        return _diffusion(args, model, scorer)
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


def _diffusion(args, model, scorer) -> None:
    import torch

    from t2i.evaluate.shapes_checker import check, evaluation_prompts, score
    from t2i.pipelines.clip_guided import sample_clip_guided
    from t2i.pipelines.sample_params import SampleParams

    prompts = evaluation_prompts(args.n, args.prompt_seed)
    print(f"{args.n} prompts, method {args.method}, {args.sampler} {args.steps} steps, CLIP {scorer.name}, 1 thread")
    for scale in args.scale:
        results, sims, start = [], [], time.process_time()
        for i, prompt in enumerate(prompts):
            params = SampleParams(n=1, seed=args.image_seed + i, steps=args.steps, sampler=args.sampler,
                                  clip_guided=prompt, clip_guidance_method=args.method, clip_guidance_scale=scale)
            _, info, images = sample_clip_guided(model, params, "default", scorer)
            results.append(check(images[0], prompt))
            sims.append(info.split("CLIP similarity: ")[1].split(",")[0] if "CLIP similarity: " in info else "-")
            if args.save:
                from pathlib import Path

                Path(args.save).mkdir(parents=True, exist_ok=True)
                images[0].save(Path(args.save) / f"{args.method}-{scale}-{i:03d}.png")
        cpu = (time.process_time() - start) / len(prompts)
        s = score(results)
        attrs = ", ".join(f"{k} {v:.0%}" for k, v in s["attributes"].items())
        print(f"scale {scale}: fully correct {s['correct']:.0%}; {attrs}; {cpu:.2f} CPU-s/image "
              f"(threads {torch.get_num_threads()})", flush=True)


if __name__ == "__main__":
    main()
