"""`t2i rdm build-db`: the retrieval database of retrieval-augmented diffusion (t2i.pipelines.rdm):
L2-normalised CLIP image embeddings of `shapes` or an image folder, with their captions and ids.
Train a retrieval model on it with `retrieval_database: DB` in an LDM config
(configs/shapes-ldm-rdm.yaml), then `t2i sample RUN --prompt "a red circle"`."""
from __future__ import annotations

from pathlib import Path


def add_rdm_commands(sub) -> None:
    p = sub.add_parser("rdm", help="retrieval-augmented diffusion: build a retrieval database of CLIP embeddings")
    rdm_sub = p.add_subparsers(dest="rdm_command", required=True)
    build = rdm_sub.add_parser(
        "build-db", help="embed images with a CLIP into a retrieval database (safetensors)",
        description="Embed `shapes` (as an LDM run with data {size, seed, p_two, p_short} at --resolution loads it, "
                    "so a run on the same data leaves each image itself out of its neighbours) or an image folder "
                    "(with .txt caption sidecars) with a CLIP; write the unit-length embeddings (float16), "
                    "captions and ids to --out.")
    build.add_argument("--clip", default="default", metavar="DIR",
                       help="a transformers CLIPModel folder or a shapes-clip run folder (default: the bundled CLIP)")
    build.add_argument("--data", default="shapes", metavar="shapes|FOLDER", help="`shapes` or an image folder")
    build.add_argument("--out", type=Path, required=True, metavar="DB", help="the database file (.safetensors)")
    build.add_argument("--size", type=int, default=20_000, help="shapes: images 0..size-1 (default: %(default)s)")
    build.add_argument("--seed", type=int, default=0, help="shapes: the dataset seed (default: %(default)s)")
    build.add_argument("--p-two", type=float, default=0.4, help="shapes: share of two-object scenes")
    build.add_argument("--p-short", type=float, default=0.3, help="shapes: share of short captions")
    build.add_argument("--resolution", type=int, default=64, help="image side the run trains at (default: 64)")
    build.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    build.set_defaults(run=_run_build_db)


def _run_build_db(args) -> None:
    from t2i.errors import ParamError

    for name in ("size", "resolution") + (("threads",) if args.threads is not None else ()):
        if getattr(args, name) < 1:
            raise ParamError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("p_two", "p_short"):
        if not 0 <= getattr(args, name) <= 1:
            raise ParamError(f"--{name.replace('_', '-')} must be between 0 and 1")
    import torch

    from t2i.pipelines.rdm import build_database

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    db = build_database(args.clip, args.data, args.out, size=args.size, seed=args.seed, resolution=args.resolution,
                        p_two=args.p_two, p_short=args.p_short)
    print(f"{args.out}: {len(db)} images, {db.dim}-wide embeddings of CLIP {db.clip}")
