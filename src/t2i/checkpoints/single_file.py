"""Load users' Stable Diffusion files offline: an original-layout single file (`.safetensors`,
`.ckpt`, ...) or a plain diffusers folder, into a `StableDiffusionModel`.

A single file carries weights only. Its architecture is detected from the tensors
(t2i.checkpoints.detect) and the matching config folder shipped in t2i/assets/sd_configs
(`sd15`, `sd2`, `sdxl`; or a diffusers folder the caller names) says how to build the modules.
Modules are built without memory (meta device) and every tensor is then placed from the file,
strictly: a missing tensor, a tensor of the wrong shape or a stray tensor inside a component
fails with one message naming the file, never a partial load.

    model = load_single_file("v1-5-pruned-emaonly.safetensors")
    model = load_diffusers_folder("my-diffusers-model/")
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from t2i.checkpoints.component_limits import check_component_config
from t2i.checkpoints.convert import (
    Target, clip_target, open_clip_target, read_target, text_name, unet_target, vae_target,
)
from t2i.checkpoints.detect import UNET_PREFIX, VAE_PREFIX, detect_architecture, resolve_prediction_type
from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.loaded import LoadedModel, file_hash
from t2i.checkpoints.preload import take as take_preload
from t2i.checkpoints.safe_load import load_state_dict_file, read_safetensors_header, same_kind, sniff_format
from t2i.models.sd import SDModelConfig, StableDiffusionModel
from t2i.models.text import load_tokenizer

SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionInpaintPipeline",
                "StableDiffusionXLInpaintPipeline")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")


def bundled_config_dir(name: str) -> Path:
    return Path(str(resources.files("t2i") / "assets" / "sd_configs" / name))


@dataclass
class FolderConfigs:
    """The JSON configs of one diffusers-layout folder (no weights)."""

    folder: Path
    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict
    tokenizer: dict
    text_encoder_2: dict | None = None
    tokenizer_2: dict | None = None


def _read_json(path: Path, optional: bool = False) -> dict | None:
    if not path.is_file():
        if optional:
            return None
        raise ModelLoadError(f"{path} is missing; a diffusers-layout config folder needs it")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise ModelLoadError(f"cannot read {path}: {err}") from err
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path} is not a JSON object; a diffusers config file is one")
    return value


def read_configs(folder: str | Path) -> FolderConfigs:
    folder = Path(folder)
    two = (folder / "text_encoder_2").is_dir()
    configs = FolderConfigs(
        folder=folder,
        unet=_read_json(folder / "unet" / "config.json"),
        vae=_read_json(folder / "vae" / "config.json"),
        text_encoder=_read_json(folder / "text_encoder" / "config.json"),
        scheduler=_read_json(folder / "scheduler" / "scheduler_config.json"),
        tokenizer=_read_json(folder / "tokenizer" / "tokenizer_config.json", optional=True) or {},
        text_encoder_2=_read_json(folder / "text_encoder_2" / "config.json") if two else None,
        tokenizer_2=(_read_json(folder / "tokenizer_2" / "tokenizer_config.json", optional=True) or {})
        if two else None,
    )
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):  # untrusted: sizes bounded before a build
        if getattr(configs, part) is not None:
            check_component_config(part, getattr(configs, part), folder / part / "config.json")
    return configs


# ----------------------------------------------------------------------------- building modules


def _empty(build: Callable[[], nn.Module]) -> nn.Module:
    """A module whose parameters take no memory until the file's tensors are assigned (buffers
    such as CLIP's position ids are made normally: files do not carry them)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _text_module(config: dict, with_projection: bool) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig.from_dict({k: v for k, v in config.items() if not k.startswith("_")}))


