"""How close, and how much faster, is a distilled tiny decoder than the teacher VAE's decoder?

For a teacher model and a tiny decoder (a file from `family: tiny_vae`, configs/shapes-taesd.yaml):
1. held-out `shapes` images (seed 999, never trained on) are encoded by the teacher (posterior
   mean, scaled) and decoded by both; PSNR / SSIM (t2i.evaluate.recon) of tiny vs teacher
   decode, and of each vs the real image;
2. decode time of one latent and of a batch, each decoder, min of --repeats after a warm-up,
   and FLOPs per image (FlopCounterMode);
3. with --prompts N (the bundled model or another `shapes` model): N prompts of the full
   grammar are sampled once, the *same* final latents are decoded by both decoders, and the
   shapes checker scores each set (so only the decoder differs).

    python benchmarks/tiny_vae_quality.py --tiny runs/shapes-taesd/tiny_vae_decoder.safetensors \
        [--teacher MODEL] [--n 64] [--prompts 48] [--threads 1] [--repeats 5]
"""
from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_unet_step import best_time  # noqa: E402


def _unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped as an image file would be."""
    return images.float().add(1).div(2).clamp(0, 1)


@torch.no_grad()
def fidelity(model, tiny, images_uint8: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    from t2i.evaluate.recon import psnr, ssim

    scores = {k: [] for k in ("psnr_tiny_vs_teacher", "ssim_tiny_vs_teacher", "psnr_teacher_vs_real",
                              "psnr_tiny_vs_real")}
    for i in range(0, len(images_uint8), batch_size):
        real = images_uint8[i:i + batch_size].permute(0, 3, 1, 2).float().div(127.5).sub(1)
        z = model.encode_images(real, sample=False)
        teacher = _unit(model.vae.decode(z / model.config.scaling_factor).sample)
        student, real = _unit(tiny(z)), _unit(real)
        scores["psnr_tiny_vs_teacher"].append(psnr(student, teacher))
        scores["ssim_tiny_vs_teacher"].append(ssim(student, teacher))
        scores["psnr_teacher_vs_real"].append(psnr(teacher, real))
        scores["psnr_tiny_vs_real"].append(psnr(student, real))
    return {k: torch.cat(v).mean().item() for k, v in scores.items()}


def timings(model, tiny, latent_shape, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{decoder: (seconds per call, GFLOPs per image)} for a batch of `batch` latents."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(batch, *latent_shape, generator=torch.Generator().manual_seed(0))
    decoders = {"teacher (full VAE)": lambda: model.vae.decode(z / model.config.scaling_factor).sample,
                "tiny": lambda: tiny(z)}
    out = {}
    for name, fn in decoders.items():
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                fn()
            seconds = best_time(fn, repeats)
        out[name] = (seconds, counter.get_total_flops() / batch / 1e9)
    return out


@torch.no_grad()
def sample_latents(loaded, prompts: list[str], seeds: list[int], steps: int, cfg_scale: float,
                   batch_size: int = 16) -> torch.Tensor:
    """Final latents of txt2img (DPM++ 2M), several prompts per UNet call, as prompt_accuracy.py."""
    from t2i.diffusion.samplers import make_scheduler, resolve_sampler
    from t2i.diffusion.sampling import denoise, draw_noise, make_generators

    model = loaded.model
    name, schedule = resolve_sampler("DPM++ 2M")
    size = model.config.latent_size
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[i:i + batch_size], seeds[i:i + batch_size]
        cond, uncond = model.encode_prompts(chunk), model.encode_prompts([""] * len(chunk))
        generators = make_generators(chunk_seeds)
        noise = draw_noise(generators, (model.latent_channels, size, size))
        out.append(denoise(model.unet, make_scheduler(name, schedule, model.scheduler_config()), noise, cond,
                           uncond, steps=steps, cfg_scale=cfg_scale, generators=generators))
    return torch.cat(out)


def prompt_accuracy(loaded, tiny, n: int, steps: int, cfg_scale: float) -> dict[str, dict]:
    """Shapes-checker scores of the same sampled latents decoded by each decoder."""
    from t2i.evaluate.shapes_checker import check, evaluation_prompts, score
    from t2i.pipelines.txt2img import latents_to_images

    model = loaded.model
    prompts = evaluation_prompts(n, seed=12345)
    latents = sample_latents(loaded, prompts, list(range(1000, 1000 + n)), steps, cfg_scale)
    scores = {"teacher (full VAE)": score([check(im, p) for im, p in zip(latents_to_images(model, latents), prompts)])}
    model.tiny_decoder = tiny  # the switch t2i.speedups.use_tiny_decoder sets
    try:
        scores["tiny"] = score([check(im, p) for im, p in zip(latents_to_images(model, latents), prompts)])
    finally:
        del model.tiny_decoder
    return scores


def main() -> None:
    from t2i.checkpoints.registry import load_model
    from t2i.checkpoints.tiny_vae import load_tiny_decoder
    from t2i.evaluate.recon import heldout_shapes
    from t2i.runtime import Runtime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", required=True, help="the distilled decoder file (TAESD layout)")
    parser.add_argument("--teacher", default=None, help="teacher model (default: the bundled model)")
    parser.add_argument("--n", type=int, default=64, help="held-out images for PSNR/SSIM")
    parser.add_argument("--prompts", type=int, default=48, help="prompts for the shapes checker (0: skip)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=16, help="batch size of the batched decode timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.teacher, Runtime.auto("full", "cpu"))
    model = loaded.model
    tiny = load_tiny_decoder(args.tiny, latent_channels=model.latent_channels, scale_factor=model.vae_scale_factor)
    resolution, f = model.config.resolution, model.vae_scale_factor
    print(f"teacher: {loaded.name} (VAE decoder {sum(p.numel() for p in model.vae.decoder.parameters()) / 1e6:.3f} M "
          f"params, x{f}); tiny: {args.tiny} ({sum(p.numel() for p in tiny.parameters()) / 1e6:.3f} M params); "
          f"{resolution}x{resolution}, float32, {torch.get_num_threads()} thread(s)")

    scores = fidelity(model, tiny, heldout_shapes(args.n, resolution=resolution))
    print(f"\nheld-out shapes (n={args.n}, seed 999)")
    print("| PSNR tiny vs teacher (dB) | SSIM tiny vs teacher | PSNR teacher vs real | PSNR tiny vs real |")
    print("|---|---|---|---|")
    print(f"| {scores['psnr_tiny_vs_teacher']:.2f} | {scores['ssim_tiny_vs_teacher']:.4f} | "
          f"{scores['psnr_teacher_vs_real']:.2f} | {scores['psnr_tiny_vs_real']:.2f} |")

    latent_shape = (model.latent_channels, resolution // f, resolution // f)
    print(f"\ndecode time, min of {args.repeats} after a warm-up")
    print("| decoder | batch 1 (ms) | batch " + str(args.batch) + " (ms/image) | GFLOPs/image |")
    print("|---|---|---|---|")
    one, many = timings(model, tiny, latent_shape, 1, args.repeats), timings(model, tiny, latent_shape, args.batch, args.repeats)
    for name in one:
        print(f"| {name} | {one[name][0] * 1e3:.2f} | {many[name][0] * 1e3 / args.batch:.2f} | {one[name][1]:.3f} |")
    t, s = one["teacher (full VAE)"][0], one["tiny"][0]
    print(f"speed-up at batch 1: {t / s:.2f}x; at batch {args.batch}: "
          f"{many['teacher (full VAE)'][0] / many['tiny'][0]:.2f}x")

    if args.prompts:
        accuracy = prompt_accuracy(loaded, tiny, args.prompts, args.steps, args.cfg)
        print(f"\nshapes checker, {args.prompts} prompts, DPM++ 2M {args.steps} steps, CFG {args.cfg}, "
              f"the same latents decoded by each")
        names = sorted(next(iter(accuracy.values()))["attributes"])
        print("| decoder | all correct | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for name, result in accuracy.items():
            print(f"| {name} | {result['correct']:.3f} | "
                  + " | ".join(f"{result['attributes'].get(a, float('nan')):.3f}" for a in names) + " |")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
