"""Parameter counts estimated from configs, before anything is built.

A config read from a model file is untrusted: each model config's `__post_init__` estimates the
size of the model it describes and refuses an absurd one (t2i.config.check_model_size) before
a module exists. These formulas count the weight matrices of the diffusers / transformers
building blocks t2i uses (3x3 convolutions, attention and MLP projections, embedding tables)
and leave out biases and norms: within 5% of the built models for every config in configs/ and
an SD 1.5-sized one (tests/test_config_validation.py compares them). All they are for is to
tell 50 million from 50 billion, and a config from the file it came with.
"""
from __future__ import annotations

from typing import Callable, Sequence

def self_attention(c: int) -> int:
    return 4 * c * c  # q, k, v, out


def cross_transformer(context: int) -> Callable[[int], int]:
    """A Stable Diffusion transformer block at width c: proj in/out, self-attention, cross-attention
    to `context`-wide states, GEGLU feed-forward (c -> 8c, 4c -> c)."""
    return lambda c: 2 * c * c + 4 * c * c + 2 * c * c + 2 * c * context + 12 * c * c


def _resnet(cin: int, cout: int, temb: int) -> int:
    return 9 * cin * cout + 9 * cout * cout + temb * cout + (cin * cout if cin != cout else 0)


def unet_params(widths: Sequence[int], layers: int, attention: Sequence[bool], channels: int,
                attn: Callable[[int], int]) -> int:
    """A diffusers UNet (UNet2DModel / UNet2DConditionModel): `channels` in and out; per level
    `layers` resnets down and `layers + 1` up (inputs widened by the skip connection), `attn(width)`
    after each resnet of a level whose attention flag is set and in the middle block."""
    c0, temb = widths[0], 4 * widths[0]
    total = 9 * channels * c0 * 2 + c0 * temb + temb * temb  # conv in/out, time-embedding MLP
    prev = c0
    for i, (c, a) in enumerate(zip(widths, attention)):
        for j in range(layers):
            total += _resnet(prev if j == 0 else c, c, temb) + (attn(c) if a else 0)
        total += 9 * c * c if i < len(widths) - 1 else 0  # downsampling convolution
        prev = c
    total += 2 * _resnet(prev, prev, temb) + attn(prev)  # middle block
    for i, (c, a) in enumerate(zip(reversed(widths), reversed(attention))):
        total += (layers + 1) * (_resnet(2 * c, c, temb) + (attn(c) if a else 0))
        total += 9 * c * c if i < len(widths) - 1 else 0  # upsampling convolution
    return total


def autoencoder_params(widths: Sequence[int], layers: int, latent_channels: int) -> int:
    """A diffusers AutoencoderKL / VQModel encoder + decoder (without a codebook)."""
    enc = dec = 0
    prev = widths[0]
    for i, c in enumerate(widths):
        enc += sum(_resnet(prev if j == 0 else c, c, 0) for j in range(layers))
        dec += (layers + 1) * _resnet(c, c, 0)
        sampling = 9 * c * c if i < len(widths) - 1 else 0  # down (encoder) / up (decoder) sampling
        enc, dec = enc + sampling, dec + sampling
        prev = c
    middle = 2 * _resnet(prev, prev, 0) + self_attention(prev)
    ends = 2 * 27 * widths[0] + 9 * prev * latent_channels * 3  # image convs; latent convs (moments, in)
    return enc + dec + 2 * middle + ends


def clip_text_params(hidden: int, layers: int, intermediate: int, max_length: int, vocab: int) -> int:
    return layers * (4 * hidden * hidden + 2 * hidden * intermediate) + (vocab + max_length) * hidden


def gpt_params(width: int, layers: int, vocab: int, positions: int) -> int:
    """GPT-2 with a tied output head: attention (4 d^2) and MLP (8 d^2) per layer, token and
    position tables."""
    return layers * 12 * width * width + (vocab + positions) * width


def implausible_for_file(estimate: int, stored: int) -> bool:
    """True when a config describes far more parameters than a file stores values: building its
    model would allocate memory the file never fills (a damaged or hostile embedded config). The
    estimates are within a few percent of the real counts, so 4x plus a slack never refuses a real
    file (half-precision files store the same number of values)."""
    return estimate > 4 * stored + 1_000_000
