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
from t2i.pipelines.generation_params import OutpaintParams, Txt2ImgParams
from t2i.pipelines.params import ParamError, field_specs

# Keys that say what made the image without changing it (or that t2i records for information).
DESCRIPTIVE_KEYS = frozenset({"Model", "Model hash", "Version", "VAE hash", "Lora hashes", "TI hashes", "Hashes",
                              "Batch size", "Batch pos", "NSFW", "Upscaler hash"})


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


def _reader(kind: type, f) -> Callable[[str], dict]:
    """value -> {field: value} for one schema field (pairs and worded bools handled by the caller)."""
    words = f.metadata.get("infotext_values")
    if words:
        return lambda value: {f.name: value.strip() == words[1]}
    convert = {int: _int, float: float, bool: _bool}.get(kind, str)
    return lambda value: {f.name: convert(value)}


def schema_keys(*classes) -> dict[str, Callable[[str], dict]]:
    """infotext key -> value -> {field: value}, from the fields' `infotext=` metadata: the web UI's
    keys and t2i's (the same names). A `WxH` pair (Size) fills both halves' fields; a key with
    `infotext_implies` also sets those fields (any hires key switches the hires fix on)."""
    parts: dict[str, list] = {}
    for cls in classes:
        for f, kind in field_specs(cls):
            key = f.metadata.get("infotext")
            if key and not any(existing.name == f.name for existing, _ in parts.get(key, [])):
                parts.setdefault(key, []).append((f, kind))
    readers: dict[str, Callable[[str], dict]] = {}
    for key, fields in parts.items():
        implied = {k: v for f, _ in fields for k, v in f.metadata.get("infotext_implies", {}).items()}
        if fields[0][0].metadata.get("infotext_part") is not None:
            ordered = sorted(fields, key=lambda item: item[0].metadata["infotext_part"])
            readers[key] = _pair_of(ordered[0][0].name, ordered[1][0].name, **implied)
        else:
            read = _reader(fields[0][1], fields[0][0])
            readers[key] = (lambda read, implied: lambda value: {**read(value), **implied})(read, implied)
    return readers


# infotext key -> value -> {field: value}, for every pipeline's params; plus old spellings.
KEY_FIELDS: dict[str, Callable[[str], dict]] = {
    **schema_keys(Txt2ImgParams, OutpaintParams),
    "Eta": _one("eta", float),  # t2i before 0.2 wrote DDIM's eta as "Eta"
    # the web UI writes the restorer's name (CodeFormer, GFPGAN); t2i restores with --face-restorer
    "Face restoration": lambda value: {"restore_faces": True},
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
