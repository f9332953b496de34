"""Images from a VQGAN + autoregressive transformer pair: sampling and image completion.

    model, vqgan = load_ar_pair("runs/shapes-ar")     # run folder (finished or not) or ar.safetensors
    images = sample_ar(model, vqgan, n=4, seed=0, prompt="a red circle", top_k=32)
    images, codes = complete_ar(model, vqgan, photo, n=4, seed=0)   # keeps the top half's codes

The transformer draws a code grid token by token (t2i.models.ar: temperature, top-k, top-p, cached
keys/values); the VQGAN decodes it. Image i uses seed + i and equals a single run with that seed.
A VQGAN alone does not generate: it is the first stage that the transformer learns the codes of.
"""
from __future__ import annotations

from pathlib import Path

import torch

from t2i.checkpoints.family_file import load_family_file
from t2i.errors import ModelLoadError
from t2i.models.ar import ARConfig, CodeTransformer, complete_codes, generate_images
from t2i.models.common import check_seed_count, from_pil_images, to_pil_images
from t2i.models.vqgan import VQGAN
from t2i.training.runs import model_from_checkpoint

AR_FILE, FIRST_STAGE_FILE = "ar.safetensors", "vqgan.safetensors"  # what an AR run folder holds
VQGAN_ONLY = ("is a VQGAN (the first stage: it encodes and decodes images, it does not generate them); "
              "train the autoregressive transformer on its codes (t2i train configs/shapes-ar.yaml, "
              "first_stage: pointing at it) and sample that run: t2i sample runs/shapes-ar")


def _first_stage_of_run(folder: Path) -> Path:
    """A run's own copy of its VQGAN (written when training finishes), else its config's first_stage."""
    if (folder / FIRST_STAGE_FILE).is_file():
        return folder / FIRST_STAGE_FILE
    import yaml

    config = folder / "config.yaml"
    first_stage = (yaml.safe_load(config.read_text()) or {}).get("first_stage") if config.is_file() else None
    if not first_stage or not Path(first_stage).is_file():
        raise ModelLoadError(f"cannot find the VQGAN of {folder} (no {FIRST_STAGE_FILE} in it, config first_stage "
                             f"{first_stage!r}); give it with --first-stage / first_stage=")
    return Path(first_stage)


def load_ar_pair(path: str | Path, first_stage: str | Path | None = None):
    """(CodeTransformer, VQGAN, the transformer's file or checkpoint) from an AR run folder or an
    ar .safetensors file; the VQGAN comes from `first_stage`, else from beside the transformer."""
    path = Path(path)
    if path.is_dir():
        if (path / AR_FILE).is_file():
            model, source = load_family_file(CodeTransformer, path / AR_FILE), path / AR_FILE
        elif (path / "ar.ckpt").is_file():
            source = path / "ar.ckpt"
            model = model_from_checkpoint(source, "ar", CodeTransformer, ARConfig).requires_grad_(False)
        else:
            raise ModelLoadError(f"{path} holds neither {AR_FILE} nor an ar.ckpt training checkpoint")
        stage = Path(first_stage) if first_stage else _first_stage_of_run(path)
    else:
        model, source = load_family_file(CodeTransformer, path), path
        stage = Path(first_stage) if first_stage else path.parent / FIRST_STAGE_FILE
        if not stage.is_file():
            raise ModelLoadError(f"{path} is an autoregressive transformer; its VQGAN is not beside it "
                                 f"({stage} does not exist): give it with --first-stage / first_stage=")
    vqgan = load_family_file(VQGAN, stage)
    if vqgan.num_codes != model.config.num_codes or tuple(vqgan.code_shape) != model.config.code_shape:
        raise ModelLoadError(f"{stage} ({vqgan.num_codes} codes in {vqgan.code_shape}) is not the first stage the "
                             f"transformer {source} was trained on ({model.config.num_codes} codes in "
                             f"{model.config.code_shape})")
    return model, vqgan, source


def ar_conditions(model, n: int, class_name: str | int | None = None, prompt: str | None = None) -> list:
    """One condition per image: None (unconditional), a class (given, or class i mod K for image i
    so a grid shows every class) or the prompt."""
    kind = model.config.conditioning
    if kind != "text" and prompt is not None:
        raise ValueError(f"this transformer is {'class-conditional' if kind == 'class' else 'unconditional'}; "
                         f"it takes no prompt")
    if kind != "class" and class_name is not None:
        raise ValueError(f"this transformer is {'text-conditional' if kind == 'text' else 'unconditional'}; "
                         f"it has no classes")
    if kind == "text":
        if prompt is None:
            raise ValueError("this transformer is text-conditional: give a prompt")
        return [prompt] * n
    if kind == "class":
        return [class_name] * n if class_name is not None else [i % len(model.config.class_names) for i in range(n)]
    return [None] * n


def _check_size(vqgan, width: int | None, height: int | None) -> None:
    side = vqgan.config.resolution
    for what, value in (("width", width), ("height", height)):
        if value is not None and value != side:
            raise ValueError(f"the transformer draws code grids of its trained size only: {side}x{side}; got {what} {value}")


@torch.no_grad()
def sample_ar(model, vqgan, n: int, seed: int, class_name: str | int | None = None, prompt: str | None = None, *,
              width: int | None = None, height: int | None = None, top_k: int = 0, top_p: float = 1.0,
              temperature: float = 1.0, use_cache: bool = True, batch_size: int = 16) -> list:
    """n images; image i from seed + i. top_k 0 and top_p 1 disable those filters; top_k 1 is greedy."""
    _check_size(vqgan, width, height)
    seeds = check_seed_count(n, seed)
    conditions = ar_conditions(model, n, class_name, prompt)
    sampling = dict(top_k=top_k, top_p=top_p, temperature=temperature, use_cache=use_cache)
    images = []
    for i in range(0, n, batch_size):
        images += to_pil_images(generate_images(model, vqgan, conditions[i:i + batch_size], seeds[i:i + batch_size],
                                                **sampling))
    return images


@torch.no_grad()
def complete_ar(model, vqgan, image, n: int, seed: int, class_name: str | int | None = None,
                prompt: str | None = None, *, keep_rows: int | None = None, top_k: int = 0, top_p: float = 1.0,
                temperature: float = 1.0, use_cache: bool = True) -> tuple[list, torch.Tensor]:
    """Image completion (Esser et al. 2021, Fig. 8): encode `image` (a PIL image, centre-cropped and
    resized to the VQGAN's size), keep its first `keep_rows` code rows (default: the top half) and
    sample the rest, n times. Returns (images, codes (n, h, w))."""
    seeds = check_seed_count(n, seed)
    h, w = model.config.code_shape
    keep_rows = h // 2 if keep_rows is None else keep_rows
    device = next(vqgan.parameters()).device
    given = vqgan.encode_codes(from_pil_images([image], vqgan.config.resolution).to(device)).cpu()  # (1, h, w)
    cond_ids = model.condition_ids(ar_conditions(model, n, class_name, prompt))
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    codes = complete_codes(model, cond_ids, given.expand(n, h, w), keep_rows, generators, top_k=top_k, top_p=top_p,
                           temperature=temperature, use_cache=use_cache)
    return to_pil_images(vqgan.decode_codes(codes.to(device))), codes
