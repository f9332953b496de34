"""The fine-tuning loop every method shares: base model, data and latent cache, the noise-prediction
loss, t2i.training.trainer's accelerate loop (EMA, atomic checkpoints of the trained weights
only, exact resume), sample grids, the loss curve and the method's export.

The loss (DDPM; Ho et al. 2020) per image: a latent sample z0 from its cached posterior, noise ε
(plus `noise_offset` times a per-channel constant: brighter and darker images), a timestep t,
z_t = √ᾱ_t z0 + √(1 − ᾱ_t) ε, and the squared error of the UNet's prediction against ε (or
v = √ᾱ_t ε − √(1 − ᾱ_t) z0 for v-prediction models), weighted by min-SNR-γ (Hang et al. 2023).
DreamBooth's prior preservation (Ruiz et al. 2022) adds the same loss on class images, times
`prior_weight`.

Data parallel (`accelerate launch --num_processes N`): every process draws the same global batch
of a step from the step's random stream — a pure function of (seed, step) — and trains on its own
slice; the gradients are averaged. So N processes of batch B compute what one process of batch
N·B computes, and a resumed run replays the steps an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import torch
from torch import Tensor

from t2i.config import to_dict
from t2i.training.finetune.config import FinetuneConfig, resolve_defaults
from t2i.training.finetune.data import TrainData, load_train_data, mirror_caption
from t2i.training.finetune.methods import Setup, prepare
from t2i.training.finetune.net import FinetuneNet
from t2i.training.trainer import OptimConfig, Trainer, step_generator

CHECKPOINT = "finetune"  # OUTDIR/finetune.ckpt


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _accelerator(cfg: FinetuneConfig):
    from accelerate import Accelerator

    from t2i.runtime import check_device

    cpu = check_device(cfg.device).type == "cpu"  # a clear error for a device this machine does not have
    try:
        return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        raise ValueError(f"this Python process already trained with other accelerate settings; accelerate keeps one "
                         f"device and mixed-precision setting per process: run this fine-tune (mixed_precision="
                         f"{cfg.mixed_precision!r}, device {'cpu' if cpu else 'GPU'}) in a new process") from None


def _optimizer(cfg: FinetuneConfig):
    if cfg.optimizer == "adamw":
        return None  # the trainer's AdamW
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ValueError("--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                         "use --optimizer adamw") from None
    return bnb.optim.AdamW8bit


def _schedule(model) -> tuple[Tensor, str]:
    from diffusers import DDPMScheduler

    config = model.scheduler_config()
    return DDPMScheduler.from_config(config).alphas_cumprod.float(), config.get("prediction_type", "epsilon")


class TextSource:
    """Caption index -> what a step's group needs: cached text states (frozen encoder), or token
    ids (+ placeholder positions for textual inversion) when the encoder runs in the step."""

    def __init__(self, model, net: FinetuneNet, captions: list[str], setup: Setup, cache_path: Path | None,
                 is_main: bool, model_id: str = ""):
        self.captions = captions
        self.ti_places = None
        if setup.ti_name:
            from t2i.training.finetune.textual_inversion import caption_tokens

            self.ids, self.ti_places = caption_tokens(model, captions, setup.ti_name, setup.ti_vectors)
        else:
            self.ids = net.text.ids(captions)
        self.cached = None
        if not setup.live_text:
            self.cached = self._encode_all(net, cache_path, is_main, model_id)

    def _encode_all(self, net: FinetuneNet, cache_path: Path | None, is_main: bool, model_id: str) -> tuple:
        from t2i.data.cache import load_cache, save_cache

        # frozen placed vectors (LoRA's init_embedding) are part of the text states, so of the key
        placed = [v.tolist() for v in net.extras["tokens"].vectors] if self.ti_places is not None else None
        key = hashlib.sha256(repr((model_id, net.text.clip_skip, self.captions,
                                   [i.tolist() for i in self.ids], placed)).encode()).hexdigest()
        cached = load_cache(cache_path, check=lambda v: v["key"] == key) if cache_path else None
        if cached is None:
            contexts, pooled = [], []
            with torch.no_grad():
                for i in range(0, len(self.captions), 32):
                    chunk = [ids[i:i + 32] for ids in self.ids]
                    c, p = net.text(list(net.text_encoders), chunk) if placed is None else net.encode(
                        chunk, self._positions(range(i, min(i + 32, len(self.captions)))))
                    contexts.append(c.float().cpu())
                    pooled.append(p.float().cpu() if p is not None else None)
            cached = {"key": key, "context": torch.cat(contexts),
                      "pooled": torch.cat(pooled) if pooled[0] is not None else None}
            if cache_path and is_main:
                save_cache(cached, cache_path)
        return cached["context"], cached["pooled"]

    def group(self, caps: Tensor, device) -> dict:
        if self.cached is not None:
            context, pooled = self.cached
            out = {"context": context[caps].to(device)}
            return out | ({"pooled": pooled[caps].to(device)} if pooled is not None else {})
        out = {"ids": [ids[caps].to(device) for ids in self.ids]}
        if self.ti_places is not None:
            out["ti"] = self._positions(caps.tolist())
        return out

    def _positions(self, rows) -> tuple:
        from t2i.training.finetune.textual_inversion import positions

        return positions(self.ti_places, list(rows))


def _draw(data: TrainData, n: int, g: torch.Generator, timesteps: int) -> dict:
    """One set's share of a step's global batch: a bucket, n images and their noise, in a fixed
    order of draws from `g` (every option's values are drawn, used or not)."""
    b = int(torch.multinomial(data.bucket_weights(), 1, generator=g))
    bucket = data.buckets[b]
    shape = (n, *bucket.mean.shape[1:])
    return {"bucket": bucket, "idx": torch.multinomial(bucket.weights, n, replacement=True, generator=g),
            "eps": torch.randn(shape, generator=g), "noise": torch.randn(shape, generator=g),
            "offset": torch.randn((n, shape[1], 1, 1), generator=g),
            "t": torch.randint(0, timesteps, (n,), generator=g),
            "drop": torch.rand(n, generator=g), "flip": torch.rand(n, generator=g) < 0.5}


def make_loss_fn(cfg: FinetuneConfig, model, text: TextSource, data: TrainData, class_data: TrainData | None,
                 caption_offsets: tuple[int, int], empty_caption: int, world: tuple[int, int],
                 mirrored_offset: int | None = None):
    """`mirrored_offset`: where the mirrored captions start in `text`'s list (flip with sides
    swapped); a flipped image's caption index moves there."""
    alphas, prediction = _schedule(model)
    snr = alphas / (1 - alphas)
    scale = float(model.config.scaling_factor)
    rank, processes = world
    per = cfg.batch_size
    total = per * cfg.grad_accum * processes
    sdxl = getattr(model, "text_encoder_2", None) is not None
    state: dict = {"step": None}

    def rows(sample: dict, lo: int, hi: int, device, caption_offset: int) -> tuple[dict, Tensor, Tensor]:
        bucket, idx = sample["bucket"], sample["idx"][lo:hi]
        mean, std = bucket.mean[idx], bucket.std[idx]
        caps = bucket.captions[idx] + caption_offset
        if cfg.flip and bucket.mean_flip is not None:
            flipped = sample["flip"][lo:hi]
            flip = flipped.view(-1, 1, 1, 1)
            mean = torch.where(flip, bucket.mean_flip[idx], mean)
            std = torch.where(flip, bucket.std_flip[idx], std)
            if mirrored_offset is not None:
                caps = torch.where(flipped, caps + mirrored_offset, caps)
        z0 = (mean + std * sample["eps"][lo:hi]) * scale
        noise = sample["noise"][lo:hi] + cfg.noise_offset * sample["offset"][lo:hi]
        t = sample["t"][lo:hi]
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * z0
        caps = torch.where(sample["drop"][lo:hi] < cfg.caption_dropout, torch.full_like(caps, empty_caption), caps)
        group = {"zt": zt.to(device), "t": t.to(device), **text.group(caps, device)}
        if sdxl:
            w, h = bucket.size
            target_size = torch.tensor([h, w]).expand(len(idx), 2)
            ids = torch.cat([bucket.original_sizes[idx], bucket.crops[idx], target_size], dim=1)
            group["time_ids"] = ids.to(device, torch.float32)
        return group, target, t

    def weighted(pred: Tensor, target: Tensor, t: Tensor) -> Tensor:
        per_sample = (pred.float() - target.to(pred.device)).pow(2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma > 0:
            s = snr[t].to(pred.device)
            per_sample = per_sample * s.clamp(max=cfg.min_snr_gamma) / (s if prediction == "epsilon" else s + 1)
        return per_sample.mean()

    def loss_fn(modules, step: int, _generator) -> tuple[Tensor, int]:
        net = modules["net"]
        device = next(p for p in net.parameters()).device
        if state["step"] != step:  # a new step: draw its global batch (micro-batches follow)
            g = step_generator(cfg.seed, step)
            state.update(step=step, micro=0, inst=_draw(data, total, g, len(alphas)),
                         cls=_draw(class_data, total, g, len(alphas)) if class_data is not None else None)
        else:
            state["micro"] += 1
        lo = (state["micro"] * processes + rank) * per
        groups, targets = [], []
        for sample, offset in ((state["inst"], caption_offsets[0]), (state["cls"], caption_offsets[1])):
            if sample is not None:
                group, target, t = rows(sample, lo, lo + per, device, offset)
                groups.append(group)
                targets.append((target, t))
        preds = net(groups)
        loss = weighted(preds[0], *targets[0])
        if len(preds) > 1:
            loss = loss + cfg.prior.prior_weight * weighted(preds[1], *targets[1])
        return loss, per

    return loss_fn


def _check_outdir(outdir: Path, resume: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"--outdir {outdir} is a file, not a folder: choose another --outdir")
    checkpoint = outdir / f"{CHECKPOINT}.ckpt"
    if checkpoint.is_file() and not resume:
        raise ValueError(f"{outdir} already holds a fine-tuning checkpoint; pass --resume to continue it "
                         f"or choose another --outdir")


def _sample_prompts(cfg: FinetuneConfig, data: TrainData) -> list[str]:
    if cfg.sample_prompts:
        return list(cfg.sample_prompts)
    if cfg.method == "dreambooth" and cfg.dreambooth.instance_prompt:
        return [cfg.dreambooth.instance_prompt]
    return data.captions[:: max(1, len(data.captions) // 3)][:3]


def finetune(cfg: FinetuneConfig, *, resume: bool = False, stop_after: int | None = None, log=_log) -> Path | None:
    """Run `cfg`; returns the main output (a LoRA / embedding / hypernetwork file, or a model
    folder), or None when `stop_after` (tests: a simulated crash) ended it early."""
    from t2i.checkpoints.registry import load_model
    from t2i.errors import version
    from t2i.runtime import SMALL_UNET_PARAMS, Runtime

    if not cfg.data:
        raise ValueError("give the image folder to train on (--data DIR)")
    if not cfg.outdir:
        raise ValueError("give the output folder (--outdir DIR)")
    outdir = Path(cfg.outdir)
    _check_outdir(outdir, resume)
    acc = _accelerator(cfg)
    loaded = load_model(None if cfg.model in ("", "default") else cfg.model, Runtime.auto("full", str(acc.device)))
    model = loaded.model
    small = sum(p.numel() for p in model.unet.parameters()) < SMALL_UNET_PARAMS
    cfg = resolve_defaults(cfg, "small" if small else "large")
    name = cfg.name or Path(cfg.data).resolve().name
    is_main = acc.is_main_process
    if is_main:
        outdir.mkdir(parents=True, exist_ok=True)
    model_id = f"{loaded.path}|{loaded.hash}|{model.config.scaling_factor}"
    resolution = cfg.resolution or int(model.config.resolution)
    read = dict(resolution=resolution, use_buckets=cfg.buckets, max_aspect=cfg.max_aspect, flip=cfg.flip,
                max_pixels=cfg.max_pixels, cache_dir=outdir / "cache", log=log, is_main=is_main)
    with acc.main_process_first():
        data = load_train_data(cfg.data, model, model_id, default_caption=cfg.caption, **read)
        if is_main:
            from t2i.atomic import write_text

            write_text(outdir / "preflight.txt", data.preflight.report() + "\n")
    data = _instance_captions(cfg, data, name)
    class_data = _class_data(cfg, model, model_id, outdir, acc, read, log) if cfg.prior.enabled else None

    info = {"t2i_version": version(), "t2i_method": cfg.method, "t2i_base_model": loaded.name,
            "t2i_base_hash": loaded.hash, "ss_sd_model_name": loaded.name, "ss_output_name": name}
    torch.manual_seed(cfg.seed)  # new layers' initial weights (LoRA's A, a hypernetwork): alike in every process
    setup = prepare(cfg, model, name, info)
    net = FinetuneNet(model, setup.extras)
    if cfg.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        for encoder in net.text_encoders:
            if setup.text_params and hasattr(encoder, "gradient_checkpointing_enable"):
                encoder.gradient_checkpointing_enable()
    captions = data.captions + (class_data.captions if class_data else []) + [""]
    empty = len(captions) - 1
    mirrored_offset = None
    if cfg.flip and not cfg.flip_keeps_captions:  # mirrored captions after the others: caption i's is i + offset
        mirrored_offset = len(captions)
        captions = captions + [mirror_caption(c) for c in captions]
    text = TextSource(model, net, captions, setup, outdir / "cache" / "text.pt", is_main, model_id)
    optim = OptimConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                        min_lr_ratio=0.0, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                        ema_decay=cfg.ema_decay, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                        sample_every=cfg.sample_every, grad_accum=cfg.grad_accum, lr_schedule=cfg.lr_schedule)
    run_config = {"family": "finetune", **to_dict(cfg)}
    trainer = Trainer(CHECKPOINT, {"net": net}, optim, outdir, cfg.seed, run_config, accelerator=acc,
                      trained_only=True, param_groups=_param_groups(net, setup, cfg), make_optimizer=_optimizer(cfg))
    if resume and not trainer.load():
        log(f"no checkpoint in {outdir}: starting from the beginning")
    if is_main:  # only now: a resume that does not fit the checkpoint keeps the run's own config.yaml
        from t2i.config import save_yaml

        save_yaml(cfg, outdir / "config.yaml")
    offsets = (0, len(data.captions))
    loss_fn = make_loss_fn(cfg, model, text, data, class_data, offsets, empty,
                           (acc.process_index, acc.num_processes), mirrored_offset)
    prompts = _sample_prompts(cfg, data)

    def on_sample(step: int) -> None:
        if is_main and prompts:
            _grid(model, cfg, setup, prompts, outdir / "samples" / f"step-{step:06d}.png")

    with setup.during_training():
        trainer.fit(loss_fn, on_sample=on_sample, stop_after=stop_after)
        if trainer.step < cfg.steps:
            return None
        trainer.apply_ema()
        result = None
        if is_main:
            from t2i.training.finetune.plots import loss_curve

            loss_curve(trainer.losses, outdir / "loss.png", f"{cfg.method} {name}")
            result = setup.export(outdir, name, {**info, "t2i_steps": str(trainer.step),
                                                 "ss_steps": str(trainer.step)})
            log(f"wrote {result}")
    acc.wait_for_everyone()
    return result if result is not None else _main_output(cfg, outdir, name)


def _param_groups(net: FinetuneNet, setup: Setup, cfg: FinetuneConfig) -> list[dict]:
    """The trained parameters; the text encoder's in a group of their own at text_encoder_lr."""
    text_ids = {id(p) for p in setup.text_params}
    main = [p for p in net.parameters() if p.requires_grad and id(p) not in text_ids]
    if not setup.text_params:
        return [{"params": main}]
    return [{"params": main}, {"params": setup.text_params, "lr_scale": cfg.text_encoder_lr / cfg.lr}]


def _main_output(cfg: FinetuneConfig, outdir: Path, name: str) -> Path:
    """What the main process wrote (other processes return the same path)."""
    if cfg.method in ("full", "dreambooth"):
        return outdir / "model"
    return outdir / f"{name}{'.pt' if cfg.method == 'hypernetwork' else '.safetensors'}"


def _grid(model, cfg: FinetuneConfig, setup: Setup, prompts: list[str], path: Path) -> None:
    from t2i.training.finetune.sampling import sample_grid

    sample_grid(model, prompts, path, embeddings=setup.embeddings(), steps=cfg.sample_steps,
                cfg_scale=cfg.sample_cfg_scale)


def _instance_captions(cfg: FinetuneConfig, data: TrainData, name: str) -> TrainData:
    """DreamBooth's instance prompt replaces every caption; textual inversion needs NAME in them."""
    if cfg.method == "dreambooth" and cfg.dreambooth.instance_prompt:
        for bucket in data.buckets:
            bucket.captions = torch.zeros_like(bucket.captions)
        return dataclasses.replace(data, captions=[cfg.dreambooth.instance_prompt])
    pivot = cfg.method == "lora" and cfg.lora.init_embedding
    if cfg.method == "ti" or pivot:
        from t2i.training.finetune.textual_inversion import mentions

        what = "--init-embedding's vectors stand for" if pivot else "textual inversion learns"
        if not any(mentions(c, name) for c in data.captions):
            raise ValueError(f"no caption mentions {name!r}, the word {what}: write {name} in the "
                             f"captions (e.g. --caption \"a photo of {name}\") or choose --name to match them")
    return data


def _class_data(cfg: FinetuneConfig, model, model_id: str, outdir: Path, acc, read: dict, log) -> TrainData:
    """Prior preservation's images: made by the base model before training (kept in class_dir), or
    the captioned images already in class_dir."""
    from t2i.training.finetune.sampling import make_class_images

    o = cfg.prior
    folder = Path(o.class_dir) if o.class_dir else outdir / "class_images"
    with acc.main_process_first():
        if acc.is_main_process and o.class_prompts:
            make_class_images(model, list(o.class_prompts), o.class_images, folder, log=log, steps=cfg.sample_steps,
                              cfg_scale=cfg.sample_cfg_scale)
        quiet = {**read, "log": lambda message: None}
        return load_train_data(folder, model, model_id, default_caption=None, **quiet)
