"""Recipe: latent diffusion (Stable Diffusion architecture) trained from scratch in two stages.

Stage 1 (`vae`): AutoencoderKL on random crops, L1 reconstruction + a small KL term.
Stage 2 (`unet`): the first stage is frozen; every training image is encoded once (cached
latents), then the UNet and the CLIP text encoder learn together to predict the noise, with
caption dropout so classifier-free guidance works, and min-SNR loss weighting (Hang et al.
2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") for faster convergence.

`model.conditioning` picks what the UNet learns from (t2i.training.ldm_conditions): captions
(text), class labels (class), nothing (none) or object boxes plus the background (layout).
`retrieval` (t2i.training.ldm_retrieval): the CLIP embeddings of each image's nearest neighbours in
`retrieval_database`. `vae_from` skips stage 1: the first stage is a trained model's (frozen), so only the UNet trains.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from t2i.checkpoints.diffusers_folder import WEIGHTS, save_ldm_folder
from t2i.checkpoints.registry import bundled_model_dir
from t2i.checkpoints.safe_load import (check_tensor_kinds, load_checkpoint_dict, load_state_dict_file, load_weights_object,
                                       misfit_is_load_error)
from t2i.config import BatchSize, Crop, Fraction, Seed, at_least, between, save_yaml, to_dict
from t2i.data.cache import load_cache, save_cache
from t2i.data.images import ImageSource, load_image_source
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import denoise, draw_noise, make_generators
from t2i.errors import ModelLoadError
from t2i.metadata import write_png
from t2i.models.common import to_pil_images
from t2i.models.ldm import LatentDiffusion, LDMConfig
from t2i.models.text import tokenize
from t2i.outputs import make_grid
from t2i.training.ldm_conditions import build_conditions, class_names_of, context_fn, sample_contexts
from t2i.training.ldm_init import init_from_model, source_scaling_factor
from t2i.training.ldm_retrieval import (build_retrieval_context, copy_database_into, prepare_retrieval,
                                        retrieval_sample_rows)
from t2i.training.runs import copy_ema
from t2i.training.trainer import OptimConfig, Trainer


@dataclass
class DataConfig:
    name: Literal["shapes", "folder"] = "shapes"
    folder: str | None = None  # images (+ .txt caption sidecars) when name == "folder"
    # shapes: how many samples (indices 0..size-1) to render and cache
    size: Annotated[int, between(1, 10**9)] = 100_000
    seed: Seed = 0
    p_two: Fraction = 0.4
    p_short: Fraction = 0.3


@dataclass
class VAEStageConfig(OptimConfig):
    kl_weight: Annotated[float, at_least(0)] = 1e-6
    crop: Crop = 32  # train on random crops: the autoencoder is convolutional, crops are cheaper


@dataclass
class UNetStageConfig(OptimConfig):
    caption_dropout: Fraction = 0.1
    min_snr_gamma: Annotated[float, at_least(0)] = 5.0  # 0 disables min-SNR weighting
    encode_batch_size: BatchSize = 256


@dataclass
class LDMTrainConfig:
    model: LDMConfig = field(default_factory=LDMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEStageConfig = field(default_factory=VAEStageConfig)
    unet: UNetStageConfig = field(default_factory=UNetStageConfig)
    seed: Seed = 0
    sample_prompts: tuple[str, ...] = ()
    sample_steps: Annotated[int, between(1, 10_000)] = 20
    sample_cfg_scale: Annotated[float, between(0, 100)] = 5.0
    # under a CPU budget (--budget-minutes): stage 1 stops once this share of it is spent; latent
    # caching and the UNet stage use the rest (and whatever stage 1 left)
    vae_budget_share: Fraction = 0.2
    # a t2i model folder (or "default": the bundled model) whose VAE this run uses, frozen, instead
    # of training stage 1; its VAE config must equal model.vae
    vae_from: str | None = None
    # a t2i model folder (or "default") whose UNet and text encoder this run starts from (fine-tunes),
    # and whose latent scaling it keeps; configs must match (t2i.training.ldm_init)
    init_from: str | None = None
    # retrieval models (model.conditioning: retrieval): the database `t2i rdm build-db` wrote
    retrieval_database: str | None = None


def _to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _random_crops(images: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    b, h, w, _ = images.shape
    if crop >= h and crop >= w:
        return images
    ys = torch.randint(0, h - crop + 1, (b,), generator=generator)
    xs = torch.randint(0, w - crop + 1, (b,), generator=generator)
    return torch.stack([img[y:y + crop, x:x + crop] for img, y, x in zip(images, ys.tolist(), xs.tolist())])


def vae_loss_fn(images: torch.Tensor, cfg: VAEStageConfig):
    def loss_fn(modules, step, generator):
        vae = modules["vae"]
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=generator)
        x = _to_model_range(_random_crops(images[idx], cfg.crop, generator)).to(next(vae.parameters()).device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(x.device)
        recon = vae.decode(z).sample
        loss = F.l1_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        return loss, len(idx)

    return loss_fn


def text_context(ids: torch.Tensor, empty_ids: torch.Tensor, dropout: float):
    """The captions' text states for training images `idx`, with caption dropout."""
    def context(modules, idx, generator):
        tokens = ids[idx].clone()
        tokens[torch.rand(len(idx), generator=generator) < dropout] = empty_ids
        device = next(modules["unet"].parameters()).device
        return modules["text_encoder"](tokens.to(device)).last_hidden_state

    return context


