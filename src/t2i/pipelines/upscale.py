"""Upscaling: a super-resolution latent diffusion model (t2i.models.sr), or a classic resize.

    from t2i.pipelines.upscale import UpscaleParams, load_sr_model, upscale

    sr = load_sr_model("runs/shapes-sr")              # a run folder or its model .safetensors file
    result = upscale(image, UpscaleParams(seed=1, steps=50, noise_level=20), sr)
    result.images[0].save("big.png")                 # image.size * 2, infotext in result.infotexts[0]
    plain = upscale([a, b], UpscaleParams(upscaler="lanczos", scale=4))   # no model needed

Image i of a call uses seed + i and equals a single call with that seed. The model upscales by its
trained factor (`--scale` must match it) and takes any input size, larger than trained included
(t2i.models.sr pads to the UNet's size multiple and crops back). Inputs are converted to RGB
(an alpha channel is dropped). `UpscaleParams` is the one schema behind the CLI flags of
`t2i upscale` and their validation.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from t2i.diffusion.samplers import resolve_sampler
from t2i.errors import ModelLoadError, version
from t2i.metadata import build_infotext
from t2i.pipelines.params import ParamError, param
from t2i.pipelines.schema import validate_strict as validate

UPSCALERS = ("model", "lanczos", "nearest", "bicubic")
MAX_SEED = 2**32 - 1  # as txt2img's seeds
_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST,
             "bicubic": Image.Resampling.BICUBIC}


@dataclass
class UpscaleParams:
    # no static choices: the names of upscaler files in --upscaler-dir are valid too (checked at run time)
    upscaler: str = param("model", "model: the super-resolution diffusion model (--model); lanczos, nearest, bicubic: "
                                   "a classic resize; NAME: an upscaler weights file (ESRGAN, Real-ESRGAN, SwinIR, "
                                   "HAT, DAT, ...) called NAME in --upscaler-dir")
    scale: int = param(2, "upscale factor; with a diffusion model it must be the factor the model was trained for; an "
                          "upscaler file runs as often as needed, then Lanczos gives the exact size",
                       minimum=1, maximum=8)
    steps: int = param(50, "sampling steps (model)", minimum=1, maximum=1000)
    sampler: str = param("DDIM", "sampler name, e.g. DDIM, Euler a, DPM++ 2M (model)")
    seed: int = param(-1, "seed of the first image; image i uses seed + i; -1 = random (model)",
                      minimum=-1, maximum=MAX_SEED)
    noise_level: int = param(20, "noise added to the low-res input before conditioning: higher trusts the "
                                 "input less (model; at most the model's max_noise_level)", minimum=0, maximum=999)
    eta: float = param(0.0, "DDIM eta: 0 deterministic, 1 ancestral (model)", minimum=0.0, maximum=1.0)
    # the web UI's Extras face restoration, after the upscale (its default order), with the one face
    # restorer of the settings (--face-restorer): each field is the web UI's slot for that kind of model
    gfpgan_visibility: float = param(0.0, "face restoration after upscaling when the face restorer is GFPGAN or "
                                          "RestoreFormer: how much of the restored image to blend in (0 = off)",
                                     minimum=0.0, maximum=1.0, step=0.01)
    codeformer_visibility: float = param(0.0, "face restoration after upscaling when the face restorer is "
                                              "CodeFormer: how much of the restored image to blend in (0 = off)",
                                         minimum=0.0, maximum=1.0, step=0.01)
    codeformer_weight: float = param(0.0, "CodeFormer's fidelity weight: 0 = strongest restoration, 1 = closest to "
                                          "the input", minimum=0.0, maximum=1.0, step=0.01)


@dataclass
class UpscaleResult:
    images: list[Image.Image]
    seeds: list[int]  # per image; empty for a classic resize
    infotexts: list[str]
    params: UpscaleParams  # as run: seed resolved, sampler canonical


@dataclass
class SRModel:
    """A loaded super-resolution model with the name and hash its images' infotext records."""
    model: object  # t2i.models.sr.SuperResolution, eval mode
    path: Path
    name: str = ""
    hash: str = field(default="")


