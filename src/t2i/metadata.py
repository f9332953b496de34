"""Infotext: the generation parameters the most used Stable Diffusion web UI stores in images.

Image sites and tools read this text to show (and re-run) how an image was made, so the format
is the web UI's, exactly (see ../shared/INTEROP.md, "Infotext"):

    {prompt}
    Negative prompt: {negative}        <- only when the negative prompt is non-empty
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Version: t2i 0.1.0

PNG files carry it in a text chunk keyed `parameters`; JPEG and WEBP files in the EXIF
UserComment, encoded the way piexif does it (an 8-byte charset prefix, then the text).
Files are written through t2i.atomic (never half-written; a full disk is an OutputError).
"""
from __future__ import annotations

import json
import numbers
import os
import re
import struct
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from t2i.atomic import atomic_file

# The order the web UI writes its own keys in; extras follow in the caller's order.
CANONICAL_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Clip skip",
)
LAST_KEY = "Version"
NEGATIVE_PREFIX = "Negative prompt:"
PNG_TEXT_KEY = "parameters"

# The web UI's parser for the parameter line: `Key: value` or `Key: "json string"`.
PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_KEY_RE = re.compile(r"\w[\w \-/]*\w")
MIN_PARAMS_ON_LAST_LINE = 3

# EXIF UserComment starts with an 8-byte charset code (EXIF 2.3, section 4.6.5).
_UC_UNICODE = b"UNICODE\x00"
_UC_ASCII = b"ASCII\x00\x00\x00"
_UC_JIS = b"JIS\x00\x00\x00\x00\x00"
_UC_UNDEFINED = b"\x00" * 8
_JPEG_MAX_EXIF = 65533  # one APP1 marker segment
_TIFF_LONG, _TIFF_UNDEFINED = 4, 7  # TIFF field types
_EXIF_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# The choices of an image-format option, as file extensions (the web UI's names).
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg", "webp")


# ---------------------------------------------------------------------------- text


