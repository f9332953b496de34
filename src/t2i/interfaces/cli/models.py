"""`t2i convert` and `t2i merge` (model files).
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_convert_command(sub) -> None:
    p = sub.add_parser(
        "convert", help="write a model as an original-layout single file or a diffusers folder",
        description="Convert IN (a .safetensors/.ckpt single file, a diffusers folder, a t2i model or training run "
                    "folder, or `default` for the bundled model) to OUT. --to single-file writes the layout web UIs "
                    "load (SD 1.x and SDXL shapes; t2i's own small models load in t2i only, their configs ride "
                    "in the file's metadata); --to diffusers writes a folder diffusers' from_pretrained reads "
                    "offline. Weights keep their precision unless --half.")
    p.add_argument("source", metavar="IN", help="model file or folder, or `default`")
    p.add_argument("output", metavar="OUT", type=Path, help="the .safetensors file or the folder to write")
    p.add_argument("--to", required=True, choices=("single-file", "diffusers"), help="output layout")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--config-dir", type=Path, help="a diffusers folder whose configs describe IN (single files "
                   "of non-standard shape; default: detected SD 1.x/2.x/SDXL configs)")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction"),
                   help="for SD 2.x files that cannot say (default: epsilon, with a note)")
    p.set_defaults(run=_run_convert)


def add_merge_command(sub) -> None:
    p = sub.add_parser(
        "merge", help="merge checkpoints: weighted sum of two, or add difference of three",
        description="weighted-sum: (1 - alpha) * A + alpha * B. add-difference: A + alpha * (B - C). The models "
                    "must share one architecture (same tensor names and shapes). Output: one .safetensors file; "
                    "its model hash (the web UI's: first 10 hex of the sha256) is printed.")
    p.add_argument("a", metavar="A", type=Path, help="first model (.safetensors or .ckpt single file)")
    p.add_argument("b", metavar="B", type=Path, help="second model")
    p.add_argument("c", metavar="C", type=Path, nargs="?", help="third model (add-difference only)")
    p.add_argument("--method", choices=("weighted-sum", "add-difference"), default="weighted-sum",
                   help="(default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.5, help="the multiplier (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    p.add_argument("--name", help="model name stored in the file (default: the output's file name)")
    p.add_argument("--half", action="store_true", help="store the weights as float16")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    p.set_defaults(run=_run_merge)


def _run_convert(args) -> None:
    from t2i.checkpoints.export import convert_model

    result = convert_model(args.source, args.output, args.to, half=args.half, overwrite=args.overwrite,
                           config_dir=args.config_dir, prediction_type=args.prediction_type)
    dtype = str(result.dtype).removeprefix("torch.")
    extra = f", model hash {result.hash}" if result.hash else ""
    print(f"converted {result.kind} model {args.source} -> {result.path} ({result.to}, {dtype}{extra})",
          file=sys.stderr)
    if result.to == "single-file" and result.kind == "t2i latent diffusion":
        print("note: web UIs load single files of real SD 1.x/SDXL shapes only; this t2i model loads in t2i "
              "(its config is in the file) and in diffusers after `t2i convert ... --to diffusers`", file=sys.stderr)
    print(result.path)


def _run_merge(args) -> None:
    from t2i.checkpoints.merge import merge_models

    result = merge_models(args.a, args.b, args.c, method=args.method, alpha=args.alpha, output=args.output,
                          name=args.name, half=args.half, overwrite=args.overwrite)
    inputs = " + ".join(str(p) for p in (args.a, args.b, args.c) if p is not None)
    print(f"merged {inputs} ({args.method}, alpha {args.alpha:g}) -> {result.path}: {result.tensors} tensors",
          file=sys.stderr)
    print(f"Model hash: {result.hash}, Model: {result.path.stem}", file=sys.stderr)
    if result.name != result.path.stem:
        print(f"note: infotexts (t2i's and the web UI's) name a model by its file name, {result.path.stem!r}; "
              f"the name {result.name!r} is stored in the file's metadata (modelspec.title)", file=sys.stderr)
    print(result.path)
