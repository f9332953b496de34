"""`t2i sample` for class-conditional and unconditional latent diffusion models (the LDM README's
class-conditional ImageNet and unconditional models; `model.conditioning: class | none`).

    model = load_class_ldm("runs/ldm-class")          # a run folder or its model/ folder
    images = sample_ldm(model, n=8, seed=0, class_name="red circle", guidance_scale=3)

Retrieval models (RDM, t2i.pipelines.rdm) sample from a prompt whose CLIP text embedding retrieves
neighbours from the model's database: `sample_ldm(model, 4, 0, prompt="a red circle")`.

Text and layout models have a prompt and are generated with `t2i generate`; loading one here is
an error that says so.
"""
from __future__ import annotations

from pathlib import Path

import torch

from t2i.checkpoints.diffusers_folder import T2I_CONFIG, load_ldm_folder
from t2i.diffusion.samplers import make_scheduler, resolve_sampler
from t2i.diffusion.sampling import denoise, draw_noise, make_generators
from t2i.errors import ModelLoadError
from t2i.models.common import resolve_class, to_pil_images
from t2i.pipelines.rdm import load_retriever, retrieval_conditioning

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0  # class models; unconditional models have nothing to guide towards
BATCH = 16


def ldm_folder_of(path: Path) -> Path | None:
    """The t2i latent diffusion folder at `path` or in its `model/` (a finished run), else None."""
    for folder in (path, path / "model"):
        if (folder / T2I_CONFIG).is_file():
            return folder
    return None


def load_class_ldm(folder: Path):
    """A class-conditional, unconditional or retrieval LatentDiffusion from its folder, in eval
    mode; a retrieval model gets `.retriever` (its database and CLIP, t2i.pipelines.rdm)."""
    model = load_ldm_folder(folder)
    kind = model.config.conditioning
    if kind == "text":
        raise ModelLoadError(f"{folder} is a text-to-image latent diffusion model; use `t2i generate PROMPT "
                             f"--model {folder}`")
    if kind == "layout":
        raise ModelLoadError(f"{folder} is a layout-to-image model; use `t2i generate PROMPT --model {folder} "
                             f"--layout \"red circle@0.1,0.1,0.4,0.4; ...\"`")
    if kind == "retrieval":
        model.retriever = load_retriever(model, folder)
    return model


@torch.no_grad()
def sample_ldm(model, n: int, seed: int, class_name: str | int | None = None, width: int | None = None,
               height: int | None = None, *, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, guidance_scale: float | None = None, prompt: str | None = None,
               database: str | None = None, retrieval: str | None = None) -> list:
    """n images, image i from seed + i. Class models: `class_name` for every image, or class
    i mod K when None; classifier-free guidance towards it (`guidance_scale`, default 3).
    Retrieval models: `prompt`, retrieved by `retrieval` (t2i.pipelines.rdm.MODES) from the
    model's database or `database`."""
    cfg = model.config
    if cfg.conditioning == "retrieval":
        if class_name is not None:
            raise ValueError("a retrieval model samples from a prompt (--prompt), not a class")
        retriever = load_retriever(model, database=database) if database else getattr(model, "retriever", None)
        if retriever is None:
            raise ValueError("this retrieval model was loaded without its database; give database=PATH")
        cond, uncond = retrieval_conditioning(model, retriever, [prompt or ""], retrieval or "neighbours")
        return _sample(model, n, seed, lambda _, count: (cond.expand(count, -1, -1), uncond.expand(count, -1, -1)),
                       DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale, width, height,
                       sampler=sampler, steps=steps, eta=eta)
    if prompt is not None or database is not None or retrieval is not None:
        raise ValueError(f"prompt, database and retrieval are for retrieval models; this one is conditioned on "
                         f"{cfg.conditioning!r}" + (" (use --class)" if cfg.conditioning == "class" else ""))
    class_names = cfg.class_names if cfg.conditioning == "class" else ()
    labels = resolve_class(class_names, class_name, n)  # ValueError listing the classes
    if labels is None and guidance_scale not in (None, 1.0):
        raise ValueError("guidance_scale needs a class-conditional model; this one is unconditional")
    scale = guidance_scale if guidance_scale is not None else (DEFAULT_GUIDANCE if labels is not None else 1.0)

    def contexts(start: int, count: int):
        y = labels[start:start + count] if labels is not None else None
        return model.class_context(y, count), model.class_context(None, count)

    return _sample(model, n, seed, contexts, scale, width, height, sampler=sampler, steps=steps, eta=eta)


def _sample(model, n: int, seed: int, contexts, scale: float, width: int | None, height: int | None, *,
            sampler: str | None, steps: int | None, eta: float | None) -> list:
    """The denoising loop in batches; `contexts(start, count)`: (cond, uncond) of those images."""
    cfg = model.config
    factor = model.vae_scale_factor
    width, height = width or cfg.resolution, height or cfg.resolution
    for name, value in (("width", width), ("height", height)):
        if value % factor:
            raise ValueError(f"{name} must be a multiple of {factor} for this model, got {value}")
    sampler_name, schedule = resolve_sampler(sampler or "DDIM")
    shape = (model.latent_channels, height // factor, width // factor)
    images = []
    for start in range(0, n, BATCH):
        count = min(BATCH, n - start)
        generators = make_generators([seed + start + i for i in range(count)])
        cond, uncond = contexts(start, count)
        uncond = uncond if scale != 1.0 else None
        latents = denoise(model.unet, make_scheduler(sampler_name, schedule, model.scheduler_config()),
                          draw_noise(generators, shape), cond, uncond, steps=steps or DEFAULT_STEPS, cfg_scale=scale,
                          generators=generators, eta=eta or 0.0)
        param = next(model.vae.parameters())
        images += to_pil_images(model.decode_latents(latents.to(param.device, param.dtype)).float())
    return images
