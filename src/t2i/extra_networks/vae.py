"""A separate VAE (`--vae FILE`): replace a loaded model's VAE weights with those of a VAE file,
as the web UI's "SD VAE" setting does (e.g. vae-ft-mse-840000-ema-pruned.safetensors).

Accepted, all read through t2i.checkpoints.safe_load:
- web-UI VAE files (`.safetensors`, `.ckpt`, `.vae.pt`): the original layout without the
  checkpoint's `first_stage_model.` prefix (`encoder.down.0.block.0.conv1.weight`); a training
  loss's (`loss.`) and EMA (`model_ema.`) tensors are skipped, as the web UI does;
- a whole original checkpoint: its `first_stage_model.` tensors;
- diffusers: `diffusion_pytorch_model.safetensors` (or a folder holding it, or a pipeline
  folder's `vae/`), also with the attention names of diffusers < 0.14 (`query`, `proj_attn`).
Loading is strict: every tensor of the model's VAE must come from the file with its shape, and
the file may hold nothing else; otherwise nothing changes and the error names the file. The
model's own VAE configuration (and latent scaling factor) stays: the file brings weights only.
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor

from t2i.checkpoints.convert import Target, read_target, vae_target
from t2i.checkpoints.detect import VAE_PREFIX
from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.safe_load import load_state_dict_file, same_kind
from t2i.checkpoints.single_file import mismatch_report

VAE_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                    "model.safetensors", "diffusion_pytorch_model.bin")
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
_SKIPPED = ("loss.", "model_ema.")


def vae_weights_file(path: str | Path) -> Path:
    """The weights file of a VAE file or folder."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        folder = path / "vae" if (path / "vae").is_dir() else path
        for name in VAE_WEIGHT_NAMES:
            if (folder / name).is_file():
                return folder / name
        raise ModelLoadError(f"VAE folder {folder} has no weights file (expected one of {', '.join(VAE_WEIGHT_NAMES)})")
    raise ModelLoadError(f"VAE {path} does not exist; give a VAE file (.safetensors, .pt, .ckpt) or a diffusers VAE folder")


def _layout(state: dict[str, Tensor]) -> str | None:
    diffusers = any(".down_blocks." in k or ".up_blocks." in k or ".mid_block." in k for k in state)
    original = any(k.startswith(("encoder.down.", "decoder.up.", "encoder.mid.", "decoder.mid.")) for k in state)
    return None if diffusers == original else ("diffusers" if diffusers else "original")


def _rename_old_attention(key: str) -> str:
    if ".attentions." in key:
        for old, new in _OLD_ATTENTION.items():
            key = key.replace(old, new)
    return key


def vae_state_dict(vae, path: str | Path) -> dict[str, Tensor]:
    """The file's weights under `vae`'s (an AutoencoderKL) parameter names, checked strictly."""
    file = vae_weights_file(path)
    state = load_state_dict_file(file)
    if any(k.startswith(VAE_PREFIX) for k in state):  # a whole checkpoint: its VAE
        state = {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    state = {k: v for k, v in state.items() if not k.startswith(_SKIPPED)}
    layout = _layout(state)
    if layout is None:
        raise ModelLoadError(f"{file} is not a VAE file: expected encoder.*/decoder.* tensors in the original "
                             f"(encoder.down.0...) or diffusers (encoder.down_blocks.0...) layout, found e.g. "
                             f"{', '.join(sorted(state)[:3]) or 'nothing'}")
    if layout == "original":
        source = {VAE_PREFIX + k: v for k, v in state.items()}
        config = dict(vae.config)
        target_of = lambda name: vae_target(name, config)  # noqa: E731
    else:
        source = {_rename_old_attention(k): v for k, v in state.items()}
        target_of = Target
    new, used, missing, wrong = {}, set(), [], []
    for name, slot in vae.state_dict().items():
        target = target_of(name)
        used.add(target.key)
        shown = target.key.removeprefix(VAE_PREFIX)
        if target.key not in source:
            missing.append(shown)
            continue
        value = read_target(source, target)
        if tuple(value.shape) != tuple(slot.shape):
            wrong.append(f"{shown} {tuple(source[target.key].shape)} (expected {tuple(slot.shape)})")
            continue
        if not same_kind(value, slot):  # a cast between kinds (F16 relabelled I16) changes values
            wrong.append(f"{shown} {value.dtype} (expected {slot.dtype})")
            continue
        new[name] = value
    stray = sorted(k.removeprefix(VAE_PREFIX) for k in source if k not in used)
    problems = mismatch_report(missing, wrong, stray)
    if problems:
        raise ModelLoadError(f"{file} does not fit this model's VAE: {', '.join(problems)}. It is a VAE for another "
                             f"kind of model, damaged, or not a VAE; the model keeps its own VAE")
    return new
