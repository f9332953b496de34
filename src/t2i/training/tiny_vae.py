"""Recipe: distil a tiny VAE decoder (TAESD architecture) from a model's full VAE (`family: tiny_vae`).

TAESD (Ollin Boer Bohan, "Tiny AutoEncoder for Stable Diffusion") decodes *scaled* latents,
the ones sampling produces (`vae.encode(x) * scaling_factor`), straight to an image; t2i applies
it that way (`VAELatents.decode_latents` hands the scaled latents to `tiny_decoder` as they are).
So the student here learns  tiny(scaled latents) ~= teacher.decode(scaled latents / scaling_factor)
on the teacher's own latents of the training images (posterior means, as the LDM recipe trains
its UNet on), with an L1 or MSE loss, plus optionally `real_weight` x the same loss against the
real image. The teacher runs once: its scaled latents and decoded images are cached in
`outdir/cache/`, training then touches only the student.

The decoder upsamples as often as the teacher's VAE downsamples (SD: x8 = TAESD's three
upsamplings; t2i's bundled model: x4 = two), with `decoder.blocks` tiny blocks per stage and
`decoder.width` channels (TAESD: 3 and 64; the last, full-resolution stage has one block).

Outputs in `outdir`: tiny_vae.ckpt (training state, resumable), and when finished
tiny_vae_decoder.safetensors in the original TAESD key layout (`1.weight`, ... : an
`nn.Sequential` whose entry 0 is the clamp), its config in the metadata; load it with
`t2i generate --vae-decoder tiny FILE` or `t2i.speedups.use_tiny_decoder`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from t2i.checkpoints.family_file import save_model_file
from t2i.checkpoints.registry import load_model
from t2i.checkpoints.tiny_vae import build_tiny_decoder
from t2i.config import BatchSize, Crop, Seed, Width, at_least, between, to_dict
from t2i.data.cache import load_cache, save_cache
from t2i.data.images import load_image_source
from t2i.runtime import Runtime
from t2i.training.ldm import DataConfig
from t2i.training.runs import save_run_config
from t2i.training.trainer import OptimConfig, Trainer

DECODER_FILE = "tiny_vae_decoder.safetensors"
LOSSES = ("l1", "mse")


@dataclass
class TinyDecoderConfig:
    width: Width = 64  # channels of every stage (TAESD: 64)
    # tiny residual blocks per low-resolution stage (TAESD: 3; the last stage has 1)
    blocks: Annotated[int, between(1, 16)] = 3


@dataclass
class DistillConfig(OptimConfig):
    crop: Crop = 0  # random crops of this many pixels (a multiple of the teacher's factor); 0: whole images
    loss: Literal["l1", "mse"] = "l1"  # against the teacher's decoded image
    real_weight: Annotated[float, at_least(0)] = 0.0  # > 0 adds this weight x the same loss against the real image
    encode_batch_size: BatchSize = 32  # teacher encode/decode batch when filling the cache


@dataclass
class TinyVAETrainConfig:
    teacher: str = "default"  # "default" (the bundled model), or a t2i model / diffusers folder / SD single file
    resolution: Annotated[int, between(0, 16384)] = 0  # training image size; 0: the teacher's native resolution
    decoder: TinyDecoderConfig = field(default_factory=TinyDecoderConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(size=4000))
    optim: DistillConfig = field(default_factory=DistillConfig)
    seed: Seed = 0


@dataclass
class TeacherCache:
    latents: torch.Tensor  # (N, C, h, w) float32, scaled: what the tiny decoder receives
    decoded: torch.Tensor  # (N, H, W, 3) uint8: the teacher's decode of those latents
    images: torch.Tensor  # (N, H, W, 3) uint8: the real images
    factor: int  # the teacher VAE's downsampling factor

    @property
    def latent_channels(self) -> int:
        return self.latents.shape[1]


def build_student(cfg: TinyDecoderConfig, latent_channels: int, factor: int):
    """A DecoderTiny with log2(factor) upsamplings: scaled latents -> images in [-1, 1]."""
    upsamplings = int(round(math.log2(factor)))
    if 2 ** upsamplings != factor:
        raise ValueError(f"the teacher's VAE downsamples x{factor}; tiny decoders need a power of two")
    num_blocks = (cfg.blocks,) * upsamplings + (1,)
    return build_tiny_decoder(latent_channels, num_blocks=num_blocks, block_out_channels=(cfg.width,) * len(num_blocks))


def taesd_state_dict(decoder) -> dict[str, torch.Tensor]:
    """DecoderTiny `layers.i.*` -> the original TAESD file's `{i + 1}.*` (its entry 0 is the clamp)."""
    return {f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v.detach().float().cpu().contiguous()
            for k, v in decoder.state_dict().items()}