def format_value(value: object) -> str:
    """One value as the web UI prints it: compact numbers (7.0 -> 7) and `WxH` pairs."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _format_float(float(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Real) for v in value
    ):
        return f"{format_value(value[0])}x{format_value(value[1])}"  # Size, Seed resize from
    return str(value)


def _format_float(x: float) -> str:
    """7 significant digits: hides float32/float64 noise (0.699999988 -> 0.7)."""
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    rounded = float(f"{x:.7g}")
    if rounded.is_integer() and abs(rounded) < 1e16:
        return str(int(rounded))
    return repr(rounded)


def quote(value: str) -> str:
    """JSON-quote values the parameter-line regex could not read back verbatim."""
    needs_quotes = (
        any(c in value for c in ",:\n\r")
        or value.startswith('"')
        or value != value.strip()
    )
    return json.dumps(value, ensure_ascii=False) if needs_quotes else value


def unquote(value: str) -> str:
    """Inverse of `quote`; a malformed quoted value is kept as written."""
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, str) else value


def _ordered_keys(params: Mapping[str, object]) -> list[str]:
    canonical = [k for k in CANONICAL_KEYS if k in params]
    extras = [k for k in params if k not in CANONICAL_KEYS and k != LAST_KEY]
    last = [LAST_KEY] if LAST_KEY in params else []
    return canonical + extras + last


def _clip_skip_shown(value: object) -> bool:
    """Clip skip 1 is the default, which the web UI leaves out."""
    try:
        return float(format_value(value)) > 1
    except ValueError:
        raise ValueError(f"Clip skip must be a number, got {value!r}") from None


def build_params_line(params: Mapping[str, object]) -> str:
    """The last infotext line: `Key: value` pairs in the web UI's order, `Version` last."""
    pairs: list[str] = []
    for key in _ordered_keys(params):
        if not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"infotext key {key!r} cannot be parsed back: use letters, digits, spaces, "
                "'-', '/' or '_', at least 2 characters, no leading/trailing space"
            )
        value = params[key]
        if value is None:
            continue
        text = format_value(value)
        if text == "" or (key == "Clip skip" and not _clip_skip_shown(value)):
            continue
        pairs.append(f"{key}: {quote(text)}")
    return ", ".join(pairs)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The full infotext: prompt, optional `Negative prompt:` line, parameter line.

    The format cannot tell a prompt line that starts with "Negative prompt:" from the real
    marker, nor (with no parameters) a last prompt line that looks like parameters; the
    web UI has the same limits.
    """
    lines: list[str] = []
    if prompt:
        lines.append(prompt)
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    params_line = build_params_line(params)
    if params_line:
        lines.append(params_line)
    return "\n".join(lines)


def parse_params_line(line: str) -> dict[str, str]:
    """`Key: value` pairs of one line; quoted values JSON-decoded, later duplicates win."""
    return {m.group(1): unquote(m.group(2).strip()) for m in PARAM_RE.finditer(line)}


def parse_infotext(text: str) -> dict[str, str]:
    """Inverse of `build_infotext`: {"Prompt", "Negative prompt", then every parameter}.

    The last line is read as parameters only when it holds at least 3 pairs, as the web UI
    does; otherwise it belongs to the prompt (or negative prompt).
    """
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    params: dict[str, str] = {}
    if len(PARAM_RE.findall(lines[-1])) >= MIN_PARAMS_ON_LAST_LINE:
        params = parse_params_line(lines.pop())

    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith(NEGATIVE_PREFIX):
            rest = line[len(NEGATIVE_PREFIX):]
            negative_lines = [rest[1:] if rest.startswith(" ") else rest]
        elif negative_lines is None:
            prompt_lines.append(line)
        else:
            negative_lines.append(line)

    result = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines or [])}
    for key, value in params.items():
        result.setdefault(key, value)  # a stray "Prompt:" pair never hides the real prompt
    return result


def add_infotext_params(infotext: str, extra: Mapping[str, object]) -> str:
    """`infotext` with `extra` keys added after its own (before Version), as the web UI adds a
    script's keys to the first image's parameters."""
    parsed = parse_infotext(infotext)
    prompt, negative = parsed.pop("Prompt"), parsed.pop("Negative prompt")
    return build_infotext(prompt, negative, {**parsed, **extra})


# ---------------------------------------------------------------------------- EXIF


def encode_user_comment(text: str) -> bytes:
    """EXIF UserComment bytes as piexif writes them for the web UI: `UNICODE\\0` + UTF-16BE."""
    return _UC_UNICODE + text.encode("utf-16-be")


def decode_user_comment(data: bytes | str) -> str:
    """Read any UserComment charset; UTF-16 without a BOM is taken as big-endian unless its
    zero bytes say otherwise (some writers follow the file's little-endian byte order)."""
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == _UC_UNICODE:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16")
        zeros_even = body[0::2].count(0)
        zeros_odd = body[1::2].count(0)
        encoding = "utf-16-le" if zeros_odd > zeros_even else "utf-16-be"
        return body.decode(encoding, errors="replace")
    if prefix == _UC_ASCII:
        return body.decode("utf-8", errors="replace")
    if prefix == _UC_JIS:
        return body.decode("shift_jis", errors="replace")
    if prefix == _UC_UNDEFINED:
        body = body.rstrip(b"\x00")
    else:
        body = data  # no charset code at all: a non-conforming writer
    return body.decode("utf-8", errors="replace")


def _exif_with_comment(infotext: str) -> bytes:
    """An EXIF block holding only the UserComment, laid out as the web UI's `piexif.dump` lays it
    out: a big-endian TIFF header (matching the UTF-16BE text), IFD0 with one entry pointing to
    the Exif IFD, whose one entry is the UserComment, typed UNDEFINED as EXIF requires. (Pillow's
    Image.Exif types raw bytes as BYTE, which piexif, and so the web UI, cannot decode.)"""
    comment = encode_user_comment(infotext)
    entry = struct.Struct(">HHII")  # tag, type, count, value or offset
    exif_ifd = 8 + 2 + entry.size + 4  # after the header and IFD0
    data = exif_ifd + 2 + entry.size + 4  # after the Exif IFD; even, as TIFF wants offsets
    tiff = (b"MM\x00\x2a" + struct.pack(">I", 8)
            + struct.pack(">H", 1) + entry.pack(ExifTags.IFD.Exif, _TIFF_LONG, 1, exif_ifd) + struct.pack(">I", 0)
            + struct.pack(">H", 1) + entry.pack(ExifTags.Base.UserComment, _TIFF_UNDEFINED, len(comment), data)
            + struct.pack(">I", 0) + comment)
    return b"Exif\x00\x00" + tiff


# ---------------------------------------------------------------------------- files


def _image_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".png":
        return "PNG"
    if suffix in _EXIF_FORMATS:
        return _EXIF_FORMATS[suffix]
    raise ValueError(f"cannot store infotext in {path.name!r}: use a .png, .jpg, .jpeg or .webp path")


def png_info(infotext: str | None) -> PngInfo:
    """The PNG text chunk `parameters` as the web UI writes it (iTXt when not latin-1)."""
    info = PngInfo()
    if infotext:
        try:
            infotext.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(PNG_TEXT_KEY, infotext)  # tEXt holds latin-1 only
        else:
            info.add_text(PNG_TEXT_KEY, infotext)
    return info


def _save_kwargs(
    image: Image.Image, fmt: str, infotext: str, quality: int
) -> tuple[Image.Image, dict[str, object]]:
    """The image as the format can hold it, and Pillow's save options carrying the text."""
    if fmt == "PNG":
        return image, {"pnginfo": png_info(infotext)}

    kwargs: dict[str, object] = {"quality": quality}
    if infotext:
        exif = _exif_with_comment(infotext)
        if fmt == "JPEG" and len(exif) > _JPEG_MAX_EXIF:
            raise ValueError(
                f"infotext of {len(infotext)} characters does not fit in a JPEG EXIF segment "
                f"(64 KiB, 2 bytes a character): save as .png instead"
            )
        kwargs["exif"] = exif
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")  # JPEG has no alpha; the web UI drops it too
    return image, kwargs


def image_format(name: str) -> str:
    """The extension of an image-format choice: "png", "jpg" (also "jpeg") or "webp"."""
    ext = str(name).lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    if ext not in IMAGE_FORMATS:
        raise ValueError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {name!r}")
    return ext


def write_image(
    image: Image.Image, path: str | os.PathLike[str], infotext: str, *, quality: int = 95
) -> Path:
    """Save `image` with its infotext, atomically: a reader never sees a half-written file.

    The suffix picks the container: .png (text chunk `parameters`), .jpg/.jpeg/.webp
    (EXIF UserComment, UTF-16 as the web UI writes it; `quality` applies to these). Returns
    the path written; an OSError (disk full, no permission) is a t2i.errors.OutputError.
    """
    path = Path(path)
    fmt = _image_format(path)
    image, kwargs = _save_kwargs(image, fmt, infotext, quality)
    with atomic_file(path) as f:
        image.save(f, format=fmt, **kwargs)
    return path


write_png = write_image  # the older name: it has always written JPEG and WEBP too


def _infotext_of(image: Image.Image) -> str | None:
    text_chunks = getattr(image, "text", None)  # PNG: all text chunks, also those after IDAT
    for source in (text_chunks, image.info):
        if isinstance(source, Mapping) and PNG_TEXT_KEY in source:
            return str(source[PNG_TEXT_KEY])
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if comment:
        return decode_user_comment(comment)
    return None


def read_infotext(path_or_image: str | os.PathLike[str] | Image.Image) -> str | None:
    """The infotext of a PNG (`parameters` text) or JPEG/WEBP (EXIF UserComment); None if absent."""
    if isinstance(path_or_image, Image.Image):
        return _infotext_of(path_or_image)
    with Image.open(path_or_image) as image:
        return _infotext_of(image)


# Characters that move the cursor or reorder text on a terminal without being controls (Cc):
# bidi embeddings/overrides/isolates (a "Trojan source" prompt) and Unicode line separators.
_TERMINAL_UNSAFE = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def printable_infotext(text: str) -> str:
    """`text` safe to print on a terminal: control characters other than newline and tab (ESC
    sequences, carriage returns, C1 controls) and bidi overrides are written as escapes such as
    `\\x1b` or `\\u202e`, so a file's infotext cannot recolour, rewrite or hide terminal output."""
    out = []
    for char in text:
        if char in "\n\t" or not (unicodedata.category(char) == "Cc" or char in _TERMINAL_UNSAFE):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)
