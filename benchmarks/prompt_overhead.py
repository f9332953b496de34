"""What does the prompt syntax machinery cost per denoising step?

A tiny random latent diffusion model (the test suite's config) samples the same noise with:
- raw: the loop over precomputed tensors (`CFGDenoiser`, as before prompt syntax existed);
- plain: a prompt without syntax through `PromptConditioning` (should cost ~0 extra);
- syntax: weights, prompt editing and alternation in prompt and negative prompt (same UNet batch
  as plain: the difference is the machinery);
- AND: two composable parts (a UNet batch of 3 rows instead of 2: extra compute, not overhead);
- long: a 100-token prompt (4 chunks, a 4x longer cross-attention context).
Prompts are encoded before timing (as txt2img does, once for all batches). Each variant: a
warm-up run, then the min of `--repeats` runs, interleaved in one process so the ratios compare.
Times are this process's CPU time (`time.process_time`, 1 thread): on a shared machine wall time
mostly measures the other jobs; wall time is shown too. The `begin_step` column times the
per-step hook alone (the machinery's own work): the min over 5 rounds of 2,000 calls.

    python benchmarks/prompt_overhead.py                       # 10 Euler steps, 1 thread
    python benchmarks/prompt_overhead.py --resolution 64 --steps 30
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

VARIANTS = {  # name: (prompt, negative prompt)
    "raw": ("a red circle on grass", "blurry"),
    "plain": ("a red circle on grass", "blurry"),
    "syntax": ("a (red:1.3) [circle|square] on [grass:sand:0.5]", "[ugly:0.5] (blurry:1.2)"),
    "AND": ("a red circle on grass AND a blue square :0.5", "blurry"),
    "long": ("red circle " * 50, "blurry"),
}


def tiny_model(resolution: int):
    from t2i.models.ldm import LatentDiffusion, LDMConfig, UNetConfig, VAEConfig
    from t2i.models.text import TextEncoderConfig

    torch.manual_seed(0)
    config = LDMConfig(
        resolution=resolution,
        vae=VAEConfig(block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8),
        unet=UNetConfig(block_out_channels=(16, 32), cross_attention=(False, True), norm_num_groups=8),
        text=TextEncoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=32),
    )
    return LatentDiffusion(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from t2i.diffusion.conditioning import PromptEncoder
    from t2i.diffusion.samplers import make_scheduler
    from t2i.diffusion.sampling import CFGDenoiser, draw_noise, make_generators, sample_scheduler

    torch.set_num_threads(args.threads)
    model = tiny_model(args.resolution)
    encoder = PromptEncoder.from_model(model)
    size = args.resolution // model.vae_scale_factor
    shape = (model.latent_channels, size, size)

    def denoiser(name: str):
        prompt, negative = VARIANTS[name]
        if name == "raw":
            with torch.no_grad():
                cond, uncond = model.encode_prompts([prompt]), model.encode_prompts([negative])
            return lambda: CFGDenoiser(model.unet, cond, uncond, args.cfg_scale, 1)
        cond, uncond = encoder.conditioning(prompt), encoder.conditioning(negative, negative=True)
        cond.prepare(args.steps), uncond.prepare(args.steps)  # encode outside the timing
        return lambda: cond.denoiser(model.unet, uncond, args.cfg_scale, 1)

    def run(make) -> tuple[float, float, torch.Tensor]:
        generators = make_generators([0])
        noise = draw_noise(generators, shape)
        scheduler = make_scheduler("Euler", "Automatic", model.scheduler_config())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        latents = sample_scheduler(make(), scheduler, noise, steps=args.steps, generators=generators)
        return time.process_time() - cpu0, time.perf_counter() - wall0, latents

    def hook_time(make) -> float:
        begin_step = getattr(make(), "begin_step", None)
        if begin_step is None:
            return 0.0
        best_round, calls = float("inf"), 2_000
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(calls):
                begin_step(i % args.steps, args.steps)
            best_round = min(best_round, time.perf_counter() - t0)
        return best_round / calls

    makers = {name: denoiser(name) for name in VARIANTS}
    for make in makers.values():  # warm-up: kernels for every context length
        run(make)
    best = {name: float("inf") for name in VARIANTS}
    wall = {name: float("inf") for name in VARIANTS}
    latents = {}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all variants alike
        for name, make in makers.items():
            cpu, seconds, latents[name] = run(make)
            best[name], wall[name] = min(best[name], cpu), min(wall[name], seconds)
    assert torch.equal(latents["raw"], latents["plain"]), "plain prompt through the new path must equal raw"

    print(f"# prompt syntax overhead: tiny LDM {args.resolution}px (latents {size}x{size}), {args.steps} Euler "
          f"steps, CFG {args.cfg_scale}, batch 1, {args.threads} thread(s), min of {args.repeats} runs")
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"{'variant':<8} {'CPU ms/step':>11} {'vs raw':>7} {'wall ms/step':>12} {'begin_step us':>14}  prompt / negative")
    for name, (prompt, negative) in VARIANTS.items():
        per_step, wall_step = best[name] / args.steps * 1e3, wall[name] / args.steps * 1e3
        hook = hook_time(makers[name]) * 1e6
        shown = prompt if len(prompt) < 50 else prompt[:47] + "..."
        print(f"{name:<8} {per_step:11.3f} {best[name] / best['raw']:6.2f}x {wall_step:12.3f} {hook:14.2f}  "
              f"{shown!r} / {negative!r}")


if __name__ == "__main__":
    main()
