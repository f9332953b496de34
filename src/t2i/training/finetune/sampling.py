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


def make_class_images(model, prompt: str, count: int, folder: Path, *, batch: int = 8, log=print, **options) -> int:
    """Fill `folder` up to `count` images of `prompt` (class-00000.png + .txt caption, seed = index),
    keeping those already there (their prompt must match); returns how many were made."""
    from tqdm.auto import tqdm

    from t2i.atomic import atomic_file, write_text

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(count) if not (folder / f"class-{i:05d}.png").is_file()]
    stale = [i for i in range(count) if (folder / f"class-{i:05d}.txt").is_file()
             and (folder / f"class-{i:05d}.txt").read_text(encoding="utf-8").strip() != prompt]
    if stale:
        raise ValueError(f"{folder} holds class images of another prompt (e.g. class-{stale[0]:05d}.txt); "
                         f"give another --class-dir or empty it")
    if not missing:
        return 0
    log(f"making {len(missing)} class images of {prompt!r} with the base model into {folder}")
    model.eval()
    for start in tqdm(range(0, len(missing), batch), desc="class images", unit="batch"):
        ids = missing[start:start + batch]
        for i, image in zip(ids, generate(model, prompt, ids, **options)):
            with atomic_file(folder / f"class-{i:05d}.png") as f:
                image.save(f, format="PNG")
            write_text(folder / f"class-{i:05d}.txt", prompt + "\n")
    return len(missing)
