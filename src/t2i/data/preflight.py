"""Read every training image once before training starts, and say what is skipped and why.

One bad file never stops a run: a 0-byte or truncated file, something that is not an image, a
decompression bomb (more pixels than `max_pixels`, checked from the header before any decoding),
a FIFO or other special file (never opened: reading one would block), a caption that is not
UTF-8 — each is listed with its reason and left out. What can be read is converted to 8-bit RGB
the way its pixels mean it:

- EXIF orientation applied (a phone photo stored sideways trains upright);
- CMYK through the file's ICC profile when it has one (else Pillow's conversion);
- 16-bit and 32-bit greyscale scaled to 8 bits (Pillow's own conversion clips them to white);
- float images in [0, 1] scaled; other ranges clipped to [0, 255];
- transparency (RGBA, LA, palette with a transparent colour) composited over white, so that
  transparent areas do not turn into whatever colour the invisible pixels happen to hold;
- animations: the first frame.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from t2i.data.captioned import Entry, Scan, Skipped

MAX_PIXELS = 64_000_000  # a 8000 x 8000 photo; larger is almost surely a decompression bomb
MIN_SIDE = 8
ALPHA_BACKGROUND = (255, 255, 255)


@dataclass
class Preflight:
    """The images that will train (each with its entry, as `prepare` made it) and everything left out."""

    images: list[tuple[Entry, object]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # "path: CMYK -> RGB", for the report

    def report(self) -> str:
        """What a user reads before training: counts, then every skipped file with its reason."""
        lines = [f"preflight: {len(self.images)} images will train, {len(self.skipped)} files skipped"]
        lines += [f"  skipped {s}" for s in self.skipped]
        lines += [f"  converted {c}" for c in self.converted]
        return "\n".join(lines)


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB of any Pillow mode, and a note when the mode needed more than a plain copy."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode == "CMYK":
        profile = image.info.get("icc_profile")
        if profile:
            try:
                from PIL import ImageCms

                source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
                return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"), \
                    "CMYK -> RGB (ICC profile)"
            except Exception:  # a broken profile: fall back to the plain conversion
                pass
        return image.convert("RGB"), "CMYK -> RGB"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image).astype(np.float64)
        # 16-bit data in a 16-bit or 32-bit container: 65535 is white (Pillow's convert clips at 255)
        scale = 257.0 if mode != "I" or values.max() > 255 else 1.0
        grey = np.clip(np.round(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB"), f"{mode} (16-bit) -> RGB"
    if mode == "F":
        values = np.asarray(image).astype(np.float64)
        values = values * 255.0 if np.nanmax(values) <= 1.0 else values
        grey = np.clip(np.nan_to_num(np.round(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB"), "F (float) -> RGB"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info) \
        or (mode in ("L", "RGB") and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB"), f"{mode} with transparency -> RGB over white"
    return image.convert("RGB"), (None if mode in ("L", "P", "1") else f"{mode} -> RGB")


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, str | None]:
    """The image at `path` as 8-bit RGB (fully decoded, file closed) and a conversion note.
    ValueError with the reason for anything that cannot train."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size  # from the header: nothing decoded yet
                if width * height > max_pixels:
                    raise ValueError(f"{width}x{height} = {width * height / 1e6:.0f} M pixels is over the "
                                     f"{max_pixels / 1e6:.0f} M limit (a decompression bomb?); resize it")
                if min(width, height) < MIN_SIDE:
                    raise ValueError(f"{width}x{height} is too small (sides under {MIN_SIDE} pixels)")
                image.seek(0)  # animations: the first frame
                image.load()
                image = ImageOps.exif_transpose(image)
                rgb, note = _to_rgb(image)
                return rgb.copy(), note
    except ValueError:
        raise
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ValueError(f"a decompression bomb ({err})") from None
    except (OSError, SyntaxError, EOFError, RuntimeError) as err:  # Pillow's ways of saying "damaged"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"truncated or damaged ({first})") from None


def preflight(scan: Scan, max_pixels: int = MAX_PIXELS,
              prepare: Callable[[Entry, Image.Image], object] | None = None) -> Preflight:
    """Open every scanned image; keep those that read, list the rest (with the scan's own skips).
    `prepare(entry, rgb_image)` turns each image into what is kept (e.g. resized to its training
    size), so that a folder of large photos is never all in memory at full size at once."""
    result = Preflight(skipped=list(scan.skipped))
    for entry in scan.entries:
        try:
            image, note = read_image(entry.path, max_pixels)
        except ValueError as err:
            result.skipped.append(Skipped(entry.path, str(err)))
            continue
        except OSError as err:  # vanished or unreadable between the scan and now
            result.skipped.append(Skipped(entry.path, f"cannot be read ({err.strerror or err})"))
            continue
        if entry.caption_problem:
            result.skipped.append(Skipped(entry.path, entry.caption_problem))
            continue
        if note:
            result.converted.append(f"{entry.path}: {note}")
        result.images.append((entry, prepare(entry, image) if prepare is not None else image))
    return result