def _teacher_path(spec: str) -> str | None:
    return None if spec in ("", "default") else spec


def load_teacher(spec: str):
    """The teacher's LoadedModel in float32 (on the GPU when there is one)."""
    return load_model(_teacher_path(spec), Runtime.auto("full"))


def _to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 on the CPU."""
    return images.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


@torch.no_grad()
def teacher_outputs(model, images_uint8: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents, teacher-decoded uint8 images) of (N, H, W, 3) uint8 images, in batches."""
    device = next(model.vae.parameters()).device
    latents, decoded = [], []
    for i in range(0, len(images_uint8), batch_size):
        x = _to_model_range(images_uint8[i:i + batch_size]).to(device)
        z = model.encode_images(x, sample=False)  # posterior mean x scaling_factor
        latents.append(z.float().cpu())
        decoded.append(_to_uint8(model.vae.decode(z / model.config.scaling_factor).sample))
    return torch.cat(latents), torch.cat(decoded)


def _cache_key(cfg: TinyVAETrainConfig) -> str:
    teacher = _teacher_path(cfg.teacher)
    where = Path(teacher).resolve() if teacher else "default"
    stamp = Path(teacher).stat().st_mtime_ns if teacher and Path(teacher).exists() else 0
    return f"{where}@{stamp}|{to_dict(cfg.data)}|r{cfg.resolution}"


def teacher_cache(cfg: TinyVAETrainConfig, cache_dir: Path) -> TeacherCache:
    """The training images with the teacher's latents and decodes, computed once per (teacher,
    data, resolution) and kept in `cache_dir/teacher.pt` (recomputed when any of them changes;
    a resumed run does not load the teacher again)."""
    key, path = _cache_key(cfg), cache_dir / "teacher.pt"
    state = load_cache(path, lambda s: s["key"] == key)
    if state is not None:
        return TeacherCache(state["latents"], state["decoded"], state["images"], int(state["factor"]))
    model = load_teacher(cfg.teacher).model
    factor, resolution = model.vae_scale_factor, cfg.resolution or model.config.resolution
    _check_factor(cfg, factor, resolution)
    images = load_image_source(cfg.data, resolution, cache_dir=cache_dir).images
    latents, decoded = teacher_outputs(model, images, cfg.optim.encode_batch_size)
    save_cache({"key": key, "latents": latents, "decoded": decoded, "images": images, "factor": factor}, path)
    return TeacherCache(latents, decoded, images, factor)


