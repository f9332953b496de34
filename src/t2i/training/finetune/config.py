"""The typed config of a fine-tuning run: one dataclass for every method, a section per method.

A YAML file (`t2i finetune run.yaml`) holds the same keys; command-line flags override them.
Fields left at None get a default chosen for the method and the base model's size once it is
loaded (`resolve_defaults`): a few MB LoRA on a 4 M-parameter UNet wants other settings than one
on Stable Diffusion's 860 M.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from t2i.config import BatchSize, Decay, Fraction, LearningRate, Seed, Steps, at_least, between, count, from_dict
from t2i.data.preflight import MAX_PIXELS

METHODS = ("lora", "dreambooth", "ti", "hypernetwork", "full")
Method = Literal["lora", "dreambooth", "ti", "hypernetwork", "full"]
Rank = Annotated[int, between(1, 1024)]
RunSteps = Annotated[int, between(1, 10**12)]  # a run of 0 steps would write untrained weights


@dataclass
class LoraOptions:
    rank: Rank = 8
    alpha: Optional[Annotated[float, at_least(0.0)]] = None  # None: alpha = rank (scale 1)
    conv_rank: Annotated[int, between(0, 1024)] = 0  # > 0: LoCon, LoRA on the UNet's 3x3 convolutions too
    conv_alpha: Optional[Annotated[float, at_least(0.0)]] = None  # None: conv_alpha = conv_rank
    # which UNet layers: the attention projections (to_q/k/v/out), or every linear layer of the
    # transformer blocks (also proj_in/out and the feed-forward), as kohya's trainer does
    targets: Literal["attention", "transformer"] = "attention"
    # pivotal tuning (cloneofsimo's lora PTI; diffusers' --train_text_encoder_ti): a textual-inversion
    # embedding file whose vectors stand, frozen, for NAME in the captions while the LoRA trains, so the
    # LoRA learns on a word that already points at the concept; use the same embedding when generating
    init_embedding: str = ""


@dataclass
class TIOptions:
    init_word: str = "*"  # the new token's vectors start as this word's (repeated over the vectors)
    vectors: Annotated[int, between(1, 75)] = 1


@dataclass
class DreamBoothOptions:
    instance_prompt: str = ""  # every training image's caption ("a photo of sks dog"); "": their own captions


@dataclass
class PriorOptions:
    """Prior preservation (DreamBooth's, Ruiz et al. 2022; kohya's regularisation images): every
    step also trains on images of what the model already does, so it learns the new concept
    without forgetting the rest. Any method but textual inversion (which changes nothing else)."""

    class_prompts: tuple[str, ...] = ()  # the base model draws class_images of these (in turn), once
    class_images: Annotated[int, between(1, 100_000)] = 50
    prior_weight: Annotated[float, at_least(0.0)] = 1.0
    # where class images are kept and reused ("" = OUTDIR/class_images); a folder of your own
    # captioned images here, with no class_prompts, is used as it is
    class_dir: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.class_prompts or self.class_dir)


@dataclass
class HypernetworkOptions:
    """The web UI's hypernetwork settings (its "Create hypernetwork" tab)."""

    layer_structure: Annotated[tuple[Annotated[float, between(0.01, 64.0)], ...], count(2, 16)] = (1.0, 2.0, 1.0)
    activation: str = "linear"  # linear, relu, leakyrelu, elu, swish, tanh, sigmoid, ...
    layer_norm: bool = False
    dropout: bool = False
    weight_init: Literal["Normal", "XavierUniform", "XavierNormal", "KaimingUniform", "KaimingNormal"] = "Normal"

    def __post_init__(self):
        if self.layer_structure[0] != 1 or self.layer_structure[-1] != 1:
            raise ValueError(f"hypernetwork layer_structure must start and end with 1 (the web UI's rule), "
                             f"got {list(self.layer_structure)}")


