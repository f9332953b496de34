"""How closely diffusers reproduces what t2i does with the LoRA and textual-inversion files that
`t2i finetune` writes (issue 15's compatibility figure; tests/test_finetune.py asserts <= 2/255).

A tiny random latent diffusion model (the tests' configuration) is saved as a diffusers folder; a
LoRA (UNet attention + LoCon convolutions + text encoder) and a 2-vector embedding are trained for
a few steps at a high learning rate so that they change the picture a lot; then each prompt is
drawn by t2i (`<lora:>` / the embedding's word, DDIM) and by diffusers' StableDiffusionPipeline
(load_lora_weights on t2i's kohya-format file and on its diffusers-format copy,
load_textual_inversion; its default scheduler is DDIM for this folder) with the same seed. Reported:
the largest and mean absolute pixel difference (0-255) over all prompts and seeds, next to how far
the file moves t2i's own picture (so that "equal" means something).

    OMP_NUM_THREADS=1 nice python benchmarks/finetune_compat.py --out /tmp/ftcompat
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

PROMPTS = ("a red circle", "a small blue square in the top left", "a green triangle above a white circle",
           "a large yellow square on a purple background")
SEEDS = (1, 2, 3)


def tiny_model(folder: Path) -> Path:
    """The tests' tiny configuration (tests/conftest.py), randomly initialised with seed 0."""
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion, LDMConfig, UNetConfig, VAEConfig
    from t2i.models.text import TextEncoderConfig

    config = LDMConfig(
        resolution=32,
        vae=VAEConfig(block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8),
        unet=UNetConfig(block_out_channels=(16, 32), cross_attention=(False, True), norm_num_groups=8),
        text=TextEncoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=32))
    torch.manual_seed(0)
    save_ldm_folder(LatentDiffusion(config), folder)
    return folder


def pictures(folder: Path, captions: bool = True) -> Path:
    from t2i.data.shapes import ShapesDataset

    folder.mkdir(parents=True, exist_ok=True)
    dataset = ShapesDataset(8, seed=3, resolution=32)
    for i in range(8):
        sample = dataset[i]
        sample["image"].save(folder / f"p{i}.png")
        if captions:
            (folder / f"p{i}.txt").write_text(sample["caption"])
    return folder


def t2i_images(loaded, prompts) -> list[np.ndarray]:
    import t2i

    return [np.asarray(t2i.generate(p, model=loaded, seed=s, steps=8, sampler="DDIM", cfg_scale=7.0)[0]).astype(int)
            for p in prompts for s in SEEDS]


def diffusers_images(pipe, prompts) -> list[np.ndarray]:
    return [np.asarray(pipe(p, num_inference_steps=8, guidance_scale=7.0,
                            generator=torch.Generator().manual_seed(s)).images[0]).astype(int)
            for p in prompts for s in SEEDS]


def difference(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, float]:
    gaps = [np.abs(x - y) for x, y in zip(a, b)]
    return int(max(g.max() for g in gaps)), float(np.mean([g.mean() for g in gaps]))


def main() -> None:
    from diffusers import StableDiffusionPipeline

    import t2i

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = tiny_model(args.out / "tiny")
    data = pictures(args.out / "pictures")
    common = {"model": str(model), "steps": 8, "batch_size": 4, "sample_every": 0, "log_every": 1000}
    lora = t2i.finetune("lora", outdir=args.out / "lora", name="shapes", rank=4, conv_rank=4, train_text_encoder=True,
                        lr=0.05, data=data, **common)
    embedding = t2i.finetune("ti", outdir=args.out / "ti", name="zork", init_word="red", vectors=2, lr=0.1,
                             caption="a zork shape", data=pictures(args.out / "plain", captions=False), **common)

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    base = t2i.load(model, precision="full", lora_dirs=lora.parent, embedding_dirs=args.out / "no-embeddings")
    plain = t2i_images(base, PROMPTS)
    rows.append(("base model (no file)", difference(plain, diffusers_images(pipe, PROMPTS)), None))
    tuned = t2i_images(base, [f"{p} <lora:shapes:1>" for p in PROMPTS])
    pipe.load_lora_weights(str(lora))
    rows.append(("LoRA, kohya-format file", difference(tuned, diffusers_images(pipe, PROMPTS)), difference(plain, tuned)))
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(lora.parent / "diffusers"))
    rows.append(("LoRA, diffusers-format copy", difference(tuned, diffusers_images(pipe, PROMPTS)), difference(plain, tuned)))
    pipe.unload_lora_weights()

    zork = [p.replace("a ", "a zork ", 1) for p in PROMPTS]
    with_embedding = t2i.load(model, precision="full", embedding_dirs=embedding.parent)
    mine = t2i_images(with_embedding, zork)
    pipe.load_textual_inversion(str(embedding), token="zork")
    rows.append(("TI embedding (2 vectors)", difference(mine, diffusers_images(pipe, zork)),
                 difference(t2i_images(base, zork), mine)))

    print(f"\n{len(PROMPTS)} prompts x {len(SEEDS)} seeds, 32 px, DDIM 8 steps, CFG 7; pixel values 0-255\n")
    print("| file | t2i vs diffusers: max | mean | the file's own effect in t2i: max | mean |")
    print("|---|---|---|---|---|")
    for name, (top, mean), effect in rows:
        own = f"{effect[0]} | {effect[1]:.2f}" if effect else "- | -"
        print(f"| {name} | {top} | {mean:.3f} | {own} |")


if __name__ == "__main__":
    main()
