"""`t2i convert` and `t2i merge` (model files), and the memory flags of the generating commands
(`--attention-slicing`, `--vae-tiling`, `--offload`). cli.py registers the commands with
`add_model_commands`; the generating commands call `add_memory_arguments`, `load_for_memory`
and `apply_memory_from_args`.
"""
from __future__ import annotations

import sys
from pathlib import Path


def add_model_commands(sub) -> None:
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


# ----------------------------------------------------------------------------- memory flags


def add_memory_arguments(p) -> None:
    """The memory flags, on a parser or an argument group. A bare `--vae-tiling` or
    `--attention-slicing` means "on"."""
    p.add_argument("--attention-slicing", nargs="?", const="on", default="auto", choices=("auto", "off", "on"),
                   help="compute attention a few heads at a time (auto: on only for CUDA GPUs under 8 GiB)")
    p.add_argument("--vae-tiling", nargs="?", const="on", default="auto", choices=("auto", "off", "on"),
                   help="decode and encode in overlapping tiles: bounded memory for large images (auto: on above "
                        "1024x1024 pixels, above 2048x2048 on GPUs of 12 GiB or more)")
    p.add_argument("--offload", choices=("none", "model", "sequential"), default="none",
                   help="CUDA only: keep the weights in main memory and move each model part (model) or each layer "
                        "(sequential: least GPU memory, slowest) to the GPU when it runs (default: %(default)s)")


def memory_options(args):
    from t2i.memory import MemoryOptions

    return MemoryOptions(getattr(args, "attention_slicing", "auto"), getattr(args, "vae_tiling", "auto"),
                         getattr(args, "offload", "none"))


def load_for_memory(args, runtime):
    """load_model, but into main memory when the weights are to be offloaded from a GPU (a
    model too large for the GPU must never be put there whole)."""
    import dataclasses

    import torch

    from t2i.checkpoints.registry import load_model

    if memory_options(args).offload != "none" and runtime.device.type == "cuda":
        return load_model(args.model, dataclasses.replace(runtime, device=torch.device("cpu")))
    return load_model(args.model, runtime)


def apply_memory_from_args(args, loaded, runtime, width: int, height: int):
    """Plan the memory options for the largest image decoded (width x height) and apply them to
    `loaded` for the rest of the process; returns the MemoryPlan (its describe() goes into
    the command's summary line). Notes go to stderr."""
    import dataclasses

    from t2i.memory import apply_memory, plan_memory

    plan = plan_memory(memory_options(args), runtime.device, width, height)
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if loaded.runtime.device != runtime.device:  # loaded into main memory for offloading
        loaded.runtime = dataclasses.replace(loaded.runtime, device=runtime.device)
    apply_memory(loaded.model, plan, runtime.device)
    return plan


def decode_size(params, factor: int) -> tuple[int, int]:
    """The largest image a txt2img run decodes: the hires pass's size when it is on."""
    if getattr(params, "enable_hr", False):
        from t2i.pipelines.hires import hires_size

        return hires_size(params, factor)
    return params.width, params.height