def load_sr_model(path: str | Path, device: str | None = None) -> SRModel:
    """A run folder (its model.safetensors, or while training still runs the EMA weights of sr.ckpt)
    or a model .safetensors file, on `device` (default cpu)."""
    # torch and the model code load here, on first use: the params and a classic resize need neither
    from t2i.checkpoints.family_file import MODEL_FILE, load_family_file
    from t2i.checkpoints.registry import file_hash
    from t2i.models.sr import FAMILY, SRConfig, SuperResolution

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; give a super-resolution run folder or model .safetensors file")
    if path.is_dir() and not (path / MODEL_FILE).is_file():
        ckpt = path / f"{FAMILY}.ckpt"
        if not ckpt.is_file():
            raise ModelLoadError(f"{path} holds neither {MODEL_FILE} nor {ckpt.name}: not a super-resolution run")
        from t2i.training.runs import model_from_checkpoint

        try:
            model = model_from_checkpoint(ckpt, FAMILY, SuperResolution, SRConfig, ema_part="unet")
        except ValueError as err:
            raise ModelLoadError(str(err)) from err
        return SRModel(model.to(device or "cpu"), ckpt, path.name, file_hash(ckpt))
    file = path / MODEL_FILE if path.is_dir() else path
    model = load_family_file(SuperResolution, file).to(device or "cpu")
    name = path.name if path.is_dir() else path.stem
    return SRModel(model, file, name, file_hash(file))


def _as_images(images) -> list[Image.Image]:
    items = [images] if isinstance(images, Image.Image) else list(images) if isinstance(images, (list, tuple)) else None
    if not items or not all(isinstance(im, Image.Image) for im in items):
        raise ValueError(f"expected a PIL image or a non-empty list of PIL images, got {type(images).__name__}")
    return [im.convert("RGB") for im in items]


def resolve_upscale_params(params: UpscaleParams, sr: SRModel | None, library=None) -> UpscaleParams:
    """Validate against the schema and the model; fill in the seed and the canonical sampler name.
    `library`: the upscaler files (model_upscalers.UpscalerLibrary; default: the default folders)."""
    validate(params)
    if params.upscaler not in UPSCALERS:
        from t2i.pipelines.model_upscalers import UpscalerLibrary, unknown_upscaler_message

        library = library or UpscalerLibrary()
        if sr is not None:
            raise ParamError(f"upscaler {params.upscaler!r} is an upscaler file and takes no --model; leave out "
                             f"--model or use --upscaler model")
        files = library.names()
        if params.upscaler not in files:
            raise ParamError(unknown_upscaler_message(params.upscaler, library.folders, files)
                             + f" (built in: {', '.join(UPSCALERS)})")
        return params
    if params.upscaler != "model":
        if sr is not None:
            raise ParamError(f"upscaler {params.upscaler!r} is a classic resize and takes no model; "
                             f"leave out the model or use upscaler 'model'")
        return params
    if sr is None:
        raise ParamError("upscaler 'model' needs a super-resolution model (--model RUN_OR_FILE); "
                         f"without one pick --upscaler {'|'.join(UPSCALERS[1:])}")
    cfg = sr.model.config
    if params.scale != cfg.scale:
        raise ParamError(f"{sr.name} upscales x{cfg.scale}; give scale {cfg.scale} (got {params.scale})")
    if params.noise_level > cfg.max_noise_level:
        raise ParamError(f"noise_level must be <= {cfg.max_noise_level} for {sr.name}, got {params.noise_level}")
    try:
        sampler, _ = resolve_sampler(params.sampler)
    except ValueError as err:
        raise ParamError(str(err)) from err
    seed = params.seed if params.seed != -1 else secrets.randbelow(MAX_SEED + 1)
    return replace(params, sampler=sampler, seed=seed)


def face_visibility(params: UpscaleParams, library) -> tuple[float, float | None]:
    """(visibility, CodeFormer weight or None) of the face restoration the params ask for, checked
    against the settings' face restorer; (0, None) when none is asked for. ParamError before any work
    when no restorer is set or the field does not fit its kind (the web UI has one slot per kind)."""
    if not params.gfpgan_visibility and not params.codeformer_visibility:
        return 0.0, None
    model = library.face_model()  # ParamError when the settings name no face restorer
    codeformer = model.arch == "CodeFormer"
    wrong = "gfpgan_visibility" if codeformer and params.gfpgan_visibility else \
        "codeformer_visibility" if not codeformer and params.codeformer_visibility else None
    if wrong:
        right = "codeformer_visibility" if codeformer else "gfpgan_visibility"
        raise ParamError(f"{wrong}: the face restorer {model.name} is a {model.arch} model; give {right} instead")
    return (params.codeformer_visibility, params.codeformer_weight) if codeformer else (params.gfpgan_visibility, None)


