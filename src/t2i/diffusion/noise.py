"""Initial noise with the web UI's variation controls: a variation seed (subseed) blended in by
spherical interpolation, and "seed resize from", which keeps the look of a seed at a new size.

    noise, gens = variation_noise([1234], (4, 64, 64), subseeds=[99], subseed_strength=0.3)

Per-image CPU generators as in `sampling.make_generators` (DESIGN rule 7): image i depends only
on seeds[i] and subseeds[i], never on the batch. With subseed_strength 0 and no resize the
result is exactly `draw_noise(make_generators(seeds), shape)`, and the returned generators have
advanced exactly as there, so existing seeds keep their images.
"""
from __future__ import annotations

import torch
from torch import Tensor

from t2i.diffusion.sampling import draw_noise, make_generators

# Below this angle between the two noises slerp is numerically a lerp (and sin(omega) ~ 0).
_PARALLEL_DOT = 0.9995


def slerp(t: float, a: Tensor, b: Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985) from a (t=0) to b (t=1), per image.

    Each image's whole (C, H, W) tensor is one vector, so a blend of two unit-variance Gaussian
    noises keeps (about) unit variance, which a linear blend would shrink towards 0.5x at t=0.5.
    """
    if t <= 0:
        return a.clone()
    if t >= 1:
        return b.clone()
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()  # (B, N)
    dot = (flat_a / flat_a.norm(dim=1, keepdim=True) * flat_b / flat_b.norm(dim=1, keepdim=True)).sum(1)
    dot = dot.clamp(-1.0, 1.0)
    omega = torch.acos(dot)  # (B,)
    so = torch.sin(omega)
    wa = torch.where(dot > _PARALLEL_DOT, 1.0 - t, torch.sin((1.0 - t) * omega) / so.clamp_min(1e-12))
    wb = torch.where(dot > _PARALLEL_DOT, torch.full_like(dot, t), torch.sin(t * omega) / so.clamp_min(1e-12))
    out = wa[:, None] * flat_a + wb[:, None] * flat_b
    return out.reshape(a.shape).to(a.dtype)


def _paste_centered(target: Tensor, source: Tensor) -> Tensor:
    """Copy the overlapping centre of `source` (C, h, w) into `target` (C, H, W), centres aligned.

    This is what "seed resize from" means: the noise a seed gives at the old size, placed in the
    middle of the new size, so the composition of that seed survives a change of aspect."""
    _, h, w = source.shape
    _, big_h, big_w = target.shape
    dy, dx = (big_h - h) // 2, (big_w - w) // 2
    ty, tx = max(dy, 0), max(dx, 0)  # where the copy lands in target
    sy, sx = max(-dy, 0), max(-dx, 0)  # where it comes from in source
    ch, cw = min(h, big_h), min(w, big_w)
    target = target.clone()
    target[:, ty:ty + ch, tx:tx + cw] = source[:, sy:sy + ch, sx:sx + cw]
    return target


def variation_noise(
    seeds: list[int],
    shape: tuple[int, int, int],
    *,
    subseeds: list[int] | None = None,
    subseed_strength: float = 0.0,
    resize_from: tuple[int, int, int] | None = None,
) -> tuple[Tensor, list[torch.Generator]]:
    """(B, C, H, W) float32 initial noise and the per-image generators, which go on to give the
    sampler's per-step noise.

    subseeds: one variation seed per image; with subseed_strength s in (0, 1] image i's noise is
        slerp(s, noise(seeds[i]), noise(subseeds[i])): s = 1 is exactly the subseed's noise.
    resize_from: (C, h, w) latent shape of "seed resize from": the seed's noise is drawn at that
        shape and pasted, centred, over the noise the seed gives at `shape`.
    """
    if not 0.0 <= subseed_strength <= 1.0:
        raise ValueError(f"subseed_strength must be in [0, 1], got {subseed_strength}")
    use_subseed = subseed_strength > 0
    if use_subseed and (subseeds is None or len(subseeds) != len(seeds)):
        raise ValueError(f"give one subseed per seed ({len(seeds)}), got {None if subseeds is None else len(subseeds)}")
    noise_shape = tuple(resize_from) if resize_from is not None else tuple(shape)
    if len(noise_shape) != 3 or noise_shape[0] != shape[0]:
        raise ValueError(f"resize_from must be (C, h, w) with C = {shape[0]}, got {resize_from}")
    generators = make_generators(seeds)
    noise = draw_noise(generators, noise_shape)  # (B, C, h, w); generators advance as in txt2img
    if use_subseed:
        noise = slerp(subseed_strength, noise, draw_noise(make_generators(subseeds), noise_shape))
    if noise_shape != tuple(shape):
        full = draw_noise(make_generators(seeds), tuple(shape))  # the seed's own noise at the new size
        noise = torch.stack([_paste_centered(f, n) for f, n in zip(full, noise)])
    return noise, generators
