"""Upscalers and face restorers from the user's weight files (spandrel; t2i.checkpoints.image_models),
run tile by tile with overlap, by name: `--upscaler NAME` is a file's stem in the upscaler folders.

    library = UpscalerLibrary(dirs=("models/ESRGAN",))
    big = library.upscale(image, "4x-UltraSharp", scale=2)     # the model (4x), then Lanczos down to 2x
    fixed = library.restore_faces(image)                          # the --face-restorer model, whole image

Tiling: a large image is cut into `tile`-pixel tiles overlapping by `overlap` pixels; each tile's
output is blended into the result with weights that ramp linearly across the overlaps, so there
are no seams (tests check tiled against untiled). Models that tile internally (spandrel marks
them) are run untiled.

Face restoration: no face detector weights exist offline, so the restorer runs on the whole image
(resized to its 512 px input and back) and its result is blended in with `visibility`; the
infotext says "Face restoration" with the restorer's name.

A diffusion model's library lives on its LoadedModel (`loaded.upscalers`; the Session sets it from
LoadSettings), so the hires fix and the SD upscale script find the same models.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.checkpoints.image_models import ImageModel, find_image_models, load_image_model
from t2i.errors import ModelLoadError, ParamError

# The web UI's model folders (relative to the working directory), used when none are given.
DEFAULT_UPSCALER_DIRS = ("models/ESRGAN", "models/RealESRGAN", "models/SwinIR", "models/Swin2SR", "models/HAT",
                         "models/DAT")
DEFAULT_FACE_DIRS = ("models/GFPGAN", "models/Codeformer", "models/CodeFormer", "models/RestoreFormer")
FACE_SIZE = 512  # the input size of GFPGAN, CodeFormer and RestoreFormer


@dataclass
class UpscalerLibrary:
    """The upscaler folders and face restorer of a session, and the models loaded from them."""

    dirs: tuple[str, ...] = ()  # () = DEFAULT_UPSCALER_DIRS
    face_restorer: str | None = None  # a weights file, or a name in the face/upscaler folders
    tile: int = 192  # tile side in input pixels; 0 = the whole image at once
    overlap: int = 16
    device: str = "cpu"
    _models: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def folders(self) -> tuple[str, ...]:
        return tuple(self.dirs) or DEFAULT_UPSCALER_DIRS

    def key(self) -> tuple:
        return (tuple(self.dirs), self.face_restorer, self.tile, self.overlap, self.device)

    def names(self) -> dict[str, Path]:
        """Upscaler name (file stem) -> file, from the folders as they are now."""
        return find_image_models(self.folders)

    def model(self, name: str) -> ImageModel:
        """The model called `name`; ParamError listing what exists when there is none."""
        files = self.names()
        if name not in files:
            raise ParamError(unknown_upscaler_message(name, self.folders, files))
        return self._load(files[name])

    def _load(self, path: Path) -> ImageModel:
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key not in self._models:
                self._models[key] = load_image_model(path, self.device)
            return self._models[key]

    # ------------------------------------------------------------------------- running

    def upscale(self, image: Image.Image, name: str, scale: float) -> Image.Image:
        """`image` upscaled by `scale` with the model `name`: run as often as needed to reach the
        scale (a 2x model twice for 4x), then resized down to the exact size with Lanczos."""
        model = self.model(name)
        if model.purpose != "SR" and model.scale == 1:
            raise ParamError(f"{name} is a {model.arch} {model.purpose} model (1x), not an upscaler")
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        current = image.convert("RGB")
        while current.width < target[0] or current.height < target[1]:
            current = run_model(model, current, self.tile, self.overlap)
            if model.scale == 1:
                break
        return current if current.size == target else current.resize(target, Image.Resampling.LANCZOS)

    def face_model(self) -> ImageModel:
        if not self.face_restorer:
            raise ParamError("restore faces needs a face restorer: --face-restorer FILE (GFPGAN, CodeFormer or "
                             "RestoreFormer weights) or a name in models/GFPGAN, models/Codeformer")
        path = Path(self.face_restorer)
        if not path.is_file():
            files = find_image_models(DEFAULT_FACE_DIRS + self.folders)
            if self.face_restorer not in files:
                raise ParamError(f"face restorer {self.face_restorer!r} is neither a file nor a name in "
                                 f"{', '.join(DEFAULT_FACE_DIRS + self.folders)}; found: "
                                 f"{', '.join(files) or 'none'}")
            path = files[self.face_restorer]
        model = self._load(path)
        if model.purpose != "FaceSR":
            raise ModelLoadError(f"{path} is a {model.arch} {model.purpose} model, not a face restorer (GFPGAN, "
                                 f"CodeFormer, RestoreFormer)")
        return model

    def restore_faces(self, image: Image.Image, visibility: float = 1.0,
                      codeformer_weight: float | None = None) -> Image.Image:
        """The whole image through the face restorer (no face detector offline), blended in.
        `codeformer_weight`: CodeFormer's fidelity weight (0 = strongest; None = the model's default)."""
        model = self.face_model()
        rgb = image.convert("RGB")
        face = rgb.resize((FACE_SIZE, FACE_SIZE), Image.Resampling.LANCZOS)
        if codeformer_weight is not None and model.arch == "CodeFormer":
            restored = _run_codeformer(model, face, codeformer_weight)
        else:
            restored = run_model(model, face, tile=0)
        restored = restored.resize(rgb.size, Image.Resampling.LANCZOS)
        return restored if visibility >= 1 else Image.blend(rgb, restored, visibility)


def unknown_upscaler_message(name: str, folders, files: dict) -> str:
    found = ", ".join(files) if files else "none"
    return (f"no upscaler {name!r}: the upscaler folders ({', '.join(map(str, folders))}) hold {found}; "
            f"put the model file there or give its folder with --upscaler-dir")


# ----------------------------------------------------------------------------- tiled inference


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] (what spandrel's models take)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _to_image(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def run_model(model: ImageModel, image: Image.Image, tile: int = 192, overlap: int = 16) -> Image.Image:
    """One pass of `model` over `image`, in tiles when the image is larger than `tile`."""
    descriptor = model.descriptor
    param = next(descriptor.model.parameters())
    x = _to_tensor(image).to(param.device, param.dtype)
    use_tiles = tile > 0 and model.tiling_supported and max(x.shape[-2:]) > tile
    out = run_tiled(descriptor, x, model.scale, tile, overlap) if use_tiles else descriptor(x)
    return _to_image(out)


@torch.no_grad()
def _run_codeformer(model: ImageModel, image: Image.Image, weight: float) -> Image.Image:
    """CodeFormer with its fidelity weight: spandrel's descriptor call always uses the default, so the
    network is called directly (its forward takes `weight` and returns (image, logits, features))."""
    net = model.descriptor.model
    param = next(net.parameters())
    return _to_image(net(_to_tensor(image).to(param.device, param.dtype), weight=weight)[0])


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile starts covering [0, size): step tile - overlap, the last tile flush with the end."""
    if size <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(length: int, lead: int, trail: int) -> torch.Tensor:
    """Blend weights along one tile axis: rising over `lead`, falling over `trail`, 1 between."""
    w = torch.ones(length)
    if lead > 0:
        w[:lead] = torch.arange(1, lead + 1, dtype=torch.float32) / (lead + 1)
    if trail > 0:
        w[length - trail:] = torch.minimum(w[length - trail:],
                                           torch.arange(trail, 0, -1, dtype=torch.float32) / (trail + 1))
    return w


