"""Prompt accuracy of a shapes model: the share of prompts whose image shows every stated attribute.

Prompts come from the full `shapes` grammar (`evaluation_prompts`, a seed the training data
never used); each prompt gets one image with its own seed; the checker
(t2i.evaluate.shapes_checker) reads the pixels. Prints overall and per-attribute accuracy,
one row per guidance scale.

    python benchmarks/prompt_accuracy.py --n 200 --cfg 3 5 7.5 [--model DIR] [--sampler "DPM++ 2M"]
    python benchmarks/prompt_accuracy.py --n 200 --fast        # the bundled LCM-LoRA, LCM, 4 steps, CFG 1
    python benchmarks/prompt_accuracy.py --n 200 --fast --steps 8   # as `t2i generate --fast --steps 8`
    python benchmarks/prompt_accuracy.py --n 200 --lora FILE --sampler LCM --steps 4 --cfg 1
"""
from __future__ import annotations

import argparse
import time

import torch


def generate_many(loaded, prompts, seeds, sampler, steps, cfg_scale, batch_size, schedule_type=None):
    """Batches of different prompts in one UNet call (the pipeline takes one prompt per run)."""
    model = loaded.model

    def contexts(chunk):
        return model.encode_prompts(chunk), model.encode_prompts([""] * len(chunk))

    return denoise_batches(model, contexts, prompts, seeds, sampler, steps, cfg_scale, batch_size, schedule_type)


def denoise_batches(model, contexts, prompts, seeds, sampler, steps, cfg_scale, batch_size, schedule_type=None):
    """`contexts(chunk) -> (cond, uncond)`; one UNet call per batch of different prompts (any
    conditioning: text, retrieved neighbours, ...)."""
    from t2i.diffusion.samplers import make_scheduler, resolve_sampler
    from t2i.diffusion.sampling import denoise, draw_noise, make_generators
    from t2i.pipelines.txt2img import latents_to_images

    name, schedule = resolve_sampler(sampler, schedule_type)
    size = model.config.latent_size
    images = []
    for i in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[i:i + batch_size], seeds[i:i + batch_size]
        with torch.no_grad():
            cond, uncond = contexts(chunk)
        generators = make_generators(chunk_seeds)
        noise = draw_noise(generators, (model.latent_channels, size, size))
        latents = denoise(model.unet, make_scheduler(name, schedule, model.scheduler_config()), noise, cond, uncond,
                          steps=steps, cfg_scale=cfg_scale, generators=generators)
        images += latents_to_images(model, latents)
    return images


def main() -> None:
    import t2i
    from t2i.evaluate.shapes_checker import check, evaluation_prompts, score

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--prompt-seed", type=int, default=12345, help="seed of the prompt list")
    parser.add_argument("--image-seed", type=int, default=1000, help="seed of the first image")
    parser.add_argument("--cfg", type=float, nargs="+", default=[5.0])
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--scheduler", default="Automatic", help="schedule type (the web UI's: Karras, SGM Uniform, ...)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save-failures", default=None, help="folder for images that failed the check")
    parser.add_argument("--lora", default=None, help="a LoRA file merged at --lora-weight (e.g. an LCM-LoRA)")
    parser.add_argument("--lora-weight", type=float, default=1.0,
                        help="the LoRA's weight, as <lora:NAME:W> (the shipped LCM-LoRA has 0.8 baked in: 1 = 0.8)")
    parser.add_argument("--fast", action="store_true",
                        help="as `t2i generate --fast`: the LoRA (--lora, else the bundled LCM-LoRA) and the settings "
                             "it was distilled for (LCM, 4 steps, CFG 1), where --sampler, --scheduler, --steps and "
                             "--cfg are left at their defaults")
    args = parser.parse_args()
    if args.fast:
        from t2i.pipelines.fast import bundled_fast_lora, fast_settings

        args.lora = args.lora or str(bundled_fast_lora())
        settings = fast_settings(args.lora)
        flags = {"sampler": "sampler", "scheduler": "scheduler", "steps": "steps", "cfg_scale": "cfg"}
        for name, value in settings.items():
            dest = flags[name]
            if getattr(args, dest) == parser.get_default(dest):  # as the pipeline: what was asked for wins
                setattr(args, dest, [value] if dest == "cfg" else value)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = t2i.load(args.model, precision="full")
    if args.lora:  # merged for the whole run, as a generation with <lora:NAME:W> merges it
        from contextlib import ExitStack

        from t2i.extra_networks.library import activate_extra_networks
        from t2i.pipelines.txt2img import Txt2ImgParams

        stack = ExitStack()
        stack.enter_context(activate_extra_networks(loaded, Txt2ImgParams(loras={args.lora: args.lora_weight})))
    prompts = evaluation_prompts(args.n, args.prompt_seed)
    seeds = [args.image_seed + i for i in range(args.n)]
    print(f"model {loaded.name} ({loaded.hash}){f' + LoRA {args.lora} at {args.lora_weight:g}' if args.lora else ''}, {args.n} prompts, "
          f"{args.sampler} ({args.scheduler}), {args.steps} steps, torch threads {torch.get_num_threads()}")
    rows = []
    for cfg in args.cfg:
        start, cpu_start = time.perf_counter(), time.process_time()
        images = generate_many(loaded, prompts, seeds, args.sampler, args.steps, cfg, args.batch_size, args.scheduler)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        results = [check(img, p) for img, p in zip(images, prompts)]
        summary = score(results)
        rows.append((cfg, summary, seconds, cpu_seconds))
        if args.save_failures:
            from pathlib import Path

            folder = Path(args.save_failures) / f"cfg{cfg}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, (img, p, r) in enumerate(zip(images, prompts, results)):
                if not r.correct:
                    img.save(folder / f"{i:03d}-{p.replace(' ', '_')[:80]}.png")
    attrs = sorted({a for _, s, _, _ in rows for a in s["attributes"]})
    # CPU time (all threads of this process) per image: what the work costs, whatever else runs
    print("| cfg | fully correct | " + " | ".join(attrs) + " | images/s | CPU ms/image |")
    print("|---|---|" + "---|" * len(attrs) + "---|---|")
    for cfg, s, seconds, cpu_seconds in rows:
        cells = [f"{s['attributes'].get(a, float('nan')):.1%}" for a in attrs]
        print(f"| {cfg:g} | {s['correct']:.1%} | " + " | ".join(cells)
              + f" | {args.n / seconds:.1f} | {1000 * cpu_seconds / args.n:.0f} |")


if __name__ == "__main__":
    main()
