"""Where generated images go: web-UI style file names and image grids.

Names look like `00042-1234-a_red_circle.png` (counter, seed, prompt), so a folder sorts in
generation order and a file name alone tells which seed made it.
"""
from __future__ import annotations

import math
import os
import re
import unicodedata
from pathlib import Path

from PIL import Image

FALLBACK_NAME = "image"
# Linux and macOS allow 255 bytes a name; keep the prompt part well below after the
# counter, seed and extension are added.
MAX_PART_BYTES = 200
_RESERVED_CHARS = set('<>:"/\\|?*')
_WINDOWS_RESERVED = (
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"COM{c}" for c in "123456789¹²³"}
    | {f"LPT{c}" for c in "123456789¹²³"}
)
# `00042-...`, and the same after a prefix (`grid-`, `xyz_grid-`, `prompt_matrix-`, `loopback-`,
# any other word): those files share the counter, so no name is ever used twice.
_COUNTER_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_]*-)?(\d{5,})-")
_EXT_RE = re.compile(r"[A-Za-z0-9]{1,10}")


def _keep(char: str) -> bool:
    """Drop what some file system or tool trips over: controls, format characters (zero-width
    joiners, bidi overrides), emoji and other pictographs, their variation selectors."""
    if char in _RESERVED_CHARS:
        return False
    category = unicodedata.category(char)
    if category[0] == "C" or category in ("So", "Sk"):
        return False
    return not ("\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef")


def _truncate_utf8(text: str, max_bytes: int) -> str:
    while len(text.encode("utf-8")) > max_bytes:
        text = text[:-1]
    return text


def safe_filename_part(prompt: str, max_chars: int = 60) -> str:
    """A fragment of `prompt` usable in a file name on Windows, macOS and Linux; never empty.

    Reserved characters and separators become word breaks, whitespace runs become one `_`,
    leading/trailing dots, dashes, spaces and `_` go (hidden files, `..`, Windows' trailing
    dot rule), and Windows device names (CON, LPT1, ...) get a `_` prefix.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    text = unicodedata.normalize("NFC", prompt)
    text = "".join(c if _keep(c) else " " for c in text)
    text = "_".join(text.split())
    strip_chars = "._- "
    text = text.strip(strip_chars)
    text = _truncate_utf8(text[:max_chars], MAX_PART_BYTES).rstrip(strip_chars)
    if not text:
        return FALLBACK_NAME
    if text.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        text = ("_" + text[: max_chars - 1]).rstrip(strip_chars)
    return text


def _highest_counter(folder: Path) -> int:
    """Highest `NNNNN-` counter among the folder's names (also after a `word-` prefix), -1 when
    there is none."""
    highest = -1
    for name in os.listdir(folder):
        match = _COUNTER_RE.match(name)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest


def next_image_path(outdir: str | os.PathLike[str], seed: int, prompt: str, ext: str = "png") -> Path:
    """The next free web-UI style path `NNNNN-<seed>-<prompt part>.<ext>` in `outdir`.

    The counter continues after the highest one already there (gaps are kept, deleted images
    never get their numbers reused). Creates `outdir`. Two processes writing to the same
    folder at once may get the same name: give each its own folder, or number the images
    yourself (`first_free_counter` once, then `image_path`), as `t2i generate` does when
    `accelerate launch` starts several processes.
    """
    _extension(ext)  # a bad extension fails before the folder is made
    return image_path(outdir, first_free_counter(outdir), seed, prompt, ext)


def free_named_path(outdir: str | os.PathLike[str], name: str, ext: str = "png") -> Path:
    """`outdir/<name made safe>.<ext>`, or `<name>-1`, `-2`... when that exists: a client's own file
    name (the extras' batch; an image suffix it has is dropped: `a.png` -> `a.png`, not `a.png.png`),
    never over an existing file. Creates `outdir`."""
    folder = Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"):
        name = name[: -len(Path(name).suffix)]
    stem, suffix = safe_filename_part(name, 120), _extension(ext)
    path, n = folder / f"{stem}.{suffix}", 1
    while path.exists():
        path, n = folder / f"{stem}-{n}.{suffix}", n + 1
    return path


def first_free_counter(outdir: str | os.PathLike[str]) -> int:
    """The counter the next image in `outdir` gets (one above the highest there). Creates `outdir`."""
    folder = Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    return _highest_counter(folder) + 1


def image_path(outdir: str | os.PathLike[str], counter: int, seed: int, prompt: str, ext: str = "png") -> Path:
    """The web-UI style path `NNNNN-<seed>-<prompt part>.<ext>` with a given counter."""
    return Path(outdir) / f"{int(counter):05d}-{int(seed)}-{safe_filename_part(prompt)}.{_extension(ext)}"


def _extension(ext: str) -> str:
    ext = ext.lstrip(".")
    if not _EXT_RE.fullmatch(ext):
        raise ValueError(f"extension must be 1-10 letters or digits, such as 'png', got {ext!r}")
    return ext.lower()


def _grid_mode(images: list[Image.Image]) -> str:
    modes = {im.mode for im in images}
    if len(modes) == 1 and images[0].mode in ("RGB", "RGBA", "L"):
        return images[0].mode
    has_alpha = any(im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info for im in images)
    return "RGBA" if has_alpha else "RGB"


def make_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile same-sized images row by row into a near-square grid; empty cells are black.

    `cols` defaults to ceil(sqrt(n)), so 4 images make 2x2 and 5 make 3x2.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    n = len(images)
    cols = math.ceil(math.sqrt(n)) if cols is None else cols
    if cols < 1:
        raise ValueError(f"cols must be at least 1, got {cols}")
    rows = math.ceil(n / cols)
    width, height = images[0].size
    for i, im in enumerate(images):
        if im.size != (width, height):
            raise ValueError(
                f"image {i} is {im.size[0]}x{im.size[1]} but image 0 is {width}x{height}: "
                "resize the images to one size before making a grid"
            )
    mode = _grid_mode(images)
    grid = Image.new(mode, (cols * width, rows * height))  # zero-filled: black
    for i, im in enumerate(images):
        row, col = divmod(i, cols)
        grid.paste(im if im.mode == mode else im.convert(mode), (col * width, row * height))
    return grid
