"""Recipe: a KL autoencoder alone (`family: autoencoder`), the latent diffusion recipe's stage 1.

Same objective as stage 1 of t2i.training.ldm (L1 reconstruction + `kl_weight` · KL on random
crops, through the shared `Trainer`), without the diffusion stage, so autoencoders of several
downsampling factors can be trained and compared (`t2i evaluate recon`). VQ autoencoders train
with `family: vqgan` (t2i.training.vqgan); a `loss.disc_start` beyond `optim.steps` makes that a
plain VQ-VAE.

Outputs in `outdir`: autoencoder.ckpt (training state, resumable), autoencoder.safetensors
(the model, its config embedded; load with
`t2i.checkpoints.family_file.load_family_file(KLAutoencoder, path)`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from t2i.checkpoints.family_file import save_family_file
from t2i.config import Seed, save_yaml, to_dict
from t2i.data.images import load_image_source
from t2i.models.autoencoder import KLAutoencoder, KLAutoencoderConfig
from t2i.training.ldm import DataConfig, VAEStageConfig, vae_loss_fn
from t2i.training.trainer import Trainer

MODEL_FILE = "autoencoder.safetensors"


@dataclass
class AutoencoderTrainConfig:
    model: KLAutoencoderConfig = field(default_factory=KLAutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: VAEStageConfig = field(default_factory=VAEStageConfig)  # with kl_weight and crop
    seed: Seed = 0


def train_autoencoder(cfg: AutoencoderTrainConfig, outdir: str | Path, resume: bool = False,
                      stop_after: int | None = None, budget=None) -> KLAutoencoder:
    """Train; a finished run (or one a CPUBudget stopped) writes `outdir/autoencoder.safetensors`
    (EMA weights if enabled)."""
    import torch

    if cfg.optim.crop and cfg.optim.crop % cfg.model.downsample_factor:
        raise ValueError(f"optim.crop {cfg.optim.crop} must be a multiple of the downsampling factor "
                         f"{cfg.model.downsample_factor} (or 0 for whole images)")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, outdir / "config.yaml")
    torch.manual_seed(cfg.seed)  # weight initialisation
    model = KLAutoencoder(cfg.model)
    trainer = Trainer("autoencoder", {"vae": model.vae}, cfg.optim, outdir, cfg.seed, to_dict(cfg))
    if resume:
        trainer.load()
    images = load_image_source(cfg.data, cfg.model.resolution, cache_dir=outdir / "cache").images
    optim = cfg.optim if cfg.optim.crop else _whole_images(cfg)
    trainer.fit(vae_loss_fn(images, optim), stop_after=stop_after, budget=budget)
    model = model.eval().requires_grad_(False)
    if trainer.step >= cfg.optim.steps or trainer.stopped_on_budget:
        trainer.apply_ema()
        save_family_file(model, outdir / MODEL_FILE)
    return model


def _whole_images(cfg: AutoencoderTrainConfig) -> VAEStageConfig:
    """crop 0 means whole images: the shared loss crops to `crop`, so give it the resolution."""
    from dataclasses import replace

    return replace(cfg.optim, crop=cfg.model.resolution)
