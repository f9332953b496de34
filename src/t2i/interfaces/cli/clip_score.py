"""`t2i evaluate clip-score FOLDER`: image-prompt agreement of generated images (t2i.evaluate.clip_score)."""
from __future__ import annotations

import sys
from pathlib import Path


def add_clip_score_command(evaluate_sub) -> None:
    p = evaluate_sub.add_parser(
        "clip-score", help="CLIP score: how well each image in a folder agrees with the prompt in its infotext",
        description="For every image under FOLDER whose infotext holds a prompt (t2i's and the web UI's outputs), "
                    "print PATH<TAB>score, score = 100 * max(cosine(image, prompt), 0) in a CLIP's embedding space "
                    "(Hessel et al. 2021), then the mean on stderr. Images without a prompt are skipped and counted. "
                    "Scores compare only under the same CLIP; the bundled one knows the `shapes` words only.")
    p.add_argument("folder", type=Path, metavar="FOLDER")
    p.add_argument("--clip", type=Path, metavar="DIR",
                   help="a CLIP in transformers format, or a shapes-clip run folder (default: the bundled CLIP)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(run=_run_clip_score)


def _run_clip_score(args) -> None:
    from t2i.errors import ParamError
    from t2i.evaluate.clip_score import folder_clip_scores, summary
    from t2i.pipelines.interrogate import load_clip

    if args.threads is not None:
        if args.threads < 1:
            raise ParamError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if not args.folder.is_dir():
        raise ParamError(f"{args.folder} is not a folder; give a folder of images with infotext")
    scored, skipped = folder_clip_scores(load_clip(args.clip), args.folder)
    if not scored:
        raise ParamError(f"no image under {args.folder} has a prompt in its infotext ({len(skipped)} image(s) "
                         f"without one); clip-score needs images written by t2i or the web UI")
    for item in scored:
        print(f"{item.path}\t{item.score:.2f}", flush=True)
    s = summary(scored)
    print(f"CLIP score: mean {s['mean']:.2f} over {s['n']} images (min {s['min']:.2f}, max {s['max']:.2f})"
          + (f"; {len(skipped)} image(s) without a prompt skipped" if skipped else ""), file=sys.stderr)
