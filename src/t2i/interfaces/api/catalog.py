"""What the server may load: checkpoints, VAEs, LoRAs, embeddings and upscalers found in the
configured folders, by the names clients see. A client names a model by its title; only a title
found here becomes a path (a client never sends a path the server opens).

Titles are paths relative to their folder with forward slashes ("sd15/model.safetensors"); the
bundled model is "t2i-shapes-ldm" (also "default"). Responses show relative paths only.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from t2i.extra_networks import DEFAULT_EMBEDDING_DIRS, DEFAULT_LORA_DIRS
from t2i.interfaces.api.config import ServeConfig
from t2i.interfaces.api.errors import ApiError

BUNDLED_TITLE = "t2i-shapes-ldm"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")  # as t2i.extra_networks reads them (torch-free here)
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
CLASSIC_UPSCALERS = {"None": None, "Lanczos": "lanczos", "Nearest": "nearest", "Bicubic": "bicubic"}
AUTOMATIC_VAE = ("Automatic", "None", "")


@dataclass(frozen=True)
class Item:
    title: str  # what a client sends and sees
    name: str  # the short name (file stem)
    path: str | None  # on the server; None for the bundled model. Never sent to a client.


def _walk(folder: Path, suffixes: tuple[str, ...], folder_marker: str | None) -> list[tuple[str, Path]]:
    """(relative title, path) of the files with `suffixes` under `folder`, and of the folders that
    hold `folder_marker` (a diffusers model: not descended into). Hidden names are skipped."""
    found: list[tuple[str, Path]] = []
    if not folder.is_dir():
        return found
    for here, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(here)
        if folder_marker and folder_marker in files and base != folder:
            found.append((base.relative_to(folder).as_posix(), base))
            dirs[:] = []
            continue
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(suffixes):
                path = base / name
                found.append((path.relative_to(folder).as_posix(), path))
    return found


def _items(folders, suffixes, marker=None) -> list[Item]:
    seen: dict[str, Item] = {}
    for folder in folders:
        for title, path in _walk(Path(folder), suffixes, marker):
            stem = Path(title).name
            stem = stem.rsplit(".", 1)[0] if path.is_file() else stem
            seen.setdefault(title, Item(title, stem, str(path)))
    return list(seen.values())


class Catalog:
    """The folders' contents, scanned at start and on refresh; thread-safe."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self._lock = threading.Lock()
        self.hashes: dict[str, str] = {}  # title -> the web UI's short hash, once a run loaded the model
        self.refresh_checkpoints()
        self.refresh_loras()

    def lora_dirs(self) -> tuple[Path, ...]:
        return self.config.lora_dirs or tuple(Path(d) for d in DEFAULT_LORA_DIRS)

    def embedding_dirs(self) -> tuple[Path, ...]:
        return self.config.embedding_dirs or tuple(Path(d) for d in DEFAULT_EMBEDDING_DIRS)

    def refresh_checkpoints(self) -> None:
        items = [Item(BUNDLED_TITLE, BUNDLED_TITLE, None)]
        if self.config.model:
            start = Path(self.config.model)
            items.append(Item(start.name, start.name.rsplit(".", 1)[0] if start.is_file() else start.name,
                              str(start)))
        items += _items(self.config.ckpt_dirs, CHECKPOINT_SUFFIXES, "model_index.json")
        vaes = _items(self.config.vae_dirs, VAE_SUFFIXES, "config.json")
        sr_models = _items(self.config.sr_model_dirs, (".safetensors",), "model.safetensors")
        with self._lock:
            self._checkpoints = {item.title: item for item in items}
            self._vaes = {item.title: item for item in vaes}
            self._upscalers = {item.name: item for item in sr_models}
            self._image_upscalers = self._find_image_upscalers()

    def _find_image_upscalers(self) -> list[str]:
        """Upscaler weight files (spandrel) by stem, as the pipelines find them in the folders."""
        from t2i.checkpoints.image_models import find_image_models
        from t2i.pipelines.model_upscalers import DEFAULT_UPSCALER_DIRS

        return sorted(find_image_models(self.config.upscaler_dirs or DEFAULT_UPSCALER_DIRS))

    def refresh_loras(self) -> None:
        loras = _items(self.lora_dirs(), LORA_SUFFIXES)
        embeddings = _items(self.embedding_dirs(), EMBEDDING_SUFFIXES)
        with self._lock:
            self._loras = loras
            self._embeddings = embeddings

    # ------------------------------------------------------------------------- lists

    def checkpoints(self) -> list[Item]:
        with self._lock:
            return list(self._checkpoints.values())

    def vaes(self) -> list[Item]:
        with self._lock:
            return list(self._vaes.values())

    def loras(self) -> list[Item]:
        with self._lock:
            return list(self._loras)

    def embeddings(self) -> list[Item]:
        with self._lock:
            return list(self._embeddings)

    def upscalers(self) -> list[Item]:
        """t2i super-resolution models."""
        with self._lock:
            return list(self._upscalers.values())

    def image_upscalers(self) -> list[str]:
        """Upscaler weight files (ESRGAN, ...), by name."""
        with self._lock:
            return list(self._image_upscalers)

    def start_title(self) -> str:
        return Path(self.config.model).name if self.config.model else BUNDLED_TITLE

    # ------------------------------------------------------------------------- lookups

    def checkpoint(self, title: object, field: str = "sd_model_checkpoint") -> Item:
        """The checkpoint a client names: its title, the title with the web UI's " [hash]" suffix,
        its short name, case-insensitively; 422 naming `field` otherwise."""
        if not isinstance(title, str) or not title.strip():
            raise ApiError(422, f"{field}: expected a checkpoint title (GET /sdapi/v1/sd-models)", field=field)
        text = title.strip()
        if text.lower() == "default":
            text = BUNDLED_TITLE
        if text.endswith("]") and " [" in text:
            text = text[: text.rindex(" [")]
        with self._lock:
            items = list(self._checkpoints.values())
        for match in (lambda i: i.title == text, lambda i: i.title.lower() == text.lower(),
                      lambda i: i.name.lower() == text.lower()):
            hits = [i for i in items if match(i)]
            if len(hits) == 1:
                return hits[0]
        raise ApiError(422, f"{field}: no checkpoint {title!r} in the model folders; GET /sdapi/v1/sd-models lists "
                            f"them (POST /sdapi/v1/refresh-checkpoints after adding files)", field=field)

    def vae(self, name: object, field: str = "sd_vae") -> Item | None:
        """None for the model's own VAE ("Automatic", "None"), else a VAE of the VAE folders."""
        if name is None or (isinstance(name, str) and name.strip() in AUTOMATIC_VAE):
            return None
        with self._lock:
            item = self._vaes.get(name) if isinstance(name, str) else None
        if item is None:
            raise ApiError(422, f"{field}: no VAE {name!r} in the VAE folders; GET /sdapi/v1/sd-vae lists them",
                           field=field)
        return item

    def upscaler(self, name: object, field: str = "upscaler_1") -> tuple[str | None, Item | None]:
        """(UpscaleParams.upscaler, super-resolution model or None) for an upscaler's name: a
        classic resize ("None": no upscaling), an upscaler file, or a t2i super-resolution model."""
        if isinstance(name, str):
            for label, kind in CLASSIC_UPSCALERS.items():
                if name.strip().lower() == label.lower():
                    return kind, None
            with self._lock:
                item = self._upscalers.get(name.strip())
                files = self._image_upscalers
            if item is not None:
                return "model", item
            if name.strip() in files:
                return name.strip(), None
        raise ApiError(422, f"{field}: no upscaler {name!r}; GET /sdapi/v1/upscalers lists them", field=field)
