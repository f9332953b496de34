"""From an image's infotext back to the parameters that made it: "send to txt2img" / PNG-info
reuse, as the web UI does.

    settings = read_settings(read_infotext("00001-1234.png"))      # Txt2ImgParams by default
    result = txt2img(loaded, settings.params)                        # the same image again
    params = params_from_infotext(text, steps=30)                    # or just the params, overridden

Every key t2i writes maps back to the field it came from (and the web UI's keys that mean the
same); a key that changes images elsewhere but that t2i cannot apply is listed in
`settings.ignored`, so a caller can say so. Keys that only describe (Model, Version, hashes)
are kept aside: `model_hash` lets a caller warn when another model is loaded.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable

from t2i.metadata import parse_infotext, read_infotext
from t2i.pipelines.params import ParamError

# Keys that say what made the image without changing it (or that t2i records for information).
DESCRIPTIVE_KEYS = frozenset({"Model", "Model hash", "Version", "VAE hash", "Lora hashes", "TI hashes", "Hashes",
                              "Batch size", "Batch pos"})


def _int(value: str) -> int:
    return int(value.strip())


def _bool(value: str) -> bool:
    if value.strip().lower() in ("true", "1", "yes"):
        return True
    if value.strip().lower() in ("false", "0", "no"):
        return False
    raise ValueError(value)


def _pair(value: str) -> tuple[int, int]:
    width, height = value.lower().split("x")
    return int(width), int(height)


def _one(name: str, convert: Callable) -> Callable[[str], dict]:
    return lambda value: {name: convert(value)}


def _pair_of(first: str, second: str, **also) -> Callable[[str], dict]:
    def read(value: str) -> dict:
        a, b = _pair(value)
        return {first: a, second: b, **also}
    return read


# infotext key -> value -> {field: value}. The web UI's keys and t2i's (they are the same names).
KEY_FIELDS: dict[str, Callable[[str], dict]] = {
    "Prompt": _one("prompt", str),
    "Negative prompt": _one("negative_prompt", str),
    "Steps": _one("steps", _int),
    "Sampler": _one("sampler", str),
    "Schedule type": _one("scheduler", str),
    "CFG scale": _one("cfg_scale", float),
    "Seed": _one("seed", _int),
    "Size": _pair_of("width", "height"),
    "Variation seed": _one("subseed", _int),
    "Variation seed strength": _one("subseed_strength", float),
    "Seed resize from": _pair_of("seed_resize_from_w", "seed_resize_from_h"),
    "Denoising strength": _one("denoising_strength", float),
    "Clip skip": _one("clip_skip", _int),
    "Tiling": _one("tiling", _bool),
    "Eta DDIM": _one("eta", float),
    "Eta": _one("eta", float),  # t2i before 0.2 wrote DDIM's eta as "Eta"
    "Sigma churn": _one("s_churn", float),
    "Sigma tmin": _one("s_tmin", float),
    "Sigma tmax": _one("s_tmax", float),
    "Sigma noise": _one("s_noise", float),
    "DeepCache interval": _one("deepcache_interval", _int),
    # hires fix: any of its keys means it was on
    "Hires upscale": lambda v: {"hr_scale": float(v), "enable_hr": True},
    "Hires resize": _pair_of("hr_resize_x", "hr_resize_y", enable_hr=True),
    "Hires upscaler": lambda v: {"hr_upscaler": v, "enable_hr": True},
    "Hires steps": lambda v: {"hr_second_pass_steps": _int(v), "enable_hr": True},
    # img2img, inpainting, outpainting
    "Resize mode": _one("resize_mode", str),
    "Mask blur": _one("mask_blur", _int),
    "Mask mode": lambda v: {"inpainting_mask_invert": v == "Inpaint not masked"},
    "Masked content": _one("inpainting_fill", str),
    "Inpaint area": lambda v: {"inpaint_full_res": v == "Only masked"},
    "Masked area padding": _one("inpaint_full_res_padding", _int),
    "Outpaint pixels": _one("pixels", _int),
    "Outpaint directions": _one("directions", str),
}
# "Eta" is read only when "Eta DDIM" is absent (the web UI's "Eta" is the ancestral samplers').
_LOWER_PRIORITY = {"Eta": "Eta DDIM"}


@dataclass
class InfotextSettings:
    params: object  # an instance of the params class asked for: class defaults + the infotext
    model_hash: str | None = None  # the "Model hash" the image was made with
    model_name: str | None = None
    ignored: dict[str, str] = field(default_factory=dict)  # keys t2i cannot apply (they change images elsewhere)


def read_settings(text: str, cls=None, **overrides) -> InfotextSettings:
    """The parameters of infotext `text` as `cls` (default Txt2ImgParams), `overrides` applied
    last (None values are skipped, so unset CLI flags can be passed as they are).

    Raises ParamError for an infotext without parameters or with a value of the wrong kind."""
    if cls is None:
        from t2i.pipelines.txt2img import Txt2ImgParams

        cls = Txt2ImgParams
    info = parse_infotext(text)
    if len(info) <= 2:  # only Prompt and Negative prompt: no parameter line
        raise ParamError("the infotext has no parameter line (Steps: ..., Sampler: ..., Seed: ...); "
                         "it is not a generation's infotext")
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    ignored: dict[str, str] = {}
    for key, value in info.items():
        if key in DESCRIPTIVE_KEYS or _LOWER_PRIORITY.get(key) in info:
            continue
        reader = KEY_FIELDS.get(key)
        if reader is None:
            ignored[key] = value
            continue
        try:
            fields = reader(value)
        except ValueError:
            raise ParamError(f"infotext key {key!r} has the value {value!r}, which t2i cannot read") from None
        if not set(fields) <= names:
            if key not in ("Prompt", "Negative prompt", "Denoising strength"):
                ignored[key] = value  # e.g. inpainting keys read as txt2img parameters
            continue
        values.update(fields)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        params = cls(**values)
    except TypeError as err:
        raise ParamError(f"cannot build {cls.__name__} from the infotext: {err}") from err
    return InfotextSettings(params, info.get("Model hash"), info.get("Model"), ignored)


def params_from_infotext(text: str, cls=None, **overrides):
    """The parameters of infotext `text` as `cls` (default Txt2ImgParams), with `overrides`."""
    return read_settings(text, cls, **overrides).params


def infotext_from_file(path: str | os.PathLike[str]) -> str:
    """The infotext of an image (PNG text chunk, JPEG/WEBP EXIF) or of a UTF-8 text file."""
    from PIL import UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        text = read_infotext(path)
    except UnidentifiedImageError:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is neither an image nor a text file: {err}") from err
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    if text is None:
        raise ValueError(f"{path} holds no generation parameters (no infotext)")
    return text


def model_mismatch(settings: InfotextSettings, loaded) -> str | None:
    """A one-line warning when the image was made with another model than `loaded`, else None."""
    if settings.model_hash is None or settings.model_hash == loaded.hash:
        return None
    made_with = f"{settings.model_name} ({settings.model_hash})" if settings.model_name else settings.model_hash
    return (f"warning: the image was made with model {made_with}, the loaded model is {loaded.name} "
            f"({loaded.hash}): the result will differ")
