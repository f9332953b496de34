"""Retrieval-augmented diffusion against a plain text LDM: prompt accuracy by the shapes checker.

Prompts come from the full `shapes` grammar (`evaluation_prompts`, a seed the training data never
used), one image per prompt with its own seed; the same sampler, steps and CFG for every model.
The retrieval model gets each prompt three ways (t2i.pipelines.rdm.MODES): its CLIP text
embedding retrieves k neighbours from the model's database (`neighbours`), is the context itself
(`text`), or both. Prints a table with CPU time per image.

    python benchmarks/rdm_vs_text.py --rdm runs/rdm/rdm/model --text runs/rdm/text/model --n 100
"""
from __future__ import annotations

import argparse
import time

import torch
from prompt_accuracy import denoise_batches  # benchmarks/ is on sys.path when run as a script


def _shapes_probs(source: str) -> tuple[float, float]:
    """p_two, p_short from a shapes database's source string (t2i.training.ldm_retrieval.data_source)."""
    fields = dict(part.split("=") for part in source.split() if "=" in part)
    return float(fields["p_two"]), float(fields["p_short"])


def main() -> None:
    from t2i.checkpoints.registry import load_model
    from t2i.evaluate.shapes_checker import check, evaluation_prompts, score
    from t2i.pipelines.ldm_classes import load_class_ldm
    from t2i.pipelines.rdm import MODES, retrieval_conditioning
    from t2i.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rdm", required=True, help="a retrieval model folder (model.conditioning: retrieval)")
    parser.add_argument("--text", default=None, help="a text LDM folder to compare with")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--prompt-seed", type=int, default=12345)
    parser.add_argument("--image-seed", type=int, default=1000)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args()

    prompts = evaluation_prompts(args.n, args.prompt_seed)
    seeds = [args.image_seed + i for i in range(args.n)]
    rows = []

    def run(label, model, contexts):
        cpu = time.process_time()
        images = denoise_batches(model, contexts, prompts, seeds, args.sampler, args.steps, args.cfg,
                                  args.batch_size)
        cpu = time.process_time() - cpu
        rows.append((label, score([check(im, p) for im, p in zip(images, prompts)]), cpu))
        print(f"{label}: {rows[-1][1]}, {cpu:.0f} CPU-s", flush=True)  # partial results survive a kill

    from pathlib import Path

    rdm = load_class_ldm(Path(args.rdm))
    for mode in args.modes:
        run(f"RDM, {mode}", rdm, lambda chunk, mode=mode: retrieval_conditioning(rdm, rdm.retriever, chunk, mode))
    # what retrieval alone gives: the database's top-1 image for each prompt's text embedding, drawn
    # from its scene (shapes databases only), checked as if the model had copied it
    if rdm.retriever.database.ids[0].startswith("shapes:"):
        from t2i.data.shapes import ShapesDataset, draw_scene

        db = rdm.retriever.database
        top = db.search(rdm.retriever.embedder.embed_texts(prompts), 1)[1][:, 0].tolist()
        seed = int(db.ids[0].split(":")[1])
        scenes = ShapesDataset(len(db), seed, 64, *_shapes_probs(db.source))
        images = [draw_scene(scenes.scene(i), rdm.config.resolution) for i in top]
        rows.append(("top-1 retrieved database image (no diffusion)", score([check(im, p) for im, p in
                                                                            zip(images, prompts)]), 0.0))
    if args.text:
        text = load_model(args.text, Runtime.auto("full")).model  # float32, as the RDM loads
        run("text LDM", text, lambda chunk: (text.encode_prompts(chunk), text.encode_prompts([""] * len(chunk))))

    print(f"{args.n} prompts (seed {args.prompt_seed}), {args.sampler} {args.steps} steps, CFG {args.cfg:g}, "
          f"torch threads {torch.get_num_threads()}")
    attrs = sorted({a for _, s, _ in rows for a in s["attributes"]})
    print("| model | fully correct | " + " | ".join(attrs) + " | CPU ms/image |")
    print("|---|---|" + "---|" * len(attrs) + "---|")
    for label, s, cpu in rows:
        cells = [f"{s['attributes'].get(a, float('nan')):.1%}" for a in attrs]
        print(f"| {label} | {s['correct']:.1%} | " + " | ".join(cells) + f" | {f'{1000 * cpu / args.n:.0f}' if cpu else '-'} |")


if __name__ == "__main__":
    main()
