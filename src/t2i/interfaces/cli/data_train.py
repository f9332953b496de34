"""`t2i data preview` and `t2i data export` (the built-in dataset) and `t2i train` (a model from a
YAML config)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_data_command(sub) -> None:
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    preview = data_sub.add_parser("preview", help="save a grid of dataset samples")
    preview.add_argument("dataset", choices=("shapes",))
    preview.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--resolution", type=int, default=64)
    preview.add_argument("-o", "--output", type=Path, default=Path("shapes.png"))
    preview.add_argument("--captions", action="store_true", help="also print the captions")
    preview.set_defaults(run=_run_data_preview)
    export = data_sub.add_parser(
        "export", help="write dataset samples as PNG files with caption sidecars (a folder t2i finetune reads)",
        description="Write --n samples of the built-in dataset as NAME.png + NAME.txt. With the bundled model, "
                    "such a folder is real regularisation images for fine-tuning: `t2i finetune ... --class-dir "
                    "DIR` trains on them beside your pictures (prior preservation) instead of on the base "
                    "model's own drawings.")
    export.add_argument("dataset", choices=("shapes",))
    export.add_argument("-o", "--output", type=Path, required=True, help="a new (or empty) folder")
    export.add_argument("--n", type=int, default=400, help="number of samples (default: %(default)s)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--resolution", type=int, default=64)
    export.set_defaults(run=_run_data_export)


def _run_data_preview(args) -> None:
    from t2i.data.shapes import ShapesDataset
    from t2i.metadata import write_png
    from t2i.outputs import make_grid

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    dataset = ShapesDataset(length=args.n, seed=args.seed, resolution=args.resolution)
    samples = [dataset[i] for i in range(args.n)]
    captions = "\n".join(f"{i}: {s['caption']}" for i, s in enumerate(samples))
    write_png(make_grid([s["image"] for s in samples]), args.output, captions)
    if args.captions:
        print(captions)
    print(args.output)


def _run_data_export(args) -> None:
    import os
    import shutil

    from t2i.data.shapes import ShapesDataset

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    dataset = ShapesDataset(length=args.n, seed=args.seed, resolution=args.resolution)  # checks the resolution
    target = args.output
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} already exists and is not an empty folder; choose a new --output")
    # written beside the target, then renamed: a stopped export leaves no half-filled folder
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    partial.mkdir(parents=True)
    try:
        for i in range(args.n):
            sample = dataset[i]
            sample["image"].save(partial / f"shapes-{i:05d}.png")
            (partial / f"shapes-{i:05d}.txt").write_text(sample["caption"] + "\n", encoding="utf-8")
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"{args.n} images with captions in {target}")


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config (e.g. configs/shapes-ldm.yaml)")
    p.add_argument("config", type=Path)
    p.add_argument("--outdir", type=Path, required=True, help="run folder: checkpoints, logs, final model/")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --outdir")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--budget-minutes", type=float, metavar="N",
                   help="stop every stage once this process has used N CPU-minutes (all threads); the run "
                        "still writes a model that samples, and budget.json (see t2i.training.budget)")
    p.add_argument("--budget-clock", choices=("cpu", "wall"), default="cpu",
                   help="what --budget-minutes counts: process CPU time (default) or elapsed wall time (on a GPU)")
    p.set_defaults(run=_run_train)


def _run_train(args) -> None:
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be a positive number of CPU-minutes, got {args.budget_minutes:g}")
    import torch

    from t2i.training.registry import load_training_config

    family, cfg, train_fn = load_training_config(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.resume and any(args.outdir.glob("*.ckpt")):
        raise ValueError(f"{args.outdir} already holds checkpoints; pass --resume to continue or choose another --outdir")
    print(f"training {family} model from {args.config} into {args.outdir}", file=sys.stderr)
    if args.budget_minutes is not None:
        from t2i.training.budget import train_on_budget

        train_on_budget(train_fn, cfg, args.outdir, resume=args.resume, minutes=args.budget_minutes,
                        clock=args.budget_clock)
    else:
        train_fn(cfg, args.outdir, resume=args.resume)
    # GAN / VAE / DDPM runs write model.safetensors, AR runs ar.safetensors, VQGAN runs
    # vqgan.safetensors, KL autoencoder runs autoencoder.safetensors; LDM runs write a folder
    files = [args.outdir / name for name in ("model.safetensors", "ar.safetensors", "vqgan.safetensors",
                                             "autoencoder.safetensors")]
    if family == "lcm":  # an LCM-LoRA: OUTDIR/NAME.safetensors
        files.insert(0, args.outdir / f"{cfg.name}.safetensors")
    if family == "clip":  # a transformers CLIPModel folder: OUTDIR/clip
        files.insert(0, args.outdir / "clip" / "model.safetensors")
    print(next((f for f in files if f.is_file()), args.outdir / "model"))
