"""A folder of your own pictures and their captions, laid out as fine-tuning tools expect.

    photos/
      cat1.png   cat1.txt            # caption sidecar (.txt or .caption), UTF-8
      cat2.jpg   cat2.caption
      metadata.jsonl                 # or: one {"file_name": "cat3.png", "text": "..."} per line
      10_sks cat/                    # kohya style: images here count 10 times per epoch; the
        a.png                        #   folder's "sks cat" is the caption of uncaptioned images
      extra/b.png                    # other subfolders are searched too (repeats of their parent)

A caption comes from, in this order: metadata.jsonl in the image's folder (key `text`, `caption`
or `prompt`), the sidecar `NAME.txt` / `NAME.caption`, the concept of the nearest `N_concept`
folder, then the `default_caption` (the CLI's `--caption`). An image with none of these (or with
a sidecar that is not UTF-8) is skipped and named by the preflight. Nothing here opens an image:
t2i.data.preflight does (and says what it skips and why).
"""
from __future__ import annotations

import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_SUFFIXES = (".txt", ".caption")
METADATA_FILE = "metadata.jsonl"
METADATA_KEYS = ("text", "caption", "prompt")
_REPEATS_FOLDER = re.compile(r"^(\d+)_(.+)$")  # kohya: "10_sks dog" -> 10 repeats, concept "sks dog"
MAX_REPEATS = 10_000


@dataclass(frozen=True)
class Entry:
    """One training image: where it is, its caption and how often it counts (kohya repeats).
    An image whose caption is missing or unreadable has `caption_problem` instead: the preflight
    skips it with that reason, after reading the image (whose own problems come first)."""

    path: Path
    caption: str | None
    repeats: int = 1
    caption_source: str = ""  # "metadata.jsonl", "sidecar", "folder", "default"
    caption_problem: str | None = None


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class Scan:
    entries: list[Entry]
    skipped: list[Skipped]


def read_caption_file(path: Path) -> str:
    """A caption file's text (UTF-8, a byte-order mark allowed; lines joined by spaces).
    ValueError naming the file and the first bad byte when it is not UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"caption file {path.name} is not UTF-8 (byte 0x{data[err.start]:02x} at offset "
                         f"{err.start}); re-save it as UTF-8") from None
    return " ".join(text.split())


def _special_kind(mode: int) -> str | None:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return None


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read as a regular file without opening it (a FIFO would block), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken link" if path.is_symlink() else "vanished while scanning"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    special = _special_kind(mode)
    if special:
        return f"{special}, not a regular file"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _metadata_captions(folder: Path, skipped: list[Skipped]) -> dict[str, str]:
    """{file name: caption} from folder/metadata.jsonl; bad lines are reported, not fatal."""
    path = folder / METADATA_FILE
    if not path.exists():
        return {}
    problem = file_problem(path)
    if problem:
        skipped.append(Skipped(path, problem))
        return {}
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        skipped.append(Skipped(path, f"cannot be read as UTF-8 ({err}); its captions are not used"))
        return {}
    captions = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            skipped.append(Skipped(path, f"line {number} is not JSON ({err.msg}); that line is left out"))
            continue
        name = row.get("file_name") if isinstance(row, dict) else None
        caption = next((row[k] for k in METADATA_KEYS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
        if not isinstance(name, str) or caption is None:
            skipped.append(Skipped(path, f"line {number} needs \"file_name\" and one of {', '.join(METADATA_KEYS)}"))
            continue
        captions[Path(name).as_posix()] = " ".join(caption.split())
    return captions


def _sidecar(image: Path) -> Path | None:
    for suffix in CAPTION_SUFFIXES:
        candidate = image.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def scan_folder(root: str | Path, default_caption: str | None = None) -> Scan:
    """Every image under `root` with its caption and repeats; what cannot be used goes to
    `skipped` with the reason. ValueError when `root` is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    entries: list[Entry] = []
    skipped: list[Skipped] = []

    def walk(folder: Path, repeats: int, concept: str | None) -> None:
        metadata = _metadata_captions(folder, skipped)
        try:
            children = sorted(folder.iterdir())
        except OSError as err:
            skipped.append(Skipped(folder, f"cannot be listed ({err.strerror or err})"))
            return
        for child in children:
            if child.name.startswith("."):
                continue  # hidden files and t2i's own temporaries
            if child.is_dir() and not child.is_symlink():
                match = _REPEATS_FOLDER.match(child.name)
                if match:
                    n = int(match.group(1))
                    if not 1 <= n <= MAX_REPEATS:
                        skipped.append(Skipped(child, f"repeats {n} out of range 1..{MAX_REPEATS}; folder left out"))
                        continue
                    walk(child, n, match.group(2).strip())
                else:
                    walk(child, repeats, concept)
                continue
            suffix = child.suffix.lower()
            if suffix in CAPTION_SUFFIXES or child.name == METADATA_FILE:
                continue
            if suffix not in IMAGE_SUFFIXES:
                skipped.append(Skipped(child, f"not an image file type ({suffix or 'no suffix'}; t2i reads "
                                              f"{', '.join(IMAGE_SUFFIXES)})"))
                continue
            problem = file_problem(child)
            if problem:
                skipped.append(Skipped(child, problem))
                continue
            entries.append(_caption_entry(child, repeats, concept, metadata, default_caption))

    walk(root, 1, None)
    return Scan(entries, skipped)


def _caption_entry(image: Path, repeats: int, concept: str | None, metadata: dict[str, str],
                   default_caption: str | None) -> Entry:
    if image.name in metadata:
        return Entry(image, metadata[image.name], repeats, METADATA_FILE)
    sidecar = _sidecar(image)
    if sidecar is not None:
        problem = file_problem(sidecar)
        if problem:
            return Entry(image, None, repeats, "sidecar", f"its caption {sidecar.name} is {problem}")
        try:
            return Entry(image, read_caption_file(sidecar), repeats, "sidecar")
        except ValueError as err:
            return Entry(image, None, repeats, "sidecar", str(err))
        except OSError as err:
            return Entry(image, None, repeats, "sidecar", f"its caption {sidecar.name} cannot be read "
                                                          f"({err.strerror or err})")
    if concept:
        return Entry(image, concept, repeats, "folder")
    if default_caption is not None:
        return Entry(image, " ".join(default_caption.split()), repeats, "default")
    return Entry(image, None, repeats, "", f"no caption: add {image.stem}.txt or a {METADATA_FILE} row, "
                                          f"or give --caption")
