"""`t2i interrogate IMAGE...`: a caption for each image by ranking candidates with a CLIP
(t2i.pipelines.interrogate). One line per image on stdout: `PATH<TAB>caption`, and with
--scores a third column of `attribute=value:probability` pairs."""
from __future__ import annotations

from pathlib import Path


def add_interrogate_command(sub) -> None:
    p = sub.add_parser(
        "interrogate", help="caption images by ranking candidates with a CLIP",
        description="Caption each image with a CLIP. By default t2i's bundled CLIP (trained on `shapes`) ranks every "
                    "caption of the shapes grammar and reads each attribute (objects, colour, shape, size, position, "
                    "background) from its marginal. With --vocabulary, each file is a category (one term a line) "
                    "and its best terms are listed, as the web UI's CLIP interrogator does (a file named "
                    "NAME.topN.txt gives N terms, others 1). Prints PATH<TAB>caption per image.")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--clip", type=Path, metavar="DIR",
                   help="a CLIP in transformers format (config.json + model.safetensors), or a `t2i train` run "
                        "folder of configs/shapes-clip.yaml (default: the bundled CLIP)")
    p.add_argument("--vocabulary", type=Path, action="append", metavar="FILE",
                   help="a category file of terms to rank, one a line; repeat for several categories")
    p.add_argument("--top", type=int, metavar="N", help="terms to take from each vocabulary (default: N of a "
                                                        "NAME.topN.txt file name, else 1)")
    p.add_argument("--scores", action="store_true", help="add a third column: each attribute's value and probability")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.set_defaults(run=_run_interrogate)


def _run_interrogate(args) -> None:
    from t2i.errors import ParamError
    from t2i.interfaces.cli.common import open_image
    from t2i.pipelines.interrogate import interrogate, load_clip, read_vocabulary

    if args.threads is not None:
        if args.threads < 1:
            raise ParamError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if args.top is not None and args.vocabulary is None:
        raise ParamError("--top applies to --vocabulary files; give --vocabulary FILE")
    vocabularies = [read_vocabulary(path, args.top) for path in args.vocabulary or []]
    images = [open_image(path) for path in args.images]  # every file read before the model loads
    scorer = load_clip(args.clip)
    for path, result in zip(args.images, interrogate(images, scorer, vocabularies)):
        line = f"{path}\t{result.caption}"
        print(f"{line}\t{result.scores_text()}" if args.scores else line, flush=True)
