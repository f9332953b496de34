"""Layout-to-image accuracy: objects of the right class inside their boxes (issue 17).

    OMP_NUM_THREADS=1 python benchmarks/layout_to_image.py --model runs/layout/model --n 200

Layouts are those of held-out `shapes` scenes (seed 999: one or two objects, their exact boxes,
the background named in the prompt). Each image is generated through the txt2img pipeline
(`t2i generate PROMPT --layout ...`), then the shapes checker's object detection
(t2i.evaluate.shapes_checker.analyse_image) finds every object: its colour, shape and box
(centre ± extent / 2). A layout object counts when a detected object of its colour and shape has
IoU >= 0.5 with its box (each detection used once); a layout counts when all its objects do.
Sampling speed is images per CPU-second of this process (process time: the machine is shared).
"""
from __future__ import annotations

import argparse
import json
import time

import torch


def layout_string(scene) -> str:
    parts = []
    for obj in scene.objects:
        h = obj.side / 2
        parts.append(f"{obj.color} {obj.shape}@{obj.cx - h:.3f},{obj.cy - h:.3f},{obj.cx + h:.3f},{obj.cy + h:.3f}")
    return "; ".join(parts)


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def score_image(image, scene, threshold: float = 0.5) -> tuple[int, bool, bool]:
    """(objects placed, all placed, background right) for one generated image of `scene`."""
    from t2i.evaluate.shapes_checker import analyse_image

    detected = analyse_image(image)
    free = list(detected.objects)
    placed = 0
    for obj in scene.objects:
        h = obj.side / 2
        box = (obj.cx - h, obj.cy - h, obj.cx + h, obj.cy + h)
        best = max((d for d in free if d.color == obj.color and d.shape == obj.shape),
                   key=lambda d: iou(box, (d.cx - d.extent / 2, d.cy - d.extent / 2, d.cx + d.extent / 2,
                                           d.cy + d.extent / 2)), default=None)
        if best is not None and iou(box, (best.cx - best.extent / 2, best.cy - best.extent / 2,
                                          best.cx + best.extent / 2, best.cy + best.extent / 2)) >= threshold:
            placed += 1
            free.remove(best)
    return placed, placed == len(scene.objects), detected.background == scene.background


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a layout model folder (run/model)")
    parser.add_argument("--n", type=int, default=200, help="layouts (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=999, help="held-out shapes seed (default: %(default)s)")
    parser.add_argument("--p-two", type=float, default=0.4, help="share of two-object layouts (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--save", help="a folder for the generated images (optional)")
    args = parser.parse_args()

    from pathlib import Path

    from t2i.checkpoints.registry import load_model
    from t2i.data.shapes import ShapesDataset
    from t2i.pipelines.generation_params import Txt2ImgParams
    from t2i.pipelines.txt2img import txt2img
    from t2i.runtime import Runtime
    from t2i.training.ldm_conditions import background_prompt

    torch.set_num_threads(1)
    loaded = load_model(args.model, Runtime.auto("full", "cpu", threads=1))
    data = ShapesDataset(args.n, args.seed, loaded.model.config.resolution, p_two=args.p_two)
    totals = {"layouts": 0, "layouts_ok": 0, "objects": 0, "objects_ok": 0, "background_ok": 0, "two": 0, "two_ok": 0}
    cpu = 0.0
    for i in range(args.n):
        scene = data.scene(i)
        params = Txt2ImgParams(prompt=background_prompt(scene.background), layout=layout_string(scene), seed=i,
                               steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg_scale)
        start = time.process_time()
        image = txt2img(loaded, params).images[0]
        cpu += time.process_time() - start
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            image.save(Path(args.save) / f"{i:04d}.png")
        placed, ok, background = score_image(image, scene)
        two = len(scene.objects) == 2
        totals["layouts"] += 1
        totals["layouts_ok"] += ok
        totals["objects"] += len(scene.objects)
        totals["objects_ok"] += placed
        totals["background_ok"] += background
        totals["two"] += two
        totals["two_ok"] += ok and two
    report = {
        "model": args.model, "n": args.n, "sampler": f"{args.sampler} {args.steps} steps, CFG {args.cfg_scale}",
        "layouts_all_objects_iou>=0.5": totals["layouts_ok"] / totals["layouts"],
        "objects_iou>=0.5": totals["objects_ok"] / totals["objects"],
        "one_object_layouts": (totals["layouts_ok"] - totals["two_ok"]) / max(1, totals["layouts"] - totals["two"]),
        "two_object_layouts": totals["two_ok"] / max(1, totals["two"]),
        "background": totals["background_ok"] / totals["layouts"],
        "images_per_cpu_second": args.n / cpu,
        "counts": totals,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
