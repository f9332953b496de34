"""Teach the bundled model a shape it has never seen (a five-pointed star) with each fine-tuning
method, then measure how often a star appears when asked for, and how much ordinary `shapes`
prompts suffer.

Why a star and not a new colour: the bundled model's VAE was trained on the eight palette colours
only and cannot reproduce pink: it decodes a pink square as a white-and-purple one (pink covered
5-19% of 8 drawn scenes, 0-0.2% of their VAE round trips; BENCHMARKS.md), so no method that keeps
the VAE could teach pink. Stars survive its encode/decode round trip.

Data: ~20 `shapes` scenes whose (first) object is a star (outer diameter = the object's side, inner
radius 0.382 of the outer: the regular pentagram outline), drawn as SHAPES.md draws the others
(4x supersampled, box-filtered) and captioned in the shapes grammar ("a small red star in the top
left on a black background"). `--star-sizes large` (or `medium large`) draws single-object scenes
with the star at those sizes only ("a large red star ..."), since the bundled VAE keeps only large and
some medium stars star-shaped; the concept prompts stay the same mix. After each method:

- concept: 100 prompts asking for a star (fresh scenes); images kept in OUT/METHOD-concept/. "Star appears": the checker
  (t2i.evaluate.shapes_checker.analyse_image) finds an object of the star's colour whose coverage
  fills at most 0.66 of its bounding box (a pentagram fills 0.33, 0.46-0.59 after the VAE;
  circles fill >= 0.72 even when generated, squares >= 0.9), that is compact (the checker's
  kappa22/kappa4 >= -0.25; `star_appears_strict` asks >= 1/6 as the first version did) and not
  bottom-heavy like a triangle (skewness of y above -0.28). "All correct": that, and every other
  attribute the checker scores for the prompt read with "circle" for "star" (count, colours,
  background, position, relation, the other object's shape) except the star's size;
  The bundled VAE returns small and most medium stars as rounded blobs (its round trip of the
  prompts' own drawings passes the checker for only about a third of them: `visible_stars`), so
  "star appears where visible" (the rate on those prompts) is the figure a method can reach 100% on;
- ordinary: 100 `shapes` prompts (evaluation_prompts), fully correct per the checker, compared
  with the base model on the same prompts and seeds;
- CPU-minutes of the fine-tuning process (data, class images, training, export), output size.

Every method but TI trains with prior preservation (80 class images the base model draws from 40
ordinary prompts, shared, made once); `--no-prior` leaves it out. How each method is used: LoRA merged at weight 1, the embedding named `star` (so it replaces the
word star in prompts), the hypernetwork at multiplier 1, the DreamBooth/full model folders. The
hypernetwork and LoRA stay active for the ordinary prompts too. `--init-embedding FILE` (pivotal
tuning) trains the LoRA with a star embedding (a ti run's OUT/ti/star.safetensors) standing for
the word and generates with both.

    nice python benchmarks/finetune_concept.py --out /tmp/ftbench [--methods lora ti] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

CONCEPT = "star"
INNER = 0.382  # inner / outer radius of a regular pentagram
METHODS = ("lora", "ti", "dreambooth", "hypernetwork", "full")
OPTIONS = {  # per method; everything else is t2i's default for the bundled model
    "lora": {"targets": "transformer", "conv_rank": 8},  # LoCon: new geometry needs the convolutions
    "ti": {"init_word": "circle", "vectors": 2},
    "dreambooth": {},
    "hypernetwork": {},
    "full": {},
}
# Prior preservation for every method but TI: CLASS_IMAGES images the base model draws from
# CLASS_PROMPTS ordinary `shapes` prompts (a prompt seed neither the evaluation nor the data uses),
# made once before the methods run and shared by them (their CPU time is reported on its own).
CLASS_PROMPTS, CLASS_IMAGES = 40, 80
STAR_FILL, STAR_SKEWNESS = 0.66, -0.28
# kappa22 / kappa4 at least the checker's own lower bound for a compact shape (RATIO_RANGE). The
# first version asked for 1/6 (a regular pentagram's is 1/3), but generated stars with one short
# arm came out at 0.13 and -0.23 and were missed (seen by eye); on the base model's objects for 100
# ordinary prompts the looser bound calls one more of 142 objects a star (4 instead of 3).
STAR_RATIO, STRICT_RATIO = -0.25, 1 / 6


# ----------------------------------------------------------------------------- data


def star_scenes(n: int, seed: int, sizes: tuple[str, ...] | None = None):
    """`shapes` scenes (SHAPES.md's distribution) whose first object is a star. `sizes` (e.g.
    ("large",)) keeps single-object scenes only (two-object scenes draw side 0.3, smaller than
    medium) with the star at one of those sizes; None is SHAPES.md's mix, as the concept prompts."""
    from dataclasses import replace

    from t2i.data.shapes import sample_scene

    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        scene = sample_scene(rng) if sizes is None else _resized(sample_scene(rng, p_two=0.0), sizes, rng)
        scenes.append(replace(scene, objects=(replace(scene.objects[0], shape=CONCEPT),) + scene.objects[1:]))
    return scenes


