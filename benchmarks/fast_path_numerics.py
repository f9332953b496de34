"""Does t2i's automatic fast path (bf16 + channels_last UNet and VAE on CPUs with native bf16)
give the same images as float32?

Random weights in the SD 1.5 architecture, one prompt, the same seed, DPM++ 2M with CFG 7:
sampled once in float32 and once with the fast path's settings (forced, so the check also runs
on a CPU without native bf16, where bf16 is only slower). Prints the cosine similarity of the
latents after every step, and the PSNR of the decoded images. Target: every step >= 0.999.

    python benchmarks/fast_path_numerics.py --threads 2 [--steps 20] [--size 512]
    python benchmarks/fast_path_numerics.py --small        # 1/10-width model, 128x128, 6 steps
"""
from __future__ import annotations

import argparse
import copy
import math

import torch


def sample(model, cond, uncond, noise, steps: int):
    from t2i.diffusion.samplers import make_scheduler
    from t2i.diffusion.sampling import denoise

    per_step = []
    scheduler = make_scheduler("DPM++ 2M", "Automatic", model.scheduler_config())
    latents = denoise(model.unet, scheduler, noise, cond, uncond, steps=steps, cfg_scale=7.0, generators=None,
                      callback=lambda i, n, x: per_step.append(x.clone()))
    with torch.no_grad():
        image = model.decode_latents(latents.to(next(model.vae.parameters()).dtype)).float().clamp(-1, 1)
    return per_step, image


def main() -> None:
    from t2i.diffusion.sampling import initial_noise
    from t2i.evaluate.random_sd import random_sd_model
    from t2i.runtime import Runtime, cpu_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    if args.small:
        args.steps, args.size = 6, 128
    torch.set_num_threads(args.threads)

    reference = random_sd_model("sd15", tiny=args.small)
    fast = copy.deepcopy(reference)
    settings = Runtime(torch.device("cpu"), torch.bfloat16, args.threads, channels_last=True, text_dtype=torch.float32)
    settings.place(fast)
    with torch.no_grad():
        cond = reference.encode_prompts(["a photograph of an astronaut riding a horse"])
        uncond = reference.encode_prompts([""])
    factor = reference.vae_scale_factor
    noise = initial_noise([args.seed], (4, args.size // factor, args.size // factor))
    ref_steps, ref_image = sample(reference, cond, uncond, noise, args.steps)
    fast_steps, fast_image = sample(fast, cond, uncond, noise, args.steps)

    mse = ((ref_image - fast_image) ** 2).mean().item()
    psnr = 10 * math.log10(4.0 / max(mse, 1e-20))  # images in [-1, 1]
    print(f"{'1/10-width ' if args.small else ''}SD 1.5, random weights, {args.size}x{args.size}, {args.steps} steps "
          f"DPM++ 2M, CFG 7, seed {args.seed}; fast path: {settings.describe()}; this CPU's native bf16: "
          f"{cpu_native_bf16() or 'no (emulated: same numerics, slower)'}")
    print("| step | latent cosine (fast vs fp32) | relative L2 error |")
    print("|---|---|---|")
    for i, (a, b) in enumerate(zip(ref_steps, fast_steps)):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        rel = ((a - b).norm() / a.norm()).item()
        print(f"| {i + 1} | {cos:.6f} | {rel:.2e} |")
    cosines = [torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
               for a, b in zip(ref_steps, fast_steps)]
    print(f"\nmin per-step cosine {min(cosines):.6f} (target >= 0.999: {'met' if min(cosines) >= 0.999 else 'NOT met'}); "
          f"decoded image PSNR {psnr:.1f} dB")


if __name__ == "__main__":
    main()