def _fill(module: nn.Module, component: str, state: dict[str, Tensor], target_of: Callable[[str], Target],
          source: Path, label: str, area: str, dtype: torch.dtype,
          ignore: Callable[[str], bool] = lambda key: False,
          memory_format: torch.memory_format = torch.contiguous_format) -> None:
    """Assign every parameter of `module` from `state` through `target_of`, cast to `dtype` (and
    4-d weights to `memory_format`) in one step from the file's memory-mapped tensors: a tensor
    already in that dtype and layout is used as it is, never copied. All problems of the
    component (missing, wrong shape, stray tensors whose names start with `area`, unless
    `ignore`d) in one ModelLoadError."""
    expected = module.state_dict()
    new, used, missing, wrong = {}, set(), [], []
    for name, slot in expected.items():
        try:
            target = target_of(name)
        except ValueError as err:
            raise ModelLoadError(f"{source}: the {component} config does not fit the {label} layout: {err}") from err
        used.add(target.key)
        if target.key not in state:
            missing.append(target.key)
            continue
        value = read_target(state, target)
        if tuple(value.shape) != tuple(slot.shape):
            wrong.append(f"{target.key} {tuple(state[target.key].shape)} (expected {tuple(slot.shape)})")
            continue
        if not same_kind(value, slot):  # e.g. F16 relabelled I16: values would be cast, or assign would fail
            wrong.append(f"{target.key} {value.dtype} (expected {slot.dtype})")
            continue
        if value.is_floating_point():
            value = value.to(dtype=dtype, memory_format=memory_format if value.ndim == 4 else torch.preserve_format)
        new[name] = value
    stray = sorted(k for k in state if k.startswith(area) and k not in used and not ignore(k))
    problems = mismatch_report(missing, wrong, stray)
    if problems:
        raise ModelLoadError(f"{source} does not match the {label} {component}: {', '.join(problems)}. "
                             f"The file is damaged, mixes models, or needs another config folder")
    module.load_state_dict(new, strict=True, assign=True)
    leftover = [n for n, p in module.named_parameters() if p.is_meta]
    if leftover:  # a bug in the key maps, not in the file
        raise RuntimeError(f"{component} parameters left unloaded: {leftover[:3]}")
    module.eval().requires_grad_(False)


def mismatch_report(missing: list[str], wrong: list[str], stray: list[str]) -> list[str]:
    """The parts of a strict-loading error: counts of missing, wrong-shape and unexpected tensors,
    each with up to three examples (empty when everything fits)."""
    return [f"{len(items)} {what} (e.g. {'; '.join(items[:3])})"
            for items, what in ((missing, "missing tensors"), (wrong, "tensors of the wrong shape or dtype"),
                                (stray, "unexpected tensors")) if items]


def _ignored_text_key(num_layers: int, family: str) -> Callable[[str], bool]:
    """Tensors of a text encoder area that t2i does not use: position ids (recomputed),
    OpenCLIP's logit scale and attention mask, and for SD 2.x the last OpenCLIP layer and the
    projection (SD 2.x conditions on the penultimate layer's normalised output)."""
    def ignore(key: str) -> bool:
        if key.endswith(("position_ids", "logit_scale", "attn_mask")):
            return True
        return family == "sd2" and (key.endswith(".text_projection") or f".resblocks.{num_layers}." in key)
    return ignore


def _tokenizer(folder: Path, config: dict, max_positions: int):
    """The CLIP tokenizer: the folder's own vocab files if present, else t2i's bundled CLIP BPE
    (the same vocabulary for CLIP ViT-L and OpenCLIP); pad token from the folder's config
    ("!" for OpenCLIP encoders, as they were trained)."""
    length = config.get("model_max_length", max_positions)
    length = max_positions if not isinstance(length, int) or length > max_positions else length
    own = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    tokenizer = load_tokenizer(folder if own else None, max_length=length)
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if pad:
        if tokenizer.convert_tokens_to_ids(pad) == tokenizer.unk_token_id and pad != tokenizer.unk_token:
            raise ModelLoadError(f"{folder}: pad token {pad!r} is not in the CLIP vocabulary")
        tokenizer.pad_token = pad
    return tokenizer


def _placements(runtime, unet: nn.Module, vae: nn.Module, dtype: torch.dtype):
    """component -> (dtype, memory format) to read it into: the runtime's choice for a model with
    this (still empty) UNet, or `dtype` for every component without a runtime."""
    if runtime is None:
        return lambda component: (dtype, torch.contiguous_format)
    from types import SimpleNamespace

    final = runtime.for_model(SimpleNamespace(unet=unet))  # decided by the UNet's size: meta tensors suffice
    modules = {"unet": unet, "vae": vae}
    return lambda component: final.placement(component, modules.get(component))


def _scheduler_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- entry points


