"""Teach the bundled model a shape it has never seen (`--concept star`: a five-pointed star, the
default; `--concept ring`: a circle with a round hole) with each fine-tuning method, then measure
how often the shape appears when asked for, and how much ordinary `shapes` prompts suffer.

Why a shape and not a new colour: the bundled model's VAE was trained on the eight palette colours
only and turns every other colour into one of them or a blend (pink comes back pale lilac or
white, cyan blue or green, brown green, grey red or purple: benchmarks/vae_new_concepts.py), so no
method that keeps the VAE could teach a colour. Why a ring besides the star: the VAE returns small
and most medium stars as rounded blobs (the round trip of the concept prompts' own drawings shows a
star for 35 of 100), while it keeps a ring's hole at every size (98 of 100); concept_shapes.py
draws both and checks for them.

Data: ~20 `shapes` scenes whose (first) object is the concept, drawn as SHAPES.md draws the others
and captioned in the shapes grammar ("a small red ring in the top left on a black background").
`--sizes large` (or `medium large`) draws single-object scenes with the concept at those sizes only
("a large red star ..."); the concept prompts stay SHAPES.md's mix. After each method:

- concept: 100 prompts asking for the concept (fresh scenes); images kept in OUT/METHOD-concept/.
  "Appears": the largest object of the asked colour passes concept_shapes' check (stars: its fill,
  compactness and skewness; `appears_strict` is the first, stricter star rule; rings: a
  background-coloured middle inside a band of the object's colour). "All correct": that, and every
  other attribute the checker scores for the prompt read with "circle" for the concept word
  (count, colours, background, position, relation, the other object's shape) except its size.
  "Where visible": the rate on the prompts whose own drawing keeps the concept through the VAE
  (`visible_concepts`), the figure a method can reach 100% on;
- ordinary: 100 `shapes` prompts (evaluation_prompts), fully correct per the checker, compared
  with the base model on the same prompts and seeds;
- CPU-minutes of the fine-tuning process (data, class images, training, export), output size.

Every method but TI trains with prior preservation (80 class images the base model draws from 40
ordinary prompts, shared, made once); `--no-prior` leaves it out. How each method is used: LoRA
merged at weight 1, the embedding named after the concept (so it replaces the word in prompts), the
hypernetwork at multiplier 1, the DreamBooth/full model folders. The hypernetwork and LoRA stay
active for the ordinary prompts too. `--init-embedding FILE` (pivotal tuning) trains the LoRA with a
concept embedding (a ti run's OUT/ti/star.safetensors) standing for the word and generates with both.
`--init-word circle` (DreamBooth, full) trains from a copy of the bundled model whose concept word's
token embedding starts as circle's (BENCHMARKS: it made the ring rarer, 51 -> 34%).

    nice python benchmarks/finetune_concept.py --out /tmp/ftbench [--concept ring] [--methods lora ti] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from concept_shapes import (
    CONCEPTS,
    STRICT_RATIO,
    concept_correct,
    concept_scenes,
    draw,
    write_dataset,
)
from PIL import Image

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
# made once before the methods run and shared by them (their CPU time is reported on its own);
# `--class-prompts N --class-images M` change the counts (the images then go to their own folder).
CLASS_PROMPTS, CLASS_IMAGES = 40, 80


# ----------------------------------------------------------------------------- generation


def write_shapes_images(folder: Path, n: int, seed: int) -> None:
    """`n` scenes of the built-in shapes dataset with their caption sidecars (once: a folder that
    exists is kept). A seed the evaluation prompts and the concept pictures do not use. Same
    distribution as `t2i data export shapes`, other scenes (one generator here, one per index
    there); kept as it is so the BENCHMARKS rows made with it reproduce."""
    from t2i.data.shapes import draw_scene, sample_scene, scene_caption

    if folder.is_dir():
        return
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        scene = sample_scene(rng)
        draw_scene(scene).save(partial / f"shapes-{i:04d}.png")
        (partial / f"shapes-{i:04d}.txt").write_text(scene_caption(scene) + "\n")
    partial.rename(folder)


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


def applied(method: str, output: Path, base, concept: str, pivot: Path | None = None, lora_weight: float = 1.0):
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
        from t2i.extra_networks.hypernetwork import (
            applying_hypernetworks,
            load_hypernetwork,
        )

        return base, None, applying_hypernetworks(base.unet, [(load_hypernetwork(output), 1.0)])
    if method == "lora":
        from t2i.extra_networks.embeddings import load_embedding

        return base, [load_embedding(pivot, concept)] if pivot else None, merged_lora(base, output, lora_weight)
    return base, None, nullcontext()


class merged_lora:
    def __init__(self, model, path: Path, weight: float = 1.0):
        self.model, self.path, self.weight = model, path, weight

    def __enter__(self):
        from t2i.extra_networks.lora import LoraTargets, merge_loras, read_lora

        self.backups = merge_loras(LoraTargets(self.model), [(read_lora(self.path), self.weight, self.weight)])

    def __exit__(self, *exc):
        from t2i.extra_networks.lora import restore_weights

        restore_weights(self.backups)


def visible_concepts(model, scenes) -> list[bool]:
    """Whether the check finds the concept in the VAE round trip of each prompt's own drawing (the
    training pictures' style). The bundled VAE (64 px, 4x downsampling) returns small and most
    medium stars as rounded blobs that neither the checker nor an eye reads as stars, so no method
    that keeps the VAE can make those appear: this is the ceiling of `appears` (98 of 100 for the
    ring, 35 for the star)."""
    from t2i.models.common import to_pil_images

    pixels = torch.stack([torch.from_numpy(np.asarray(draw(s), dtype=np.float32) / 255).permute(2, 0, 1) for s in scenes])
    with torch.no_grad():
        images = to_pil_images(model.decode_latents(model.encode_images(pixels * 2 - 1, sample=False)))
    return [concept_correct(image, scene)[0] for image, scene in zip(images, scenes)]


def concept_scores(images: list[Image.Image], scenes, visible: list[bool]) -> dict:
    scores = [concept_correct(im, s) for im, s in zip(images, scenes)]
    seen = [a for (a, _), v in zip(scores, visible) if v]
    return {"appears": float(np.mean([a for a, _ in scores])), "concept_correct": float(np.mean([c for _, c in scores])),
            "appears_visible": float(np.mean(seen)) if seen else 0.0,
            "appears_strict": float(np.mean([concept_correct(im, s, STRICT_RATIO)[0] for im, s in zip(images, scenes)]))}


def evaluate(model, embeddings, context, scenes, ordinary: list[str], seed: int, visible: list[bool]) -> dict:
    from t2i.evaluate.shapes_checker import check

    with context:
        concept_images = generate(model, [s.caption for s in scenes], list(range(seed, seed + len(scenes))),
                                  embeddings)
        ordinary_images = generate(model, ordinary, list(range(seed, seed + len(ordinary))), embeddings)
    return {**concept_scores(concept_images, scenes, visible),
            "ordinary_correct": float(np.mean([check(im, p).correct for im, p in zip(ordinary_images, ordinary)])),
            "examples": concept_images[:8], "concept_images": concept_images}


def save_images(images: list[Image.Image], folder: Path) -> None:
    """Every concept image, to check the concept check by eye or re-score them (`--rescore`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(folder / f"{i:03d}.png")


def base_with_word_from(folder: Path, word: str, init_word: str) -> Path:
    """A copy of the bundled model in which `word`'s token embedding is `init_word`'s (the mean of
    its tokens'), so a new word starts as a known one ("ring" from "circle"); made once."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import CLIPTokenizer

    from t2i.checkpoints.registry import bundled_model_dir

    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(bundled_model_dir(), partial)
    tokenizer = CLIPTokenizer.from_pretrained(partial / "tokenizer")
    weights_path = partial / "text_encoder" / "model.safetensors"
    weights = load_file(weights_path)
    key = next(k for k in weights if k.endswith("token_embedding.weight"))
    source = weights[key][tokenizer(init_word, add_special_tokens=False).input_ids].mean(0)
    for token in tokenizer(word, add_special_tokens=False).input_ids:
        weights[key][token] = source
    save_file(weights, weights_path)
    partial.rename(folder)
    return folder


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
                        help="lora: pivotal tuning from this concept embedding (e.g. OUT/ti/star.safetensors of a ti "
                             "run); the embedding is used with the LoRA when generating too")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT/METHOD to --steps (t2i's exact resume; with the constant "
                             "learning rate of these runs that equals a run started with those steps); "
                             "CPU-minutes then count the added steps only")
    parser.add_argument("--concept", default="star", choices=CONCEPTS,
                        help="the new shape to teach (concept_shapes.py); the ring is the one the bundled VAE "
                             "can draw at every size")
    parser.add_argument("--sizes", "--star-sizes", nargs="+", default=None, choices=("small", "medium", "large"),
                        help="draw the training pictures' concept at these sizes only, single-object scenes "
                             "(default: SHAPES.md's mix of sizes and two-object scenes); the concept prompts "
                             "stay the mix. The pictures go to OUT/pictures-SIZES instead of OUT/pictures")
    parser.add_argument("--balanced", action="store_true",
                        help="draw the training pictures as large, medium and small single-object scenes and "
                             "two-object scenes in turn (OUT/pictures-balanced) instead of SHAPES.md's random mix")
    parser.add_argument("--lora-weight", type=float, default=1.0,
                        help="lora: the weight it is used at (as <lora:NAME:W>); the results are kept as lora@W. "
                             "With --resume and the --steps of a finished run, only re-evaluates it")
    parser.add_argument("--class-prompts", type=int, default=CLASS_PROMPTS, help="prior preservation: ordinary prompts")
    parser.add_argument("--class-images", type=int, default=CLASS_IMAGES, help="prior preservation: images of them")
    parser.add_argument("--class-source", choices=("model", "shapes"), default="model",
                        help="prior preservation's images: the base model's drawings of --class-prompts (DreamBooth's "
                             "way), or --class-images scenes of the built-in shapes dataset with their captions "
                             "(real regularisation images, kohya's way: the data the bundled model learned from)")
    parser.add_argument("--eval-set", type=int, default=0,
                        help="score on another set of concept and ordinary prompts and image seeds (K > 0: every "
                             "seed moves by K); results go to OUT/results-setK.json and images to *-setK folders. "
                             "With --resume and the --steps of a finished run, only re-evaluates it (and the base)")
    parser.add_argument("--init-word", default=None,
                        help="dreambooth/full: train from a copy of the bundled model whose concept word starts "
                             "as this word (its token embedding copied, e.g. circle for ring; OUT/base-CONCEPT-as-WORD)")
    parser.add_argument("--rescore", action="store_true",
                        help="only re-score the saved concept images of OUT (after a change to the concept check)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    concept = args.concept
    sizes = tuple(args.sizes) if args.sizes else None
    if args.balanced and sizes:
        parser.error("--balanced and --sizes choose the pictures' sizes in two ways: give one")
    data = args.out / ("pictures-balanced" if args.balanced else "pictures" if sizes is None else "pictures-" + "-".join(sizes))
    if not data.is_dir():
        write_dataset(data, concept, args.images, seed=2024, sizes=sizes, balanced=args.balanced)
    # --eval-set K: a second, independent set (a check on a result chosen with the first)
    suffix = f"-set{args.eval_set}" if args.eval_set else ""
    image_seed = 90_000 + 1000 * args.eval_set
    scenes = concept_scenes(concept, args.prompts, seed=777 + args.eval_set)
    ordinary = evaluation_prompts(args.prompts, seed=4242 + args.eval_set)
    base = load_model(None, Runtime.auto("full", "cpu")).model
    results = {}
    results_path = args.out / f"results{suffix}.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
    visible = visible_concepts(base, scenes)
    results["ceiling"] = {"visible": int(sum(visible)), "of": len(visible)}
    if args.rescore:
        for key in [k for k in results if (args.out / f"{k}-concept{suffix}").is_dir()]:
            images = [Image.open(args.out / f"{key}-concept{suffix}" / f"{i:03d}.png").convert("RGB") for i in range(len(visible))]
            results[key].update(concept_scores(images, scenes, visible))
        results_path.write_text(json.dumps(results, indent=2))
        args.methods = []
    if "base" not in results:
        found = evaluate(base, None, nullcontext(), scenes, ordinary, seed=image_seed, visible=visible)
        save_images(found.pop("concept_images"), args.out / f"base-concept{suffix}")
        results["base"] = {k: v for k, v in found.items() if k != "examples"}
    extra = {k: json.loads(v) if v[:1] in "0123456789-[{tf" else v for k, v in (s.split("=", 1) for s in args.set)}
    prior = {}
    if not args.no_prior and args.methods and args.class_source == "shapes":
        class_dir = args.out / f"class_shapes-{args.class_images}"
        write_shapes_images(class_dir, args.class_images, seed=31_337)
        prior = {"class_dir": str(class_dir)}  # a captioned folder with no class prompts: used as it is
    elif not args.no_prior and args.methods:
        from t2i.training.finetune.sampling import make_class_images

        prompts = evaluation_prompts(args.class_prompts, seed=99)
        default = (args.class_prompts, args.class_images) == (CLASS_PROMPTS, CLASS_IMAGES)
        class_dir = args.out / ("class_images" if default else f"class_images-{args.class_prompts}-{args.class_images}")
        start = time.process_time()
        made = make_class_images(base, prompts, args.class_images, class_dir)
        if made:
            results[class_dir.name] = {"count": made, "cpu_minutes": (time.process_time() - start) / 60}
        prior = {"class_prompts": prompts, "class_images": args.class_images, "class_dir": str(class_dir)}
    for method in args.methods:
        outdir = args.out / method
        start_model = "default"
        if args.init_word and method in ("dreambooth", "full"):
            start_model = str(base_with_word_from(args.out / f"base-{concept}-as-{args.init_word}", concept,
                                                  args.init_word))
        options = {**OPTIONS[method], **(prior if method != "ti" else {}), **extra,
                   **({"steps": args.steps} if args.steps else {}),
                   **({"init_embedding": str(args.init_embedding)} if args.init_embedding and method == "lora" else {})}
        start = time.process_time()
        output = t2i.finetune(method, model=start_model, data=data, outdir=outdir, name=concept, sample_every=0,
                              log_every=100, resume=args.resume, **options)
        minutes = (time.process_time() - start) / 60
        model, embeddings, context = applied(method, output, base, concept, args.init_embedding if method == "lora" else None,
                                             args.lora_weight)
        key = method if method != "lora" or args.lora_weight == 1.0 else f"lora@{args.lora_weight:g}"
        found = evaluate(model, embeddings, context, scenes, ordinary, seed=image_seed, visible=visible)
        make_grid(found.pop("examples"), cols=8).save(args.out / f"{key}-examples{suffix}.png")
        save_images(found.pop("concept_images"), args.out / f"{key}-concept{suffix}")
        shown = {k: v for k, v in options.items() if k != "class_prompts"}
        results[key] = {**found, "cpu_minutes": minutes, "bytes": size_of(output), "options": shown,
                        **({"sizes": list(sizes)} if sizes else {}), **({"balanced": True} if args.balanced else {}),
                        **({"init_word": args.init_word} if start_model != "default" else {})}
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps({key: results[key]}), flush=True)
    c = results["ceiling"]
    print(f"\nceiling: the check finds the {concept} in the VAE round trip of {c['visible']} of the {c['of']} prompts' "
          f"own drawings; 'where visible' is the {concept} rate on those prompts")
    print(f"\n| method | {concept} appears | (stars: first rule, ratio >= 1/6) | {concept} appears where visible | concept all correct | ordinary correct (base {results['base']['ordinary_correct']:.0%}) "
          f"| drop | CPU-minutes | output size |")
    print("|---|---|---|---|---|---|---|---|---|")
    b = results["base"]
    print(f"| base model | {b['appears']:.0%} | {b.get('appears_strict', 0):.0%} | {b.get('appears_visible', 0):.0%} | {b['concept_correct']:.0%} | {b['ordinary_correct']:.0%} | - | - | - |")
    if "class_images" in results:
        print(f"class images: {results['class_images']['count']} in {results['class_images']['cpu_minutes']:.1f} "
              f"CPU-minutes (shared by the methods with prior preservation)")
    for method in [k for k in results if k.split("@")[0] in METHODS]:  # lora@W: a LoRA used at weight W
        r = results[method]
        drop = (b["ordinary_correct"] - r["ordinary_correct"]) * 100
        size = f"{r['bytes'] / 2**20:.2f} MiB" if r["bytes"] >= 2**20 else f"{r['bytes'] / 1024:.1f} KiB"
        print(f"| {method} | {r['appears']:.0%} | {r.get('appears_strict', 0):.0%} | {r.get('appears_visible', 0):.0%} | {r['concept_correct']:.0%} | {r['ordinary_correct']:.0%} | "
              f"{drop:+.0f} pts | {r['cpu_minutes']:.1f} | {size} |")


if __name__ == "__main__":
    main()