@torch.no_grad()
def run_tiled(fn, x: torch.Tensor, scale: int, tile: int | tuple[int, int], overlap: int) -> torch.Tensor:
    """fn over (1, C, H, W) tile by tile (square tiles, or (height, width)); the outputs (scale x)
    blended across the overlaps."""
    _, channels, height, width = x.shape
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    out = torch.zeros(1, channels, height * scale, width * scale, dtype=torch.float32)
    weight = torch.zeros(1, 1, height * scale, width * scale, dtype=torch.float32)
    ys, xs = _starts(height, tile_h, overlap), _starts(width, tile_w, overlap)
    for iy, top in enumerate(ys):
        th = min(tile_h, height)
        for ix, left in enumerate(xs):
            tw = min(tile_w, width)
            piece = fn(x[..., top:top + th, left:left + tw]).float().cpu()  # (1, C, th*s, tw*s)
            # the overlap with the previous/next tile, in output pixels (0 at the image's edges)
            lead_y = (ys[iy - 1] + th - top) * scale if iy > 0 else 0
            trail_y = (top + th - ys[iy + 1]) * scale if iy + 1 < len(ys) else 0
            lead_x = (xs[ix - 1] + tw - left) * scale if ix > 0 else 0
            trail_x = (left + tw - xs[ix + 1]) * scale if ix + 1 < len(xs) else 0
            w = _ramp(th * scale, lead_y, trail_y)[:, None] * _ramp(tw * scale, lead_x, trail_x)[None, :]
            oy, ox = top * scale, left * scale
            out[..., oy:oy + th * scale, ox:ox + tw * scale] += piece * w
            weight[..., oy:oy + th * scale, ox:ox + tw * scale] += w
    return (out / weight).to(x.dtype)


def library_of(loaded) -> UpscalerLibrary:
    """The upscaler library of a loaded diffusion model (the default folders when none was set)."""
    library = getattr(loaded, "upscalers", None)
    if library is None:
        device = str(getattr(getattr(loaded, "runtime", None), "device", "cpu"))
        library = UpscalerLibrary(device=device)
        loaded.upscalers = library
    return library
