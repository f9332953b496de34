"""Images from the model being fine-tuned, at the diffusion level (trainers never import the
pipelines): sample grids during training and DreamBooth's class images from the base model.

Plain prompts through t2i's prompt encoder (weights, long prompts and embeddings work), DDIM with
classifier-free guidance; image i uses seed seeds[i], drawn on the CPU (DESIGN rule 7).
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from t2i.diffusion.conditioning import PromptEncoder
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import denoise, draw_noise, make_generators
from t2i.models.common import to_pil_images


@torch.no_grad()
def generate(model, prompt: str, seeds: list[int], *, steps: int = 20, cfg_scale: float = 5.0,
             size: tuple[int, int] | None = None, embeddings=None, sampler: str = "DDIM") -> list[Image.Image]:
    """len(seeds) images of `prompt` at `size` (width, height; default the model's resolution)."""
    width, height = size or (model.config.resolution, model.config.resolution)
    factor = model.vae_scale_factor
    encoder = PromptEncoder.from_model(model, embeddings=embeddings)
    cond = encoder.conditioning(prompt)
    uncond = encoder.conditioning("", negative=True)
    generators = make_generators(seeds)
    noise = draw_noise(generators, (model.latent_channels, height // factor, width // factor))
    latents = denoise(model.unet, make_scheduler(sampler, "Automatic", model.scheduler_config()), noise, cond, uncond,
                      steps=steps, cfg_scale=cfg_scale, generators=generators, device=model.device)
    param = next(model.vae.parameters())
    return to_pil_images(model.decode_latents(latents.to(param.device, param.dtype)))


def sample_grid(model, prompts: list[str], path: Path, *, seeds: int = 4, embeddings=None, **options) -> Path:
    """One row per prompt, `seeds` images each (seeds 0..n-1), written atomically to `path`."""
    from t2i.atomic import atomic_file
    from t2i.outputs import make_grid

    was_training = model.unet.training
    model.eval()
    try:
        images = [im for prompt in prompts for im in generate(model, prompt, list(range(seeds)),
                                                              embeddings=embeddings, **options)]
    finally:
        model.unet.train(was_training)
    with atomic_file(path) as f:
        make_grid(images, cols=seeds).save(f, format="PNG")
    return path


def make_class_images(model, prompts: list[str], count: int, folder: Path, *, batch: int = 8, log=print,
                      **options) -> int:
    """Fill `folder` up to `count` images (class-00000.png + .txt caption; image i shows
    prompts[i % len(prompts)] with seed i), keeping those already there (their caption must match);
    returns how many were made."""
    from tqdm.auto import tqdm

    from t2i.atomic import atomic_file, write_text

    folder.mkdir(parents=True, exist_ok=True)
    prompt_of = lambda i: prompts[i % len(prompts)]  # noqa: E731
    caption = lambda i: folder / f"class-{i:05d}.txt"  # noqa: E731
    stale = [i for i in range(count) if caption(i).is_file()
             and caption(i).read_text(encoding="utf-8").strip() != prompt_of(i)]
    if stale:
        raise ValueError(f"{folder} holds class images of other prompts (e.g. {caption(stale[0]).name}); "
                         f"give another --class-dir or empty it")
    missing = [i for i in range(count) if not (folder / f"class-{i:05d}.png").is_file()]
    if not missing:
        return 0
    log(f"making {len(missing)} class images of {len(prompts)} prompt(s) with the base model into {folder}")
    model.eval()
    by_prompt: dict[str, list[int]] = {}
    for i in missing:
        by_prompt.setdefault(prompt_of(i), []).append(i)
    batches = [(prompt, ids[k:k + batch]) for prompt, ids in by_prompt.items() for k in range(0, len(ids), batch)]
    for prompt, ids in tqdm(batches, desc="class images", unit="batch"):
        for i, image in zip(ids, generate(model, prompt, ids, **options)):
            with atomic_file(folder / f"class-{i:05d}.png") as f:
                image.save(f, format="PNG")
            write_text(caption(i), prompt + "\n")
    return len(missing)