def unet_loss_fn(latents: torch.Tensor, context, alphas_cumprod: torch.Tensor, cfg: UNetStageConfig,
                 prediction_type: str):
    """`context(modules, idx, generator)`: the (B, T, D) states the UNet attends to for images idx,
    or (those, (B, K, h, w) channels appended to the UNet's input) for layout-map models."""
    snr = alphas_cumprod / (1 - alphas_cumprod)

    def loss_fn(modules, step, generator):
        unet = modules["unet"]
        device = next(unet.parameters()).device
        n = cfg.batch_size
        idx = torch.randint(0, len(latents), (n,), generator=generator)
        z0 = latents[idx]
        hidden = context(modules, idx, generator)
        extra = None
        if isinstance(hidden, tuple):  # layout-map models: (context, extra input channels)
            hidden, extra = hidden
        t = torch.randint(0, len(alphas_cumprod), (n,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        target = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
        zt = zt.to(device) if extra is None else torch.cat([zt.to(device), extra.to(device)], dim=1)
        pred = unet(zt, t.to(device), hidden).sample
        per_sample = (pred.float() - target.to(device)).pow(2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma > 0:
            s = snr[t].to(device)
            weight = s.clamp(max=cfg.min_snr_gamma) / (s if prediction_type == "epsilon" else s + 1)
            per_sample = per_sample * weight
        return per_sample.mean(), n

    return loss_fn


@torch.no_grad()
def encode_dataset(model: LatentDiffusion, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Posterior means of every image, unscaled (B, C, h, w), float32 on the CPU."""
    model.vae.eval()
    device = next(model.vae.parameters()).device
    out = [model.vae.encode(_to_model_range(images[i:i + batch_size]).to(device)).latent_dist.mean.float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


LATENTS_FILE = "latents.pt"


def _cached_latents(source: ImageSource, outdir: Path) -> torch.Tensor | None:
    """The latents cache of this run's images, or None when it is missing, unreadable (a killed
    older t2i left 0-byte files) or of other data: then stage 1 resumes and they are re-encoded."""
    return load_cache(outdir / LATENTS_FILE, lambda t: isinstance(t, torch.Tensor) and len(t) == len(source.images))


def _encode_and_cache(model: LatentDiffusion, source: ImageSource, cfg: LDMTrainConfig, outdir: Path) -> torch.Tensor:
    latents = encode_dataset(model, source.images, cfg.unet.encode_batch_size)
    save_cache(latents, outdir / LATENTS_FILE)
    return latents


@torch.no_grad()
def save_sample_grid(model: LatentDiffusion, cfg: LDMTrainConfig, step: int, outdir: Path, rows=None) -> Path:
    """A grid of the sample prompts (one row each, 4 seeds) with the current weights; `rows`:
    a callable giving the (cond, uncond) rows instead (retrieval models)."""
    model.eval()
    prompts = list(cfg.sample_prompts) or ["a red circle", "a blue square above a yellow triangle"]
    seeds = list(range(4))
    shape = (model.latent_channels, model.config.latent_size, model.config.latent_size)
    images = []
    if rows is not None:
        rows = rows()
    elif cfg.model.conditioning == "text":
        rows = [(model.encode_prompts([p]), model.encode_prompts([""])) for p in prompts]
    else:
        rows = sample_contexts(model)
    for cond, uncond, *objects in rows:  # layout rows add their objects
        generators = make_generators(seeds)
        unet = model.layout_unet(objects[0], len(seeds)) if objects else model.unet
        latents = denoise(unet, make_scheduler("DDIM", "Automatic", model.scheduler_config()),
                          draw_noise(generators, shape), cond, uncond, steps=cfg.sample_steps,
                          cfg_scale=cfg.sample_cfg_scale, generators=generators)
        param = next(model.vae.parameters())
        images += to_pil_images(model.decode_latents(latents.to(param.device, param.dtype)))
    path = outdir / "samples" / f"step-{step:06d}.png"
    return write_png(make_grid(images, cols=len(seeds)), path, "")


def trained_modules(model: LatentDiffusion) -> dict:
    """What the UNet stage trains (and its checkpoint holds): the UNet, the text encoder of text
    and layout models, the learned tokens of class, unconditional and layout models."""
    names = ("unet",) + (("text_encoder",) if model.text_encoder is not None else ()) + \
        (("conditioner",) if model.conditioner is not None else ())
    return {name: getattr(model, name) for name in names}


def load_frozen_vae(model: LatentDiffusion, folder: str) -> None:
    """model.vae <- the VAE of a t2i model folder ("default": the bundled model), strictly."""
    path = (bundled_model_dir() if folder == "default" else Path(folder)) / "vae" / WEIGHTS["vae"]
    if not path.is_file():
        raise ModelLoadError(f"vae_from: {path} does not exist; give a t2i model folder (or `default`)")
    state = load_state_dict_file(path)
    with misfit_is_load_error(path, "this run's model.vae config"):
        check_tensor_kinds(model.vae.state_dict(), state, path, "this run's model.vae config")
        model.vae.load_state_dict(state, strict=True)


def train_ldm(cfg: LDMTrainConfig, outdir: str | Path, resume: bool = False,
              stop_after: dict[str, int] | None = None, budget=None) -> LatentDiffusion:
    """Train both stages; writes `outdir/{vae,unet}.ckpt`, `outdir/model` (diffusers folder) and,
    every `unet.sample_every` steps, a grid of `sample_prompts` in `outdir/samples/`. A
    t2i.training.budget.CPUBudget splits by `cfg.vae_budget_share`; a stage it stops counts as
    done (stage 1 is over once its latents are cached, also on resume)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    if cfg.model.conditioning in ("class", "layout") and not cfg.model.class_names:
        cfg.model.class_names = class_names_of(cfg)  # recorded in config.yaml and the model's config
    if cfg.retrieval_database is not None and cfg.model.conditioning != "retrieval":
        raise ValueError(f"retrieval_database is for model.conditioning: retrieval; this run is "
                         f"{cfg.model.conditioning!r}")
    db = prepare_retrieval(cfg) if cfg.model.conditioning == "retrieval" else None  # sets model.retrieval_dim
    save_yaml(cfg, outdir / "config.yaml")
    stop_after = stop_after or {}
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = LatentDiffusion(cfg.model)
    source = load_image_source(cfg.data, cfg.model.resolution, cache_dir=outdir / "cache")
    run_config = to_dict(cfg)

    vae_trainer = Trainer("vae", {"vae": model.vae}, cfg.vae, outdir, cfg.seed, run_config)
    if cfg.vae_from is not None:
        load_frozen_vae(model, cfg.vae_from)
    elif resume:
        vae_trainer.load()
    cached = _cached_latents(source, outdir)
    if cfg.vae_from is None and vae_trainer.step < cfg.vae.steps and cached is None:
        vae_budget = budget.until(cfg.vae_budget_share) if budget is not None else None
        vae_trainer.fit(vae_loss_fn(source.images, cfg.vae), stop_after=stop_after.get("vae"), budget=vae_budget)
        if vae_trainer.step < cfg.vae.steps and not vae_trainer.stopped_on_budget:
            return model
    model.vae.requires_grad_(False).eval()

    latents = cached if cached is not None else _encode_and_cache(model, source, cfg, outdir)
    scale = source_scaling_factor(cfg.init_from) if cfg.init_from else 1.0 / latents.std().item()
    model.config.scaling_factor = scale
    model.vae.register_to_config(scaling_factor=scale)
    latents = latents * scale

    sample_rows = None
    if db is not None:
        context = build_retrieval_context(cfg, db, source.images)
        sample_rows = lambda: retrieval_sample_rows(model, db, cfg.sample_prompts)  # noqa: E731
    elif cfg.model.conditioning == "text":
        context = text_context(tokenize(model.tokenizer, list(source.captions)),
                               tokenize(model.tokenizer, [""])[0], cfg.unet.caption_dropout)
    else:
        context = context_fn(model, build_conditions(cfg, model, len(source.images)), cfg.unet.caption_dropout)
    from diffusers import DDPMScheduler

    alphas_cumprod = DDPMScheduler.from_config(model.scheduler_config()).alphas_cumprod.float()
    if cfg.init_from is not None:  # before the trainer: a resumed run's checkpoint then replaces these
        init_from_model(model, cfg.init_from)
    unet_trainer = Trainer("unet", trained_modules(model), cfg.unet,
                           outdir, cfg.seed + 1, run_config, accelerator=vae_trainer.accelerator)
    if resume:
        unet_trainer.load()
    loss_fn = unet_loss_fn(latents, context, alphas_cumprod, cfg.unet, cfg.model.schedule.prediction_type)
    on_sample = lambda step: save_sample_grid(model, cfg, step, outdir, sample_rows)  # noqa: E731
    unet_trainer.fit(loss_fn, on_sample=on_sample, stop_after=stop_after.get("unet"), budget=budget)
    if unet_trainer.step < cfg.unet.steps and not unet_trainer.stopped_on_budget:
        return model
    unet_trainer.apply_ema()
    model.eval().requires_grad_(False)
    save_ldm_folder(model, outdir / "model")
    if db is not None:
        copy_database_into(db, outdir / "model")
    return model


def export_from_checkpoints(cfg: LDMTrainConfig, outdir: str | Path, target: str | Path,
                            dtype: torch.dtype | None = None, use_ema: bool = True) -> LatentDiffusion:
    """Build a model folder from the latest stage checkpoints (e.g. of a run still going)."""
    outdir = Path(outdir)
    vae_path, unet_path, latents_path = outdir / "vae.ckpt", outdir / "unet.ckpt", outdir / LATENTS_FILE
    # the files first (cheap, and any of them may be damaged), the model after
    vae_state = (load_checkpoint_dict(vae_path, "vae training checkpoint", ("modules",))
                 if cfg.vae_from is None else None)
    unet_state = load_checkpoint_dict(unet_path, "unet training checkpoint", ("modules",))
    latents = load_weights_object(latents_path)
    usable = isinstance(latents, torch.Tensor) and latents.is_floating_point() and latents.numel() > 1
    scale = (1.0 / latents.float().std()).item() if usable else 0.0
    if cfg.init_from is not None and usable:  # as train_ldm: a run started from a model keeps its scaling
        scale = source_scaling_factor(cfg.init_from)
    if not 0 < scale < float("inf"):
        raise ModelLoadError(f"{latents_path} is not this run's latents cache (float latents of nonzero spread); run "
                             f"`t2i train ... --resume` once to rebuild it")
    model = LatentDiffusion(cfg.model)
    parts = ((vae_path, vae_state, {"vae": model.vae}), (unet_path, unet_state, trained_modules(model)))
    if cfg.vae_from is not None:
        load_frozen_vae(model, cfg.vae_from)
        parts = parts[1:]
    for path, state, modules in parts:
        with misfit_is_load_error(path, "this run's model config"):
            for name, module in modules.items():
                check_tensor_kinds(module.state_dict(), state["modules"][name], path, "this run's model config")
                module.load_state_dict(state["modules"][name], strict=True)
    if use_ema:
        with misfit_is_load_error(unet_path, "this run's UNet and text encoder"):
            copy_ema([p for m in trained_modules(model).values() for p in m.parameters()], unet_state.get("ema"))
    model.config.scaling_factor = scale
    model.vae.register_to_config(scaling_factor=model.config.scaling_factor)
    model.eval().requires_grad_(False)
    save_ldm_folder(model, Path(target), dtype=dtype)
    if cfg.model.conditioning == "retrieval":
        copy_database_into(prepare_retrieval(cfg), target)
    return model