def _resized(scene, sizes: tuple[str, ...], rng: np.random.Generator):
    """A single-object scene at one of `sizes`, its caption still true: a caption with position
    and background but no size word reads as medium (SHAPES.md), so a large or small object's
    caption then states its size."""
    from dataclasses import replace

    from t2i.data.shapes import SIZES

    size = scene.size if scene.size in sizes else sizes[int(rng.integers(len(sizes)))]
    stated = scene.stated
    if stated == {"position", "background"} and size != "medium":
        stated = stated | {"size"}
    obj = replace(scene.objects[0], side=SIZES[size])
    return replace(scene, objects=(obj,), size=size, stated=frozenset(stated))


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), cy + r * math.sin(a))
            for k in range(10) for a, r in [(-math.pi / 2 + k * math.pi / 5, radius if k % 2 == 0 else radius * INNER)]]


def draw(scene, resolution: int = 64) -> Image.Image:
    """SHAPES.md's drawing, with the star added (here only)."""
    from t2i.data.shapes import PALETTE, SUPERSAMPLE

    canvas = resolution * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), PALETTE[scene.background])
    pen = ImageDraw.Draw(image)
    for obj in scene.objects:
        half, fill = obj.side / 2 * canvas, PALETTE[obj.color]
        cx, cy = obj.cx * canvas, obj.cy * canvas
        if obj.shape == CONCEPT:
            pen.polygon(_star(cx, cy, half), fill=fill)
        elif obj.shape == "triangle":
            pen.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
        else:
            box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
            (pen.ellipse if obj.shape == "circle" else pen.rectangle)(box, fill=fill)
    return image.resize((resolution, resolution), Image.BOX)


