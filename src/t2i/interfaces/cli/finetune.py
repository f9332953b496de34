"""`t2i finetune`: fine-tune a model on a folder of your pictures.

    t2i finetune lora --model default --data photos/ --outdir out/ --rank 4
    t2i finetune dreambooth --data dog/ --outdir out/ --instance-prompt "a sks dog" --class-prompt "a dog"
    t2i finetune ti --data cat/ --outdir out/ --name kitty --init-word cat --vectors 4
    t2i finetune hypernetwork --data style/ --outdir out/
    t2i finetune full --data photos/ --outdir out/
    t2i finetune run.yaml --steps 200           # a FinetuneConfig in YAML; flags override it
    accelerate launch --num_processes 2 -m t2i.interfaces.cli finetune lora ...   # data parallel

Thin: the flags map onto t2i.training.finetune.config.FinetuneConfig (the table below), which
validates them; the run is t2i.training.finetune.loop.finetune. Prints the output's path.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

METHOD_HELP = ("lora (LoRA/LoCon file), dreambooth (model folder, prior preservation), ti (textual-inversion "
               "embedding), hypernetwork (web UI hypernetwork), full (model folder)")

# flag -> (config key, or "section.key"; how argparse reads it; help). Values are validated by the config.
FLAGS: dict[str, tuple[str, dict, str]] = {
    "--model": ("model", {}, "base model: default (the bundled one), a t2i model folder, an SD .safetensors/.ckpt "
                             "or a diffusers folder"),
    "--data": ("data", {}, "folder of images with .txt/.caption sidecars or metadata.jsonl; N_name subfolders "
                           "repeat their images N times"),
    "--outdir": ("outdir", {}, "output folder"),
    "--name": ("name", {}, "output name (OUTDIR/NAME.safetensors); ti: the word to learn (default: the data "
                           "folder's name)"),
    "--caption": ("caption", {}, "caption for images that have none"),
    "--seed": ("seed", {}, "seed of the run (batches, noise, initial weights of new layers)"),
    "--device": ("device", {}, "torch device (default: cuda if present, else cpu)"),
    "--resolution": ("resolution", {}, "training size in pixels (default: the model's)"),
    "--no-buckets": ("buckets", {"action": "store_false"}, "centre-crop every image to a square instead of "
                                                           "aspect-ratio buckets"),
    "--max-aspect": ("max_aspect", {}, "largest bucket aspect ratio (default 2)"),
    "--flip": ("flip", {"action": "store_true"}, "random horizontal flips; a mirrored image's caption trades "
                                                 "\"left\" and \"right\""),
    "--flip-keeps-captions": ("flip_keeps_captions", {"action": "store_true"},
                              "with --flip: leave \"left\" and \"right\" in mirrored images' captions as written"),
    "--caption-dropout": ("caption_dropout", {}, "share of images trained with an empty caption"),
    "--steps": ("steps", {}, "optimizer steps (default: per method and model size)"),
    "--batch-size": ("batch_size", {}, "images per step and process"),
    "--grad-accum": ("grad_accum", {}, "micro-batches per optimizer step"),
    "--lr": ("lr", {}, "learning rate"),
    "--text-encoder-lr": ("text_encoder_lr", {}, "learning rate of the text encoder (default: --lr)"),
    "--lr-schedule": ("lr_schedule", {}, "constant, cosine or linear (after warm-up)"),
    "--warmup-steps": ("warmup_steps", {}, "linear learning-rate warm-up steps"),
    "--weight-decay": ("weight_decay", {}, "AdamW weight decay"),
    "--grad-clip": ("grad_clip", {}, "gradient norm clipping (0 = off)"),
    "--optimizer": ("optimizer", {}, "adamw or adamw8bit (needs bitsandbytes)"),
    "--mixed-precision": ("mixed_precision", {}, "no, bf16 or fp16 (autocast; fp16 needs a GPU)"),
    "--gradient-checkpointing": ("gradient_checkpointing", {"action": "store_true"}, "less memory, ~30%% slower"),
    "--min-snr-gamma": ("min_snr_gamma", {}, "min-SNR loss weighting (0 = plain MSE; default 5)"),
    "--noise-offset": ("noise_offset", {}, "noise offset (e.g. 0.05: darker darks, brighter brights)"),
    "--ema-decay": ("ema_decay", {}, "EMA of the trained weights (default on small models: full and dreambooth "
                                     "0.99; on large: full 0.999; otherwise off)"),
    "--train-text-encoder": ("train_text_encoder", {"action": "store_true"},
                             "lora: LoRA on the text encoder(s) too; dreambooth/full: train the text encoder(s)"),
    "--checkpoint-every": ("checkpoint_every", {}, "steps between checkpoints (default: 4 per run)"),
    "--sample-every": ("sample_every", {}, "steps between sample grids (default: with each checkpoint; 0 = none)"),
    "--sample-prompt": ("sample_prompts", {"action": "append"}, "a prompt for the sample grids (repeat for more)"),
    "--sample-steps": ("sample_steps", {}, "DDIM steps of the sample grids"),
    "--log-every": ("log_every", {}, "steps between loss lines"),
    "--rank": ("lora.rank", {}, "LoRA rank (default 8)"),
    "--alpha": ("lora.alpha", {}, "LoRA alpha (default: the rank)"),
    "--conv-rank": ("lora.conv_rank", {}, "LoCon: rank of LoRA on the 3x3 convolutions (default 0 = off)"),
    "--conv-alpha": ("lora.conv_alpha", {}, "LoCon alpha (default: the conv rank)"),
    "--lora-targets": ("lora.targets", {}, "attention (to_q/k/v/out) or transformer (every linear layer of the "
                                           "transformer blocks)"),
    "--init-embedding": ("lora.init_embedding", {}, "lora: pivotal tuning: a textual-inversion embedding (e.g. from "
                                                    "`t2i finetune ti`) whose vectors stand for --name in the captions "
                                                    "while the LoRA trains; generate with both"),
    "--init-word": ("ti.init_word", {}, "ti: the new word's vectors start as this word's (default *)"),
    "--vectors": ("ti.vectors", {}, "ti: vectors per token (default 1)"),
    "--instance-prompt": ("dreambooth.instance_prompt", {}, "dreambooth: the caption of every training image"),
    "--class-prompt": ("prior.class_prompts", {"action": "append"},
                       "prior preservation: the base model draws --class-images images of this prompt (repeat for "
                       "several, used in turn), trained beside yours so the model keeps what it knew"),
    "--class-images": ("prior.class_images", {}, "prior preservation: how many class images (default 50)"),
    "--prior-weight": ("prior.prior_weight", {}, "prior preservation: weight of the class images' loss (default 1)"),
    "--class-dir": ("prior.class_dir", {}, "prior preservation: where class images are kept and reused (default "
                                           "OUTDIR/class_images); your own captioned images there, without "
                                           "--class-prompt, are used as they are"),
    "--layer-structure": ("hypernetwork.layer_structure", {"type": lambda text: text.split(",")},
                          "hypernetwork: width multipliers, e.g. 1,2,1"),
    "--activation": ("hypernetwork.activation", {}, "hypernetwork: linear, relu, leakyrelu, elu, swish, tanh, ..."),
    "--layer-norm": ("hypernetwork.layer_norm", {"action": "store_true"}, "hypernetwork: layer normalisation"),
    "--dropout": ("hypernetwork.dropout", {"action": "store_true"}, "hypernetwork: dropout (the web UI's 0.3)"),
}


def add_finetune_commands(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on your pictures: LoRA, DreamBooth, textual inversion, "
                                        "hypernetwork, full",
                       description="Fine-tune a model on a folder of captioned pictures. METHOD is one of "
                                   f"{METHOD_HELP}; or give a YAML config (a FinetuneConfig) whose keys the flags "
                                   "override. Every image is read first; what cannot train is listed and skipped.")
    p.add_argument("target", metavar="METHOD|CONFIG.yaml",
                   help="lora, dreambooth, ti, hypernetwork, full, or a YAML file")
    p.add_argument("--resume", action="store_true", help="continue the run in --outdir from its checkpoint")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    for flag, (key, kwargs, help_text) in FLAGS.items():
        if "action" not in kwargs or kwargs["action"] == "append":
            kwargs = {"metavar": flag[2:].upper().replace("-", "_"), **kwargs}
        p.add_argument(flag, dest="cfg:" + key, default=argparse.SUPPRESS, help=help_text, **kwargs)
    p.set_defaults(run=_run_finetune)


def config_from_args(args):
    """The FinetuneConfig of the command line: METHOD's defaults or CONFIG.yaml, flags on top."""
    from t2i.config import read_yaml_mapping
    from t2i.training.finetune.config import METHODS, config_from

    given = {dest[4:]: value for dest, value in vars(args).items() if dest.startswith("cfg:")}
    if args.target in METHODS:
        data, where = {"method": args.target}, "flags"
    elif args.target.endswith((".yaml", ".yml")) or Path(args.target).is_file():
        data, where = read_yaml_mapping(args.target), f"{args.target} with flags"
    else:
        raise ValueError(f"{args.target!r} is neither a method ({', '.join(METHODS)}) nor a YAML config file")
    method = data.get("method", "lora")
    for key, value in given.items():
        section, _, field = key.rpartition(".")
        if section and section != method and section != "prior":
            flag = next(f for f, (k, _, _) in FLAGS.items() if k == key)
            raise ValueError(f"{flag} is a {section} option; this run is {method}")
        target = data.setdefault(section, {}) if section else data
        target[field] = value
    return config_from(data, where)


def _run_finetune(args) -> None:
    from t2i.training.finetune.loop import finetune

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    path = finetune(cfg, resume=args.resume)
    if path is not None and int(os.environ.get("RANK", "0")) == 0:  # one line also under accelerate launch
        print(path)