@dataclass
class FinetuneConfig:
    method: Method = "lora"
    model: str = "default"  # "default" (the bundled model), a t2i model folder or run, an SD file, a diffusers folder
    data: str = ""  # a folder of images with captions (t2i.data.captioned)
    outdir: str = ""
    name: str = ""  # output files OUTDIR/NAME.*; "" = the data folder's name
    seed: Seed = 0
    device: Optional[str] = None  # torch device; None = cuda if present, else cpu

    # data
    caption: Optional[str] = None  # caption of images that have none (--caption)
    resolution: Annotated[int, between(0, 8192)] = 0  # training side in pixels; 0 = the model's
    buckets: bool = True  # aspect-ratio buckets; False: centre-crop every image to a square
    max_aspect: Annotated[float, between(1.0, 8.0)] = 2.0
    flip: bool = False  # random horizontal flips (doubles the latent cache)
    flip_keeps_captions: bool = False  # False: a mirrored image's caption says "right" where it said "left", and back
    caption_dropout: Optional[Fraction] = None  # share of steps trained on the empty caption
    max_pixels: Annotated[int, between(64, 10**10)] = MAX_PIXELS  # larger images are skipped (bombs)

    # optimisation
    steps: Optional[RunSteps] = None
    batch_size: Optional[BatchSize] = None
    grad_accum: Annotated[int, between(1, 4096)] = 1
    lr: Optional[LearningRate] = None
    text_encoder_lr: Optional[LearningRate] = None  # None = lr
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: Optional[Steps] = None
    weight_decay: Annotated[float, at_least(0.0)] = 0.0
    grad_clip: Annotated[float, at_least(0.0)] = 1.0
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"  # adamw8bit needs bitsandbytes
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    min_snr_gamma: Annotated[float, at_least(0.0)] = 5.0  # 0 = plain MSE
    noise_offset: Annotated[float, between(0.0, 1.0)] = 0.0
    ema_decay: Optional[Decay] = None  # None: 0.99 for full and dreambooth on small models, 0.999 for full on large, else off
    train_text_encoder: bool = False  # lora: LoRA on the text encoder(s) too; dreambooth/full: train them

    # progress and outputs
    checkpoint_every: Optional[Steps] = None  # None: 4 checkpoints per run
    sample_every: Optional[Steps] = None  # None: with every checkpoint; 0 = no sample grids
    sample_prompts: tuple[str, ...] = ()  # None given: a few of the training captions
    sample_steps: Annotated[int, between(1, 1000)] = 20
    sample_cfg_scale: Annotated[float, between(0.0, 100.0)] = 5.0
    log_every: Steps = 50

    lora: LoraOptions = field(default_factory=LoraOptions)
    ti: TIOptions = field(default_factory=TIOptions)
    dreambooth: DreamBoothOptions = field(default_factory=DreamBoothOptions)
    prior: PriorOptions = field(default_factory=PriorOptions)
    hypernetwork: HypernetworkOptions = field(default_factory=HypernetworkOptions)

    def __post_init__(self):
        if any(sep in self.name for sep in "/\\") or self.name in (".", ".."):
            raise ValueError(f"name {self.name!r} is a path; it names the output files in outdir "
                             f"(OUTDIR/NAME.safetensors): give a plain name without / or \\ and put the folder in outdir")
        if self.flip_keeps_captions and not self.flip:
            raise ValueError("flip_keeps_captions (--flip-keeps-captions) applies only with flip: add --flip or drop it")
        if self.train_text_encoder and self.method in ("ti", "hypernetwork"):
            raise ValueError(f"train_text_encoder does not apply to {self.method}")
        if self.prior.enabled and self.method == "ti":
            raise ValueError("prior preservation (class prompts, class_dir) does not apply to ti: textual inversion "
                             "changes nothing but the new word's vectors")


# Defaults by (method, model size). "small": a UNet under t2i.runtime.SMALL_UNET_PARAMS (the
# bundled 4 M-parameter model), "large": Stable Diffusion sizes. The small ones come from a few
# runs of benchmarks/finetune_concept.py (BENCHMARKS.md: they are a starting point, not tuned
# optima); the large ones are the usual values of kohya's and diffusers' scripts.
# a short run's EMA must forget its start sooner than SD's 0.999 does
_FULL_SMALL = dict(steps=600, batch_size=16, lr=1e-4, warmup_steps=20, ema_decay=0.99)
DEFAULTS = {
    ("lora", "small"): dict(steps=1000, batch_size=16, lr=1e-3, warmup_steps=20),
    ("lora", "large"): dict(steps=1500, batch_size=1, lr=1e-4, warmup_steps=50),
    # full's recipe, EMA included: without it, DreamBooth on the bundled model lost 14-23 points of
    # ordinary prompts where full lost 1-9 (BENCHMARKS.md, fine-tuning, "DreamBooth and more training seeds")
    ("dreambooth", "small"): _FULL_SMALL,
    ("dreambooth", "large"): dict(steps=800, batch_size=1, lr=5e-6, warmup_steps=0),
    ("ti", "small"): dict(steps=1000, batch_size=16, lr=1e-2, warmup_steps=20),
    ("ti", "large"): dict(steps=3000, batch_size=1, lr=5e-3, warmup_steps=0),
    ("hypernetwork", "small"): dict(steps=1000, batch_size=16, lr=1e-3, warmup_steps=20),
    ("hypernetwork", "large"): dict(steps=3000, batch_size=1, lr=1e-5, warmup_steps=0),
    ("full", "small"): _FULL_SMALL,
    ("full", "large"): dict(steps=2000, batch_size=1, lr=1e-6, warmup_steps=50, ema_decay=0.999),
}


def resolve_defaults(cfg: FinetuneConfig, size: str) -> FinetuneConfig:
    """`cfg` with every None filled in for its method and a model of `size` ("small" or "large")."""
    chosen = {k: v for k, v in DEFAULTS[(cfg.method, size)].items() if getattr(cfg, k) is None}
    steps = chosen.get("steps", cfg.steps)
    if cfg.checkpoint_every is None:
        chosen["checkpoint_every"] = max(1, steps // 4)
    if cfg.sample_every is None:
        chosen["sample_every"] = chosen.get("checkpoint_every", cfg.checkpoint_every)
    if cfg.caption_dropout is None:
        # TI and hypernetworks learn what the caption's words mean: dropping captions teaches them nothing
        chosen["caption_dropout"] = 0.0 if cfg.method in ("ti", "hypernetwork") else 0.05
    if cfg.ema_decay is None:
        chosen.setdefault("ema_decay", 0.0)
    if cfg.text_encoder_lr is None:
        chosen["text_encoder_lr"] = chosen.get("lr", cfg.lr)
    return dataclasses.replace(cfg, **chosen)


def config_from(data: dict, where: str = "config") -> FinetuneConfig:
    """A FinetuneConfig from a mapping (a YAML file's, with flags merged in), strictly."""
    return from_dict(FinetuneConfig, data, where=where)