def write_dataset(folder: Path, n: int, seed: int, sizes: tuple[str, ...] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(star_scenes(n, seed, sizes)):
        draw(scene).save(folder / f"star-{i:03d}.png")
        (folder / f"star-{i:03d}.txt").write_text(scene.caption + "\n")


# ----------------------------------------------------------------------------- scoring


def is_star(obj, min_ratio: float = STAR_RATIO) -> bool:
    return obj.fill <= STAR_FILL and obj.skewness > STAR_SKEWNESS and obj.ratio >= min_ratio


def concept_correct(image: Image.Image, scene, min_ratio: float = STAR_RATIO) -> tuple[bool, bool]:
    """(a star of the asked colour appears, the rest of the prompt holds too; see the docstring)."""
    from t2i.evaluate.shapes_checker import analyse_image, compare, parse_prompt

    found = analyse_image(image)
    star = scene.objects[0]
    candidates = [o for o in found.objects if o.color == star.color]
    appears = bool(candidates) and is_star(candidates[0], min_ratio)
    if not appears:
        return False, False
    spec = parse_prompt(scene.caption.replace(CONCEPT, "circle"))
    attributes = compare(found, spec).attributes
    others = all(any(o.color == other.color and o.shape == other.shape for o in found.objects)
                 for other in scene.objects[1:])
    rest = all(ok for name, ok in attributes.items() if name not in ("shape", "size"))
    return True, rest and others


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def generate(model, prompts: list[str], seeds: list[int], embeddings=None, batch: int = 50, steps: int = 20,
             cfg_scale: float = 7.0) -> list[Image.Image]:
    """One image per prompt (seed i), many prompts per UNet batch; DPM++ 2M as `t2i generate`."""
    from t2i.diffusion.conditioning import PromptEncoder
    from t2i.diffusion.samplers import make_scheduler, resolve_sampler
    from t2i.diffusion.sampling import denoise, draw_noise, make_generators
    from t2i.models.common import to_pil_images

    encoder = PromptEncoder.from_model(model, embeddings=embeddings)
    sampler, schedule = resolve_sampler("DPM++ 2M")
    side = model.config.resolution // model.vae_scale_factor
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        cond = torch.cat([encoder.encode(p) for p in chunk])
        uncond = encoder.encode("")
        generators = make_generators(seeds[i:i + batch])
        noise = draw_noise(generators, (model.latent_channels, side, side))
        latents = denoise(model.unet, make_scheduler(sampler, schedule, model.scheduler_config()), noise, cond,
                          uncond, steps=steps, cfg_scale=cfg_scale, generators=generators)
        images += to_pil_images(model.decode_latents(latents))
    return images


def applied(method: str, output: Path, base, pivot: Path | None = None):
    """(model, embeddings, context) that generate with the method's result (and a LoRA's
    --init-embedding, as `t2i generate` would be given both)."""
    from t2i.checkpoints.registry import load_model
    from t2i.runtime import Runtime

    if method in ("dreambooth", "full"):
        return load_model(output, Runtime.auto("full", "cpu")).model, None, nullcontext()
    if method == "ti":
        from t2i.extra_networks.embeddings import load_embedding

        return base, [load_embedding(output)], nullcontext()
    if method == "hypernetwork":
        from t2i.extra_networks.hypernetwork import applying_hypernetworks, load_hypernetwork

        return base, None, applying_hypernetworks(base.unet, [(load_hypernetwork(output), 1.0)])
    if method == "lora":
        from t2i.extra_networks.embeddings import load_embedding

        return base, [load_embedding(pivot, CONCEPT)] if pivot else None, merged_lora(base, output)
    return base, None, nullcontext()


class merged_lora:
    def __init__(self, model, path: Path):
        self.model, self.path = model, path

    def __enter__(self):
        from t2i.extra_networks.lora import LoraTargets, merge_loras, read_lora

        self.backups = merge_loras(LoraTargets(self.model), [(read_lora(self.path), 1.0, 1.0)])

    def __exit__(self, *exc):
        from t2i.extra_networks.lora import restore_weights

        restore_weights(self.backups)


def visible_stars(model, scenes) -> list[bool]:
    """Whether the checker finds the star in the VAE round trip of each prompt's own drawing (the
    training pictures' style). The bundled VAE (64 px, 4x downsampling) returns small and most
    medium stars as rounded blobs that neither the checker nor an eye reads as stars, so no method
    that keeps the VAE can make those appear: this is the ceiling of `star_appears`."""
    from t2i.models.common import to_pil_images

    pixels = torch.stack([torch.from_numpy(np.asarray(draw(s), dtype=np.float32) / 255).permute(2, 0, 1) for s in scenes])
    with torch.no_grad():
        images = to_pil_images(model.decode_latents(model.encode_images(pixels * 2 - 1, sample=False)))
    return [concept_correct(image, scene)[0] for image, scene in zip(images, scenes)]


def star_scores(images: list[Image.Image], scenes, visible: list[bool]) -> dict:
    scores = [concept_correct(im, s) for im, s in zip(images, scenes)]
    seen = [a for (a, _), v in zip(scores, visible) if v]
    return {"star_appears": float(np.mean([a for a, _ in scores])), "concept_correct": float(np.mean([c for _, c in scores])),
            "star_appears_visible": float(np.mean(seen)) if seen else 0.0,
            "star_appears_strict": float(np.mean([concept_correct(im, s, STRICT_RATIO)[0] for im, s in zip(images, scenes)]))}


def evaluate(model, embeddings, context, concept_scenes, ordinary: list[str], seed: int, visible: list[bool]) -> dict:
    from t2i.evaluate.shapes_checker import check

    with context:
        concept_images = generate(model, [s.caption for s in concept_scenes], list(range(seed, seed + len(concept_scenes))),
                                  embeddings)
        ordinary_images = generate(model, ordinary, list(range(seed, seed + len(ordinary))), embeddings)
    return {**star_scores(concept_images, concept_scenes, visible),
            "ordinary_correct": float(np.mean([check(im, p).correct for im, p in zip(ordinary_images, ordinary)])),
            "examples": concept_images[:8], "concept_images": concept_images}


def save_images(images: list[Image.Image], folder: Path) -> None:
    """Every concept image, to check the star checker by eye or re-score them (`--rescore`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")


def size_of(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    import t2i
    from t2i.checkpoints.registry import load_model
    from t2i.evaluate.shapes_checker import evaluation_prompts
    from t2i.outputs import make_grid
    from t2i.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--images", type=int, default=20, help="training pictures of the concept")
    parser.add_argument("--prompts", type=int, default=100, help="concept prompts and ordinary prompts, each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="override every method's steps")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra options for every method")
    parser.add_argument("--no-prior", action="store_true", help="train without prior preservation")
    parser.add_argument("--init-embedding", type=Path, default=None,
                        help="lora: pivotal tuning from this star embedding (e.g. OUT/ti/star.safetensors of a ti "
                             "run); the embedding is used with the LoRA when generating too")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT/METHOD to --steps (t2i's exact resume; with the constant "
                             "learning rate of these runs that equals a run started with those steps); "
                             "CPU-minutes then count the added steps only")
    parser.add_argument("--star-sizes", nargs="+", default=None, choices=("small", "medium", "large"),
                        help="draw the training pictures' stars at these sizes only, single-object scenes "
                             "(default: SHAPES.md's mix of sizes and two-object scenes); the concept prompts "
                             "stay the mix. The pictures go to OUT/pictures-SIZES instead of OUT/pictures")
    parser.add_argument("--rescore", action="store_true",
                        help="only re-score the saved concept images of OUT (after a change to the star checker)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = tuple(args.star_sizes) if args.star_sizes else None
    data = args.out / ("pictures" if sizes is None else "pictures-" + "-".join(sizes))
    if not data.is_dir():
        write_dataset(data, args.images, seed=2024, sizes=sizes)
    concept_scenes = star_scenes(args.prompts, seed=777)
    ordinary = evaluation_prompts(args.prompts, seed=4242)
    base = load_model(None, Runtime.auto("full", "cpu")).model
    results = {}
    results_path = args.out / "results.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
    visible = visible_stars(base, concept_scenes)
    results["ceiling"] = {"visible": int(sum(visible)), "of": len(visible)}
    if args.rescore:
        for key in [k for k in results if (args.out / f"{k}-concept").is_dir()]:
            images = [Image.open(args.out / f"{key}-concept" / f"{i:03d}.png").convert("RGB") for i in range(len(visible))]
            results[key].update(star_scores(images, concept_scenes, visible))
        results_path.write_text(json.dumps(results, indent=2))
        args.methods = []
    if "base" not in results:
        found = evaluate(base, None, nullcontext(), concept_scenes, ordinary, seed=90_000, visible=visible)
        save_images(found.pop("concept_images"), args.out / "base-concept")
        results["base"] = {k: v for k, v in found.items() if k != "examples"}
    extra = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    prior = {}
    if not args.no_prior and args.methods:
        from t2i.training.finetune.sampling import make_class_images

        prompts = evaluation_prompts(CLASS_PROMPTS, seed=99)
        start = time.process_time()
        made = make_class_images(base, prompts, CLASS_IMAGES, args.out / "class_images")
        if made:
            results["class_images"] = {"count": made, "cpu_minutes": (time.process_time() - start) / 60}
        prior = {"class_prompts": prompts, "class_images": CLASS_IMAGES, "class_dir": str(args.out / "class_images")}
    for method in args.methods:
        outdir = args.out / method
        options = {**OPTIONS[method], **(prior if method != "ti" else {}), **extra,
                   **({"steps": args.steps} if args.steps else {}),
                   **({"init_embedding": str(args.init_embedding)} if args.init_embedding and method == "lora" else {})}
        start = time.process_time()
        output = t2i.finetune(method, model="default", data=data, outdir=outdir, name=CONCEPT, sample_every=0,
                              log_every=100, resume=args.resume, **options)
        minutes = (time.process_time() - start) / 60
        model, embeddings, context = applied(method, output, base, args.init_embedding if method == "lora" else None)
        found = evaluate(model, embeddings, context, concept_scenes, ordinary, seed=90_000, visible=visible)
        make_grid(found.pop("examples"), cols=8).save(args.out / f"{method}-examples.png")
        save_images(found.pop("concept_images"), args.out / f"{method}-concept")
        shown = {k: v for k, v in options.items() if k != "class_prompts"}
        results[method] = {**found, "cpu_minutes": minutes, "bytes": size_of(output), "options": shown,
                           **({"star_sizes": list(sizes)} if sizes else {})}
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps({method: results[method]}), flush=True)
    c = results["ceiling"]
    print(f"\nceiling: the checker finds the star in the VAE round trip of {c['visible']} of the {c['of']} prompts' "
          f"own drawings; 'where visible' is the star rate on those prompts")
    print(f"\n| method | star appears | (first rule, ratio >= 1/6) | star appears where visible | concept all correct | ordinary correct (base {results['base']['ordinary_correct']:.0%}) "
          f"| drop | CPU-minutes | output size |")
    print("|---|---|---|---|---|---|---|---|---|")
    b = results["base"]
    print(f"| base model | {b['star_appears']:.0%} | {b.get('star_appears_strict', 0):.0%} | {b.get('star_appears_visible', 0):.0%} | {b['concept_correct']:.0%} | {b['ordinary_correct']:.0%} | - | - | - |")
    if "class_images" in results:
        print(f"class images: {results['class_images']['count']} in {results['class_images']['cpu_minutes']:.1f} "
              f"CPU-minutes (shared by the methods with prior preservation)")
    for method in METHODS:
        if method in results:
            r = results[method]
            drop = (b["ordinary_correct"] - r["ordinary_correct"]) * 100
            size = f"{r['bytes'] / 2**20:.2f} MiB" if r["bytes"] >= 2**20 else f"{r['bytes'] / 1024:.1f} KiB"
            print(f"| {method} | {r['star_appears']:.0%} | {r.get('star_appears_strict', 0):.0%} | {r.get('star_appears_visible', 0):.0%} | {r['concept_correct']:.0%} | {r['ordinary_correct']:.0%} | "
                  f"{drop:+.0f} pts | {r['cpu_minutes']:.1f} | {size} |")


if __name__ == "__main__":
    main()