def load_single_file(path: str | Path, *, config_dir: str | Path | None = None, prediction_type: str | None = None,
                     dtype: torch.dtype = torch.float32, clip_skip: int = 1, runtime=None) -> StableDiffusionModel:
    """A Stable Diffusion model from one original-layout file. `config_dir`: a diffusers folder
    whose configs describe the file (default: the bundled one for the detected architecture);
    `prediction_type`: "epsilon" or "v_prediction" when the file cannot say (SD 2.x).
    `runtime` (a t2i.runtime.Runtime): read each component straight into the dtype and layout
    the runtime gives it for this model (instead of `dtype` for all)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(path)
    state = load_state_dict_file(path)
    metadata = read_safetensors_header(path)[1] if sniff_format(path) == "safetensors" else {}
    own = metadata.get("t2i_family") or metadata.get("t2i_kind")
    if own:
        raise ModelLoadError(f"{path} is a t2i {own} model file, not a Stable Diffusion checkpoint; "
                             f"it has its own commands (t2i.pipelines.families)")
    arch = detect_architecture(state, path)
    prediction, notes = resolve_prediction_type(arch, path, state, metadata, prediction_type)
    configs = read_configs(config_dir if config_dir else bundled_config_dir(arch.config_name))
    if (configs.text_encoder_2 is not None) != (arch.family == "sdxl"):
        raise ModelLoadError(f"{path} is {arch.label} but the config folder {configs.folder} is "
                             f"{'SDXL' if configs.text_encoder_2 is not None else 'not SDXL'}")
    label = arch.label
    unet_config = {**configs.unet, "in_channels": arch.in_channels}
    unet = _empty(lambda: UNet2DConditionModel.from_config(unet_config))
    vae = _empty(lambda: AutoencoderKL.from_config(configs.vae))
    place = _placements(runtime, unet, vae, dtype)
    # the tensors the CLI cast while the libraries imported, when they are in these very dtypes
    state = take_preload(path, {part: place(part) for part in ("unet", "vae", "text_encoder")}) or state
    dtype_of = lambda part: place(part)[0]  # noqa: E731
    layout_of = lambda part: place(part)[1]  # noqa: E731
    _fill(unet, "UNet", state, lambda n: unet_target(n, unet_config), path, label, UNET_PREFIX, dtype_of("unet"),
          memory_format=layout_of("unet"))
    _fill(vae, "VAE", state, lambda n: vae_target(n, configs.vae), path, label, VAE_PREFIX, dtype_of("vae"),
          lambda k: k.startswith(VAE_PREFIX + "loss."), layout_of("vae"))  # a training loss's weights, if any

    encoders, tokenizers = [], []
    for i, prefix in enumerate(arch.text_prefixes):  # SDXL: CLIP ViT-L, then OpenCLIP bigG
        sub = "text_encoder_2" if i else "text_encoder"
        te_config = getattr(configs, sub)
        encoder = _empty(lambda: _text_module(te_config, with_projection=i == 1))
        open_clip = arch.family == "sd2" or i == 1
        to = open_clip_target if open_clip else clip_target
        _fill(encoder, sub.replace("_", " "), state, lambda n, p=prefix: to(text_name(n), p), path, label,
              prefix.removesuffix("text_model."), dtype_of(sub),
              _ignored_text_key(te_config["num_hidden_layers"], arch.family))
        encoders.append(encoder)
        tok = sub.replace("text_encoder", "tokenizer")
        tokenizers.append(_tokenizer(configs.folder / tok, getattr(configs, tok), te_config["max_position_embeddings"]))
    del state

    resolution = arch.default_resolution(prediction) if config_dir is None else \
        int(configs.vae.get("sample_size") or arch.default_resolution(prediction))
    config = SDModelConfig(family=arch.family, resolution=resolution, prediction_type=prediction,
                           scaling_factor=float(configs.vae.get("scaling_factor", 0.18215)), clip_skip=clip_skip,
                           inpainting=arch.inpainting)
    return StableDiffusionModel(
        config, tokenizer=tokenizers[0], text_encoder=encoders[0], unet=unet, vae=vae,
        scheduler_config=_scheduler_config(configs.scheduler),
        tokenizer_2=tokenizers[1] if len(tokenizers) > 1 else None,
        text_encoder_2=encoders[1] if len(encoders) > 1 else None, notes=tuple(notes))


def _weights_file(folder: Path) -> Path:
    """One component's weights file in a diffusers subfolder: safetensors preferred, then an
    fp16 variant, then a pickle (read weights-only)."""
    names = [*WEIGHT_NAMES, *(n.replace(".safetensors", ".fp16.safetensors") for n in WEIGHT_NAMES[:2])]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if list(folder.glob("*.index.json")):
        raise ModelLoadError(f"{folder} holds sharded weights; t2i loads one weights file per component")
    raise ModelLoadError(f"{folder} has no weights file (expected one of {', '.join(names)})")


def load_diffusers_folder(folder: str | Path, *, prediction_type: str | None = None,
                          dtype: torch.dtype = torch.float32, clip_skip: int = 1, runtime=None) -> StableDiffusionModel:
    """A Stable Diffusion model from a folder saved by diffusers (`save_pretrained`); `runtime`:
    as for `load_single_file`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    index = _read_json(folder / "model_index.json")
    if index.get("_class_name") not in SD_PIPELINES:
        raise ModelLoadError(f"{folder} holds a {index.get('_class_name')!r}; t2i loads {', '.join(SD_PIPELINES)}")
    configs = read_configs(folder)
    xl = configs.text_encoder_2 is not None
    label = "diffusers " + index["_class_name"]

    unet = _empty(lambda: UNet2DConditionModel.from_config(configs.unet))
    vae = _empty(lambda: AutoencoderKL.from_config(configs.vae))
    place = _placements(runtime, unet, vae, dtype)

    def fill(module, sub, rename=lambda n: n, ignore=lambda k: False):
        file = _weights_file(folder / sub)
        state = {rename(k): v for k, v in load_state_dict_file(file).items()}
        part_dtype, layout = place(sub)
        _fill(module, sub, state, lambda n: Target(rename(n)), file, label, "", part_dtype, ignore, layout)
        return module

    unet, vae = fill(unet, "unet"), fill(vae, "vae")
    encoders, tokenizers = [], []
    for sub in ("text_encoder", "text_encoder_2") if xl else ("text_encoder",):
        te_config = getattr(configs, sub)
        projection = sub == "text_encoder_2" or "CLIPTextModelWithProjection" in (te_config.get("architectures") or [])
        encoder = _empty(lambda: _text_module(te_config, projection))
        # files from older transformers name CLIPTextModel tensors with `text_model.`, newer without
        encoders.append(fill(encoder, sub, text_name, lambda k: k.endswith("position_ids")))
        tok = sub.replace("text_encoder", "tokenizer")
        tokenizers.append(_tokenizer(folder / tok, getattr(configs, tok), te_config["max_position_embeddings"]))
    scheduler = _scheduler_config(configs.scheduler)
    sd2 = tokenizers[0].pad_token == "!" or configs.unet.get("cross_attention_dim") == 1024
    config = SDModelConfig(family="sdxl" if xl else ("sd2" if sd2 else "sd1"),
                           resolution=int(configs.vae.get("sample_size") or 512),
                           prediction_type=prediction_type or scheduler.get("prediction_type", "epsilon"),
                           scaling_factor=float(configs.vae.get("scaling_factor", 0.18215)), clip_skip=clip_skip,
                           inpainting=configs.unet.get("in_channels") == 9)
    return StableDiffusionModel(config, tokenizer=tokenizers[0], text_encoder=encoders[0], unet=unet, vae=vae,
                                scheduler_config=scheduler, tokenizer_2=tokenizers[1] if xl else None,
                                text_encoder_2=encoders[1] if xl else None)