def _crop(cache: TeacherCache, idx: torch.Tensor, crop: int, generator: torch.Generator):
    """The same random window of latents, teacher decodes and real images (crop in pixels)."""
    z, dec, real = cache.latents[idx], cache.decoded[idx], cache.images[idx]
    size = dec.shape[1]
    if not crop or crop >= size:
        return z, dec, real
    f, c = cache.factor, crop // cache.factor  # c: the window in latent pixels
    ys = torch.randint(0, z.shape[2] - c + 1, (len(idx),), generator=generator).tolist()
    xs = torch.randint(0, z.shape[3] - c + 1, (len(idx),), generator=generator).tolist()
    windows = [(slice(y, y + c), slice(x, x + c), slice(y * f, (y + c) * f), slice(x * f, (x + c) * f))
               for y, x in zip(ys, xs)]
    return (torch.stack([t[:, ly, lx] for t, (ly, lx, _, _) in zip(z, windows)]),  # (B, C, c, c)
            torch.stack([t[py, px] for t, (_, _, py, px) in zip(dec, windows)]),  # (B, crop, crop, 3)
            torch.stack([t[py, px] for t, (_, _, py, px) in zip(real, windows)]))


def distill_loss_fn(cache: TeacherCache, cfg: DistillConfig):
    """The Trainer's loss: student decode vs teacher decode (+ real_weight x vs the real image)."""
    distance = F.l1_loss if cfg.loss == "l1" else F.mse_loss

    def loss_fn(modules, step, generator):
        decoder = modules["decoder"]
        device = next(decoder.parameters()).device
        idx = torch.randint(0, len(cache.latents), (cfg.batch_size,), generator=generator)
        z, teacher_img, real = _crop(cache, idx, cfg.crop, generator)
        out = decoder(z.to(device))
        loss = distance(out, _to_model_range(teacher_img).to(device))
        if cfg.real_weight > 0:
            loss = loss + cfg.real_weight * distance(out, _to_model_range(real).to(device))
        return loss, len(idx)

    return loss_fn


def _check_settings(cfg: TinyVAETrainConfig) -> None:
    """Mistakes found before the teacher is loaded."""
    if cfg.optim.loss not in LOSSES:
        raise ValueError(f"optim.loss must be one of {', '.join(LOSSES)}, got {cfg.optim.loss!r}")
    if cfg.decoder.width < 1 or cfg.decoder.blocks < 0 or cfg.optim.crop < 0 or cfg.resolution < 0:
        raise ValueError("decoder.width must be >= 1; decoder.blocks, optim.crop and resolution >= 0")


def _check_factor(cfg: TinyVAETrainConfig, factor: int, resolution: int) -> None:
    for name, value in (("optim.crop", cfg.optim.crop), ("resolution", resolution)):
        if value % factor:
            raise ValueError(f"{name} {value} must be a multiple of the teacher's VAE factor {factor}"
                             + (" (or 0 for whole images)" if name == "optim.crop" else ""))


def train_tiny_vae(cfg: TinyVAETrainConfig, outdir: str | Path, resume: bool = False,
                   stop_after: int | None = None):
    """Distil; a finished run writes `outdir/tiny_vae_decoder.safetensors` (EMA weights if
    enabled). Returns the student decoder (eval mode)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    _check_settings(cfg)
    save_run_config({"family": "tiny_vae", **to_dict(cfg)}, outdir)  # `t2i train outdir/config.yaml` reruns it
    cache = teacher_cache(cfg, outdir / "cache")
    factor, channels = cache.factor, cache.latent_channels
    _check_factor(cfg, factor, cache.decoded.shape[1])  # a changed crop on resume
    torch.manual_seed(cfg.seed)  # weight initialisation
    decoder = build_student(cfg.decoder, channels, factor)
    run_config = {"family": "tiny_vae", **to_dict(cfg), "latent_channels": channels, "factor": factor}
    trainer = Trainer("tiny_vae", {"decoder": decoder}, cfg.optim, outdir, cfg.seed, run_config)
    if resume:
        trainer.load()
    trainer.fit(distill_loss_fn(cache, cfg.optim), stop_after=stop_after)
    decoder = decoder.eval().requires_grad_(False)
    if trainer.step >= cfg.optim.steps:
        trainer.apply_ema()
        save_model_file(outdir / DECODER_FILE, "tiny_vae", run_config, taesd_state_dict(decoder))
    return decoder
