"""Tiny VAE decoders in the TAESD architecture (Ollin Boer Bohan's "Tiny AutoEncoder for Stable
Diffusion"; diffusers' `DecoderTiny`): a few plain convolution blocks that map scaled latents
(unit variance, what sampling produces) straight to an image, several times faster than the
full KL decoder and approximate. t2i ships no weights for one; a user who has a TAESD-format
file loads it with `t2i.speedups.use_tiny_decoder` (`t2i generate --vae-decoder tiny FILE`), or
distils one from a model's VAE with `family: tiny_vae` (t2i.training.tiny_vae), which writes this
original layout with as many upsamplings as the model's VAE has (x4 for the bundled model).

Accepted files, read safely (t2i.checkpoints.safe_load: safetensors, or weights-only pickles):
- the original decoder file (`taesd_decoder.safetensors` / `.pth`, also TAESDXL): a
  `nn.Sequential` whose entry 0 is a clamp without weights, so tensor `i.*` is layer `i - 1` here;
- a diffusers `AutoencoderTiny` file (`decoder.layers.*`; its encoder tensors are ignored) or
  folder (config.json + weights);
- a `DecoderTiny` state dict (`layers.*`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor, nn

from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.safe_load import load_state_dict_file

# diffusers AutoencoderTiny defaults = the original TAESD decoder (x8 upsampling, 4 latent channels)
TAESD_DECODER = {"num_blocks": (3, 3, 3, 1), "block_out_channels": (64, 64, 64, 64), "upsampling_scaling_factor": 2}
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def build_tiny_decoder(latent_channels: int = 4, num_blocks=TAESD_DECODER["num_blocks"],
                       block_out_channels=TAESD_DECODER["block_out_channels"], upsampling_scaling_factor: int = 2):
    """A DecoderTiny: scaled latents (B, C, h, w) -> images in [-1, 1] (B, 3, h·f, w·f)."""
    from diffusers.models.autoencoders.vae import DecoderTiny

    return DecoderTiny(in_channels=latent_channels, out_channels=3, num_blocks=tuple(num_blocks),
                       block_out_channels=tuple(block_out_channels),
                       upsampling_scaling_factor=upsampling_scaling_factor, act_fn="relu", upsample_fn="nearest")


def decoder_state(state: dict[str, Tensor], source) -> dict[str, Tensor]:
    """The `layers.*` tensors of a DecoderTiny from any accepted layout."""
    if any(k.startswith("decoder.layers.") for k in state):  # diffusers AutoencoderTiny
        return {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.layers.")}
    if any(k.startswith("layers.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("layers.")}
    original = re.compile(r"^(\d+)\.(.+)$")
    if state and all(original.match(k) for k in state):  # the original nn.Sequential, clamp at 0
        out = {}
        for key, value in state.items():
            index, rest = original.match(key).groups()
            out[f"layers.{int(index) - 1}.{rest}"] = value
        return out
    raise ModelLoadError(f"{source} is not a TAESD-format decoder (expected tensors named like '1.weight', "
                         f"'decoder.layers.0.weight' or 'layers.0.weight'; found e.g. {sorted(state)[:3]})")


def _read(path: Path) -> tuple[dict[str, Tensor], dict]:
    """(tensors, architecture overrides) from a file or an AutoencoderTiny folder."""
    if path.is_dir():
        config_path = path / "config.json"
        weights = next((path / n for n in FOLDER_WEIGHTS if (path / n).is_file()), None)
        if weights is None or not config_path.is_file():
            raise ModelLoadError(f"{path} is not an AutoencoderTiny folder (needs config.json and "
                                 f"{' or '.join(FOLDER_WEIGHTS)})")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise ModelLoadError(f"cannot read {config_path}: {err}") from err
        if not isinstance(config, dict):
            raise ModelLoadError(f"{config_path} is not a JSON object; an AutoencoderTiny config is one")
        arch = {"num_blocks": config.get("num_decoder_blocks", TAESD_DECODER["num_blocks"]),
                "block_out_channels": config.get("decoder_block_out_channels", TAESD_DECODER["block_out_channels"]),
                "upsampling_scaling_factor": config.get("upsampling_scaling_factor", 2)}
        return load_state_dict_file(weights), arch
    return load_state_dict_file(path), None  # a file: the architecture is read from its tensors


def infer_decoder_arch(layers: dict[str, Tensor]) -> dict:
    """The DecoderTiny architecture that `layers.*` tensors describe, so files of other depths
    and widths than TAESD's (a decoder distilled for an x4 VAE: t2i.training.tiny_vae) load too.
    After the input convolution and its activation (entries 0, 1), each stage is tiny blocks
    (`layers.i.conv.0.weight`) closed by a plain convolution (`layers.i.weight`, its input
    channels = the stage's width); upsamplings have no tensors. Unreadable: TAESD's defaults,
    and the strict load reports what differs."""
    indices = sorted({int(k.split(".")[1]) for k in layers if k.split(".")[1].isdigit()})
    num_blocks, widths, blocks = [], [], 0
    for i in indices[1:] if indices[:1] == [0] else []:
        if f"layers.{i}.conv.0.weight" in layers:
            blocks += 1
        elif f"layers.{i}.weight" in layers and layers[f"layers.{i}.weight"].dim() == 4:
            num_blocks.append(blocks)
            widths.append(int(layers[f"layers.{i}.weight"].shape[1]))
            blocks = 0
    if not num_blocks or blocks:
        return dict(TAESD_DECODER)
    return {"num_blocks": tuple(num_blocks), "block_out_channels": tuple(widths), "upsampling_scaling_factor": 2}


def load_tiny_decoder(path, *, latent_channels: int, scale_factor: int) -> nn.Module:
    """A tiny decoder from `path`, strictly, checked against the model it decodes for:
    `latent_channels` and the VAE's upsampling `scale_factor` must match."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"tiny VAE decoder {path} does not exist")
    state, arch = _read(path)
    layers = decoder_state(state, path)
    arch = arch or infer_decoder_arch(layers)
    first = layers.get("layers.0.weight")
    if first is None or first.dim() != 4:
        raise ModelLoadError(f"{path} has no first convolution 'layers.0.weight' of a TAESD decoder")
    if first.shape[1] != latent_channels:
        raise ModelLoadError(f"{path} decodes {first.shape[1]}-channel latents, but this model's latents have "
                             f"{latent_channels} channels; use the tiny decoder made for this model family")
    factor = arch["upsampling_scaling_factor"] ** (len(arch["num_blocks"]) - 1)
    if factor != scale_factor:
        raise ModelLoadError(f"{path} upsamples latents x{factor}, but this model's VAE works at x{scale_factor}")
    decoder = build_tiny_decoder(latent_channels, **arch)
    try:
        decoder.load_state_dict({k: v.float() for k, v in layers.items()}, strict=True)
    except RuntimeError as err:
        raise ModelLoadError(f"{path} does not match the TAESD decoder architecture: {str(err).splitlines()[0]} "
                             f"{'; '.join(str(err).splitlines()[1:3])}") from err
    return decoder.eval().requires_grad_(False)