def load_user_model(path: str | Path, runtime, *, config_dir: str | Path | None = None,
                    prediction_type: str | None = None, clip_skip: int = 1):
    """A LoadedModel from a single file or a plain diffusers folder, on the runtime's device and
    dtype; name and hash as the web UI shows them (file stem, first 10 hex of the sha256)."""
    path = Path(path)
    # each component read straight into its final dtype and layout (no float32 round trip)
    options = {"prediction_type": prediction_type, "clip_skip": clip_skip, "runtime": runtime}
    if path.is_file():
        model = load_single_file(path, config_dir=config_dir, **options)
        hashed, name = path, path.stem
    elif (path / "model_index.json").is_file():
        model = load_diffusers_folder(path, **options)
        hashed, name = _weights_file(path / "unet"), path.name
    else:
        raise ModelLoadError(f"{path} is neither a model file (.safetensors, .ckpt) nor a model folder "
                             f"(model_index.json with unet/, vae/, text_encoder/, tokenizer/)")
    for note in model.notes:
        logging.getLogger("t2i").warning("%s: %s", path.name, note)
    runtime = runtime.for_model(model)  # the final precision and layout depend on the model's size
    runtime.place(model)
    timing = logging.getLogger("t2i.timing")  # phase events for benchmarks/cold_start.py (DEBUG, silent)
    timing.debug("weights placed")
    digest = file_hash(hashed)
    timing.debug("hashed")
    return LoadedModel(model, name, digest, path, runtime)

