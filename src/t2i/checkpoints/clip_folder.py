"""CLIP models as transformers folders: `config.json` + `model.safetensors` (+ the tokenizer's
`vocab.json` / `merges.txt` when the folder has its own).

t2i's own CLIP is saved in the same layout as the OpenAI/OpenCLIP checkpoints that transformers
users keep on disk (`CLIPModel.from_pretrained(folder)` opens it), so one loader serves both:
the config is read as data and bounded before anything is built, the weights through t2i's safe
loaders (safetensors, or a weights-only `pytorch_model.bin`), and the load is strict.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

from t2i.atomic import atomic_path, write_text
from t2i.checkpoints.safe_load import check_tensor_kinds, load_state_dict_file
from t2i.errors import ModelLoadError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MAX_CLIP_PARAMETERS = 2_000_000_000  # ViT-bigG's CLIP has 2.5 billion with both towers; refuse past that
# Position ids are buffers some transformers versions save and others do not: never a misfit.
OPTIONAL_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def bundled_clip_dir() -> Path:
    """The CLIP t2i ships (trained on `shapes` by configs/shapes-clip.yaml)."""
    return Path(str(resources.files("t2i") / "assets" / "clip"))


def save_clip_folder(model, folder: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` (a transformers CLIPModel) as config.json + model.safetensors, atomically
    per file; `dtype=torch.float16` halves the file (the loader casts back to float32)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items() if k not in OPTIONAL_KEYS}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text(folder / "config.json", model.config.to_json_string())
    return folder


def _read_config(folder: Path):
    from transformers import CLIPConfig

    path = folder / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder} is not a CLIP model folder: it has no config.json "
                             f"(expected a transformers CLIPModel folder: config.json and model.safetensors)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ModelLoadError(f"{path} is not a readable JSON config: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("text_config"), dict) \
            or not isinstance(data.get("vision_config"), dict):
        raise ModelLoadError(f"{path} is not a CLIP config (it needs text_config and vision_config)")
    try:
        config = CLIPConfig(**{k: v for k, v in data.items() if k not in ("architectures", "transformers_version")})
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{path} is not a usable CLIP config: {err}") from err
    _check_size(config, path)
    return config


def _check_size(config, path: Path) -> None:
    """Refuse an absurd config before building it (an untrusted file must not allocate gigabytes)."""
    total = 0
    try:
        for side in (config.text_config, config.vision_config):
            w, n, mlp = int(side.hidden_size), int(side.num_hidden_layers), int(side.intermediate_size)
            if min(w, n, mlp) < 1:
                raise ValueError("a size below 1")
            total += n * (4 * w * w + 2 * w * mlp)
        total += int(config.text_config.vocab_size) * int(config.text_config.hidden_size)
    except (TypeError, ValueError, AttributeError) as err:
        raise ModelLoadError(f"{path}: the CLIP config has unusable sizes ({err})") from err
    if total > MAX_CLIP_PARAMETERS:
        raise ModelLoadError(f"{path} describes a CLIP of about {total / 1e9:.1f} billion parameters; "
                             f"t2i refuses more than {MAX_CLIP_PARAMETERS / 1e9:.0f} billion: the config is damaged")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return load_state_dict_file(path)  # safetensors, or a weights-only pickle
    raise ModelLoadError(f"{folder} has no CLIP weights: expected one of {', '.join(WEIGHT_FILES)}")


def load_clip_folder(folder: str | Path):
    """(CLIPModel in eval mode, float32, frozen; the tokenizer folder: the model's own when it has
    vocab.json and merges.txt, else None for t2i's bundled copy of the CLIP tokenizer)."""
    from transformers import CLIPModel

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"CLIP folder {folder} does not exist; give a transformers CLIPModel folder")
    config = _read_config(folder)
    state = {k: v for k, v in _read_weights(folder).items() if k not in OPTIONAL_KEYS}
    model = CLIPModel(config)
    expected = {k: v for k, v in model.state_dict().items() if k not in OPTIONAL_KEYS}
    check_tensor_kinds(expected, state, folder, "its config.json")
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelLoadError(f"{folder}: the weights do not match config.json ({len(missing)} missing, e.g. "
                             f"{missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]}); the folder is damaged "
                             f"or mixes two models")
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ModelLoadError(f"{folder}: {key} has shape {tuple(value.shape)}, config.json implies "
                                 f"{tuple(expected[key].shape)}")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False)
    own_tokenizer = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return model.eval().requires_grad_(False), (folder if own_tokenizer else None)
