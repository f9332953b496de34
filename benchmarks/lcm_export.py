"""Write a distillation run's checkpoint as a LoRA file: the EMA weights of RUN/lcm.ckpt (or the
raw ones), at a chosen strength and precision. This is how checkpoints of a `family: lcm` run
are compared on the selection sets while it trains, and how the shipped
src/t2i/assets/default_model/lcm_lora.safetensors was written (BENCHMARKS.md, "Few-step generation").

    python benchmarks/lcm_export.py --run RUN --out FILE.safetensors [--strength 0.8] [--half] [--raw]

Then score it, e.g. with the settings the file's metadata names (4-step LCM, or DDIM at its phases):
    python benchmarks/prompt_accuracy.py --n 100 --prompt-seed 777 --image-seed 50000 --lora FILE \\
        --sampler DDIM --steps 4 --cfg 1 --threads 1 --batch-size 50
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the run folder (config.yaml and lcm.ckpt)")
    p.add_argument("--out", required=True, help="the LoRA file to write (.safetensors)")
    p.add_argument("--strength", type=float, default=None, help="scale of every layer's change (default: the run's)")
    p.add_argument("--half", action="store_true", help="write float16 weights (as shipped)")
    p.add_argument("--raw", action="store_true", help="the raw weights, not the EMA average")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from t2i.training.lcm import load_base, student_trainer, write_lcm_lora
    from t2i.training.registry import load_training_config

    torch.set_num_threads(args.threads)
    run, out = Path(args.run), Path(args.out)
    if not (run / "lcm.ckpt").is_file():
        print(f"{run}: no lcm.ckpt; give a folder a `family: lcm` run wrote", file=sys.stderr)
        return 2
    family, cfg, _ = load_training_config(run / "config.yaml")
    if family != "lcm":
        print(f"{run}/config.yaml is a {family!r} run, not an lcm one", file=sys.stderr)
        return 2
    if args.strength is not None:
        cfg = dataclasses.replace(cfg, strength=args.strength)
    model = load_base(cfg)  # the model the LoRA was trained on
    trainer = student_trainer(model, cfg, run)
    trainer.load()
    if not args.raw:
        trainer.apply_ema()
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # save_lora also writes a diffusers copy
        written = write_lcm_lora(model, cfg, trainer.step, Path(tmp), name=out.stem,
                                 dtype=torch.float16 if args.half else None)
        shutil.move(str(written), out)
    print(f"{out}: step {trainer.step}, strength {cfg.strength}, {'raw' if args.raw else 'EMA'} weights, "
          f"{out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
