"""Finding and loading a model by path (or the bundled default), with its name and web-UI hash."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from t2i.checkpoints.diffusers_folder import T2I_CONFIG, WEIGHTS, ModelLoadError, load_ldm_folder
from t2i.checkpoints.embedded import load_embedded_model
from t2i.checkpoints.loaded import LoadedModel, file_hash  # also imported from here (their old home)
from t2i.checkpoints.single_file import load_user_model
from t2i.runtime import Runtime

DEFAULT_MODEL_NAME = "t2i-shapes-ldm"
DEFAULT_MODEL_ALIAS = "default"  # what users type for the bundled model


def bundled_model_dir() -> Path:
    return Path(str(resources.files("t2i") / "assets" / "default_model"))


def load_model(path: str | Path | None = None, runtime: Runtime | None = None) -> LoadedModel:
    """Load a t2i model folder (default: the bundled model), a Stable Diffusion single file
    (.safetensors, .ckpt) or a diffusers folder onto the runtime's device and dtype. `default`
    names the bundled model, as everywhere a model is taken (a file or folder called `default`
    is still reachable as ./default)."""
    runtime = runtime or Runtime.auto()
    if str(path) == DEFAULT_MODEL_ALIAS:
        path = None
    folder = Path(path) if path else bundled_model_dir()
    if not folder.exists():
        hint = "" if path else " (the bundled default model is missing: reinstall t2i)"
        raise ModelLoadError(f"model {folder} not found{hint}; expected a folder saved by t2i "
                             f"(model_index.json, t2i_config.json, unet/, vae/, text_encoder/, tokenizer/)")
    if folder.is_file():
        loaded = load_embedded_model(folder, runtime)  # a single file t2i wrote with its configs inside
        if loaded is not None:
            return loaded
    if folder.is_file() or not (folder / T2I_CONFIG).is_file():
        # a Stable Diffusion single file (.safetensors, .ckpt) or a plain diffusers folder
        return load_user_model(folder, runtime)
    model = load_ldm_folder(folder, dtype=runtime.load_dtype)
    if model.config.conditioning in ("class", "none"):  # no prompt to generate from
        what = "class-conditional" if model.config.conditioning == "class" else "unconditional"
        raise ModelLoadError(f"{folder} is a {what} latent diffusion model: it has no text encoder; sample it "
                             f"with `t2i sample {folder}`" + (" --class NAME" if what == "class-conditional" else ""))
    if model.config.conditioning == "retrieval":  # its prompt goes through a CLIP and its database
        raise ModelLoadError(f"{folder} is a retrieval-augmented latent diffusion model: sample it with "
                             f"`t2i sample {folder} --prompt \"a red circle\"`")
    runtime = runtime.for_model(model)  # the final precision and layout depend on the model's size
    runtime.place(model)
    name = DEFAULT_MODEL_NAME if path is None else folder.name
    return LoadedModel(model, name, file_hash(folder / "unet" / WEIGHTS["unet"]), folder, runtime)
