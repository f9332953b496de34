"""`t2i sample` and `t2i interpolate`: the classic families (GAN, VAE, pixel DDPM, VQGAN + AR).

Thin: flags -> t2i.pipelines.families; cli.py registers them with `add_family_commands`.
"""
from __future__ import annotations

from pathlib import Path


def add_family_commands(sub) -> None:
    _sample_parser(sub)
    _interpolate_parser(sub)


def _sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a grid from a GAN, VAE, pixel DDPM or VQGAN + AR transformer",
                       description="Sample a grid from a model file or a training run folder (a run still "
                                   "training gives its latest checkpoint's EMA weights).")
    p.add_argument("model", type=Path, help="a model .safetensors file or a training run folder")
    p.add_argument("--n", type=int, default=16, help="number of images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=Path("grid.png"), help="grid image (default: %(default)s)")
    p.add_argument("--class", dest="class_name", help="class name (class-conditional models; default: cycle through all)")
    p.add_argument("--prompt", help="the prompt (text-conditional DDPM and AR models)")
    p.add_argument("--width", type=int, help="image width (DDPM: any multiple of its size step, larger than trained too)")
    p.add_argument("--height", type=int, help="image height")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    ddpm = p.add_argument_group("pixel DDPM")
    ddpm.add_argument("--negative-prompt", help="text models: what guidance steers away from")
    ddpm.add_argument("--sampler", help="DDPM (ancestral), DDIM (default) or another sampler name")
    ddpm.add_argument("--steps", type=int, help="sampling steps (default: all for DDPM, 50 otherwise)")
    ddpm.add_argument("--eta", type=float, help="DDIM's eta (0: deterministic)")
    ddpm.add_argument("--guidance-scale", type=float, help="classifier-free guidance towards the class or prompt")
    ar = p.add_argument_group("autoregressive transformer (an AR run folder, or ar.safetensors with its VQGAN)")
    ar.add_argument("--top-k", type=int, help="sample among the k most likely codes (0: all, 1: greedy)")
    ar.add_argument("--top-p", type=float, help="nucleus sampling: the most likely codes holding this mass (1: all)")
    ar.add_argument("--temperature", type=float, help="below 1 sharpens, above 1 flattens (default: 1)")
    ar.add_argument("--no-cache", dest="use_cache", action="store_const", const=False,
                    help="recompute every step without cached keys/values (slow; same codes)")
    ar.add_argument("--complete", type=Path, metavar="IMAGE",
                    help="image completion: keep IMAGE's top half (its codes) and sample the bottom half")
    ar.add_argument("--first-stage", type=Path, help="the VQGAN, when it is not beside the transformer")
    p.set_defaults(run=_run_sample)


def _open_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _run_sample(args) -> None:
    import torch

    from t2i.metadata import build_infotext, write_png
    from t2i.outputs import make_grid
    from t2i.pipelines.families import complete_family, load_family_model, sample_family

    if args.threads:
        torch.set_num_threads(args.threads)
    image = _open_rgb(args.complete) if args.complete is not None else None  # fail before loading
    loaded = load_family_model(args.model, args.device, args.first_stage)
    options = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, sampler=args.sampler, steps=args.steps,
                   eta=args.eta, guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p,
                   temperature=args.temperature, use_cache=args.use_cache)
    if image is not None:
        if args.width or args.height:
            raise ValueError("--complete keeps the image's size (the model's); leave out --width and --height")
        images = complete_family(loaded, image, args.n, args.seed, args.class_name, **options)
    else:
        images = sample_family(loaded, args.n, args.seed, args.class_name, args.width, args.height, **options)
    info = build_infotext(args.prompt or args.class_name or "", args.negative_prompt or "", {
        "Steps": args.steps, "Sampler": args.sampler, "CFG scale": args.guidance_scale, "Seed": args.seed,
        "Size": images[0].size, "Model": loaded.name, "Family": loaded.family, "Eta": args.eta,
        "Top-k": args.top_k, "Top-p": args.top_p, "Temperature": args.temperature,
        "Completed": args.complete.name if args.complete else None})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    print(write_png(make_grid(images), args.output, info))


def _interpolate_parser(sub) -> None:
    p = sub.add_parser("interpolate", help="a strip of frames between two images through a VAE's latent space")
    p.add_argument("model", type=Path, help="a VAE .safetensors file or its training run folder")
    p.add_argument("image_a", type=Path)
    p.add_argument("image_b", type=Path)
    p.add_argument("--n", type=int, default=8, help="frames, both ends included (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=Path("strip.png"), help="(default: %(default)s)")
    p.set_defaults(run=_run_interpolate)


def _run_interpolate(args) -> None:
    from t2i.metadata import write_png
    from t2i.outputs import make_grid
    from t2i.pipelines.families import interpolate_family, load_family_model

    images = [_open_rgb(path) for path in (args.image_a, args.image_b)]
    loaded = load_family_model(args.model)
    frames = interpolate_family(loaded, images[0], images[1], args.n)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    info = f"t2i interpolate: {args.image_a.name} -> {args.image_b.name}, {args.n} frames, model {loaded.name}"
    print(write_png(make_grid(frames, cols=len(frames)), args.output, info))
