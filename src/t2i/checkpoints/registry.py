"""Finding and loading a model by path (or the bundled default), with its name and web-UI hash."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from t2i.checkpoints.diffusers_folder import T2I_CONFIG, WEIGHTS, ModelLoadError
from t2i.runtime import Runtime

DEFAULT_MODEL_NAME = "t2i-shapes-ldm"


def bundled_model_dir() -> Path:
    return Path(str(resources.files("t2i") / "assets" / "default_model"))


def file_hash(path: Path, chars: int = 10) -> str:
    """The web UI's model hash: the first 10 hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:chars]


@dataclass
class LoadedModel:
    """A model ready to generate with, plus what infotexts say about it."""

    model: object  # LatentDiffusion
    name: str
    hash: str
    path: Path
    runtime: Runtime
    # LoRA / embedding folders, a separate VAE and their caches (t2i.extra_networks.ExtraNetworks);
    # None: the default folders, made on first use
    extra_networks: object = None


def load_model(path: str | Path | None = None, runtime: Runtime | None = None) -> LoadedModel:
    """Load a t2i model folder (default: the bundled model), a Stable Diffusion single file
    (.safetensors, .ckpt) or a diffusers folder onto the runtime's device and dtype."""
    from t2i.models.ldm import LatentDiffusion

    runtime = runtime or Runtime.auto()
    folder = Path(path) if path else bundled_model_dir()
    if not folder.exists():
        hint = "" if path else " (the bundled default model is missing: reinstall t2i)"
        raise ModelLoadError(f"model {folder} not found{hint}; expected a folder saved by t2i "
                             f"(model_index.json, t2i_config.json, unet/, vae/, text_encoder/, tokenizer/)")
    if folder.is_file():
        from t2i.checkpoints.embedded import load_embedded_model

        loaded = load_embedded_model(folder, runtime)  # a single file t2i wrote with its configs inside
        if loaded is not None:
            return loaded
    if folder.is_file() or not (folder / T2I_CONFIG).is_file():
        # a Stable Diffusion single file (.safetensors, .ckpt) or a plain diffusers folder
        from t2i.checkpoints.single_file import load_user_model

        return load_user_model(folder, runtime)
    model = LatentDiffusion.from_pretrained(folder, dtype=runtime.load_dtype)
    runtime = runtime.for_model(model)  # the final precision and layout depend on the model's size
    runtime.place(model)
    name = DEFAULT_MODEL_NAME if path is None else folder.name
    return LoadedModel(model, name, file_hash(folder / "unet" / WEIGHTS["unet"]), folder, runtime)
