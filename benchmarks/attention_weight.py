"""Does an attention weight `(word:1.5)` decide an ambiguous prompt? Measured on a shapes model.

Design. Each case is a `shapes` caption in which one attribute is stated twice with two
different values, so the prompt alone does not say which to draw:

    color     a red blue circle on a white background
    shape     a red circle square on a white background
    size      a small large red circle on a white background
    position  a red circle in the top left in the bottom right on a white background

One of the two values is the target (drawn at random, so first and second place are targeted
equally often and word order cannot pass for an effect of the weight). Each case is generated
twice with the same seed: unweighted, and with the target's words in `(...:W)` (default 1.5, the
web UI's "Original" emphasis as t2i.diffusion.conditioning applies it). The checker
(t2i.evaluate.shapes_checker) scores both images against the unambiguous caption that states
only the target value, and the table reports, per attribute kind, how often that attribute
matches the target:

- unweighted: the share a model gives the target when it must pick between the two words
  (about 50% if it picks at random; far from 50% shows a preference for first or last place);
- weighted: the same with the weight on the target; the difference is the weight's effect;
- other: the share of weighted images showing the *other* value (what the weight moved away).

Everything else in the caption (colour, shape, background) is random but consistent: the two
colours of a colour case and the background all differ. Cases come from `--prompt-seed`,
images from `--image-seed` + i, so a run is reproducible.

    python benchmarks/attention_weight.py --n 200 [--weight 1.5] [--kinds color shape size position]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("color", "shape", "size", "position")


@dataclass(frozen=True)
class Case:
    kind: str
    plain: str  # both values, unweighted
    weighted: str  # both values, the target's words weighted
    target: str  # the unambiguous caption with the target value only
    other: str  # the unambiguous caption with the other value only


def make_case(kind: str, rng: np.random.Generator, weight: float) -> Case:
    from t2i.data.shapes import COLORS, POSITIONS, SHAPES, article

    color, second_color, background = (COLORS[i] for i in rng.permutation(len(COLORS))[:3])
    shape = SHAPES[rng.integers(len(SHAPES))]
    values = {
        "color": (color, second_color),
        "shape": tuple(SHAPES[i] for i in rng.permutation(len(SHAPES))[:2]),
        "size": ("small", "large"),
        "position": tuple(list(POSITIONS)[i] for i in rng.permutation(len(POSITIONS))[:2]),
    }[kind]
    first, second = values if rng.random() < 0.5 else values[::-1]
    target_first = rng.random() < 0.5
    tagged = (f"({first}:{weight:g})", second) if target_first else (first, f"({second}:{weight:g})")
    target, other = (first, second) if target_first else (second, first)

    def caption(words: tuple[str, ...]) -> str:
        # words: the value(s) of `kind` in the order they are written
        text = {
            "color": lambda: f"{' '.join(words)} {shape}",
            "shape": lambda: f"{color} {' '.join(words)}",
            "size": lambda: f"{' '.join(words)} {color} {shape}",
            "position": lambda: f"{color} {shape} {' '.join(words)}",
        }[kind]()
        bare = text.lstrip("(")
        return f"{article(bare)} {text} on {article(background)} {background} background"

    return Case(kind, caption((first, second)), caption(tagged), caption((target,)), caption((other,)))


def generate(loaded, prompts: list[str], seeds: list[int], sampler: str, steps: int, cfg_scale: float,
             batch_size: int):
    """Images for different prompts in shared UNet batches, with the web UI's prompt syntax."""
    from t2i.diffusion.conditioning import PromptEncoder
    from t2i.diffusion.samplers import make_scheduler, resolve_sampler
    from t2i.diffusion.sampling import denoise, draw_noise, make_generators
    from t2i.pipelines.txt2img import latents_to_images

    model = loaded.model
    name, schedule = resolve_sampler(sampler)
    encoder = PromptEncoder.from_model(model)
    size = model.config.resolution // model.vae_scale_factor
    images = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        with torch.no_grad():
            cond = torch.cat([encoder.encode(p) for p in chunk])  # one 1-chunk (1, T, D) encoding each
            uncond = encoder.empty
        generators = make_generators(seeds[i:i + batch_size])
        noise = draw_noise(generators, (model.latent_channels, size, size))
        latents = denoise(model.unet, make_scheduler(name, schedule, model.scheduler_config()), noise, cond, uncond,
                          steps=steps, cfg_scale=cfg_scale, generators=generators)
        images += latents_to_images(model, latents)
    return images


def main() -> None:
    import t2i
    from t2i.evaluate.shapes_checker import check

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--n", type=int, default=200, help="cases per attribute kind")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--weight", type=float, default=1.5)
    parser.add_argument("--prompt-seed", type=int, default=777)
    parser.add_argument("--image-seed", type=int, default=5000)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--show", type=int, default=0, help="print this many example cases per kind")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = t2i.load(args.model, precision="full")
    print(f"model {loaded.name} ({loaded.hash}), {args.n} cases per kind, weight {args.weight:g}, {args.sampler}, "
          f"{args.steps} steps, cfg {args.cfg:g}, torch threads {torch.get_num_threads()}")
    rng = np.random.default_rng(args.prompt_seed)
    rows = []
    for kind in args.kinds:
        cases = [make_case(kind, rng, args.weight) for _ in range(args.n)]
        seeds = [args.image_seed + i for i in range(args.n)]
        start = time.perf_counter()
        plain = generate(loaded, [c.plain for c in cases], seeds, args.sampler, args.steps, args.cfg, args.batch_size)
        weighted = generate(loaded, [c.weighted for c in cases], seeds, args.sampler, args.steps, args.cfg,
                            args.batch_size)
        seconds = time.perf_counter() - start
        hit_plain = [check(im, c.target).attributes[kind] for im, c in zip(plain, cases)]
        hit_weighted = [check(im, c.target).attributes[kind] for im, c in zip(weighted, cases)]
        hit_other = [check(im, c.other).attributes[kind] for im, c in zip(weighted, cases)]
        rows.append((kind, np.mean(hit_plain), np.mean(hit_weighted), np.mean(hit_other), seconds))
        for c in cases[:args.show]:
            print(f"  {kind}: {c.weighted!r} -> target {c.target!r}")
    print(f"| attribute | unweighted: target | weighted {args.weight:g}: target | weighted: other | "
          f"change | seconds |")
    print("|---|---|---|---|---|---|")
    for kind, plain, weighted, other, seconds in rows:
        print(f"| {kind} | {plain:.1%} | {weighted:.1%} | {other:.1%} | {100 * (weighted - plain):+.1f} pt | "
              f"{seconds:.0f} |")


if __name__ == "__main__":
    main()