def _face_keys(params: UpscaleParams) -> dict:
    """The web UI's Extras infotext keys for face restoration."""
    if params.codeformer_visibility:
        return {"CodeFormer visibility": params.codeformer_visibility, "CodeFormer weight": params.codeformer_weight}
    return {"GFPGAN visibility": params.gfpgan_visibility or None}


def upscale_infotext(params: UpscaleParams, size: tuple[int, int], seed: int | None, sr: SRModel | None,
                     upscaler_hash: str | None = None) -> str:
    model = sr is not None
    return build_infotext("", "", {
        "Steps": params.steps if model else None,
        "Sampler": params.sampler if model else None,
        "Seed": seed,
        "Size": f"{size[0]}x{size[1]}",
        "Model hash": sr.hash if model else None,
        "Model": sr.name if model else None,
        "Upscaler": "SR model" if model else params.upscaler,
        "Upscaler hash": upscaler_hash,
        "Upscale scale": params.scale,
        "Noise level": params.noise_level if model else None,
        "Eta": params.eta if model and params.eta else None,
        **_face_keys(params),
        "Version": f"t2i {version()}",
    })


def upscale(images, params: UpscaleParams | None = None, sr: SRModel | str | Path | None = None,
            callback=None, library=None) -> UpscaleResult:
    """Upscale one PIL image or a list of them. `sr`: a loaded model (load_sr_model) or its path;
    None for the classic upscalers and upscaler files (found by `library`, an UpscalerLibrary;
    default: the default folders). callback(i, total, latents) per model evaluation, as in sampling."""
    params = params or UpscaleParams()
    if isinstance(sr, (str, Path)):
        sr = load_sr_model(sr)
    if library is None and (params.upscaler not in UPSCALERS or params.gfpgan_visibility
                            or params.codeformer_visibility):
        from t2i.pipelines.model_upscalers import UpscalerLibrary

        library = UpscalerLibrary()
    params = resolve_upscale_params(params, sr, library)
    visibility, weight = face_visibility(params, library) if library is not None else (0.0, None)
    result = _upscaled(images, params, sr, callback, library)
    if visibility:  # after the upscale, as the web UI's Extras do by default
        result.images = [library.restore_faces(im, visibility, codeformer_weight=weight) for im in result.images]
    return result


def _upscaled(images, params: UpscaleParams, sr: SRModel | None, callback, library) -> UpscaleResult:
    inputs = _as_images(images)
    if params.upscaler not in UPSCALERS:  # an upscaler file (spandrel), tiled
        out = [library.upscale(im, params.upscaler, params.scale) for im in inputs]
        file_hash = library.model(params.upscaler).hash
        return UpscaleResult(out, [], [upscale_infotext(params, im.size, None, None, file_hash) for im in out], params)
    if params.upscaler != "model":
        out = [im.resize((im.width * params.scale, im.height * params.scale), _RESAMPLE[params.upscaler])
               for im in inputs]
        return UpscaleResult(out, [], [upscale_infotext(params, im.size, None, None) for im in out], params)
    import torch

    from t2i.models.sr import upscale_tensor
    from t2i.pipelines.imageops import images_to_tensor, tensor_to_images

    out, seeds = [], []
    for i, image in enumerate(inputs):  # one at a time: inputs may differ in size
        seed = (params.seed + i) % (MAX_SEED + 1)
        low = images_to_tensor([image]).to(sr.model.device)
        with torch.no_grad():
            high = upscale_tensor(sr.model, low, [seed], steps=params.steps, sampler=params.sampler,
                                  noise_level=params.noise_level, eta=params.eta, callback=callback)
        out += tensor_to_images(high)
        seeds.append(seed)
    infotexts = [upscale_infotext(params, im.size, s, sr) for im, s in zip(out, seeds)]
    return UpscaleResult(out, seeds, infotexts, params)
