"""LyCORIS layer kinds in kohya-named LoRA files: LoHa, LoKr, LoCon with a Tucker middle, and
full weight differences. Each is a weight update ΔW that `merge_loras` (lora.py) adds as it adds
a plain LoRA's `up @ down`; the formulas are those of the LyCORIS project (KohakuBlueleaf/LyCORIS)
and of the web UI's built-in Lora extension, which read these files.

| kind | tensors after `lora_unet_<name>.` | ΔW |
|---|---|---|
| LoHa (Hadamard product, Hyeon-Woo et al. 2022, "FedPara") | `hada_w1_a` (out, r), `hada_w1_b` (r, in·kh·kw), `hada_w2_a`, `hada_w2_b`, `alpha` | (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / r |
| LoHa, Tucker (conv) | + `hada_t1`, `hada_t2` (r, r, kh, kw); then `hada_w?_a` (r, out), `hada_w?_b` (r, in) | each factor t ×₁ w_a ×₂ w_b |
| LoKr (Kronecker product) | `lokr_w1` (a, c) or `lokr_w1_a` (a, r) @ `lokr_w1_b` (r, c); `lokr_w2` (b, d[, kh, kw]) or `lokr_w2_a` (b, r) @ `lokr_w2_b` (r, d[, kh, kw]); optional `lokr_t2` (Tucker: `lokr_w2_a` (r, b), `lokr_w2_b` (r, d)) | kron(w1, w2), · alpha / r only when a factor is low-rank |
| LoCon, Tucker (conv) | `lora_down` (r, in, 1, 1), `lora_mid` (r, r, kh, kw), `lora_up` (out, r, 1, 1), `alpha` | mid ×₁ up ×₂ down · alpha / r |
| full difference | `diff` (the weight's shape), optional `diff_b` (the bias's) | diff |

Without an `alpha` tensor the scale is 1, as in the web UI. Plain LoCon (kohya `lora_down` /
`lora_up` on 3x3 convolutions) is an ordinary LoRA layer (lora.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from t2i.checkpoints.diffusers_folder import ModelLoadError

# suffix after the kohya module name -> part name
LYCORIS_PARTS = tuple((f".{part}", part) for part in (
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "diff", "diff_b")) + ((".lora_mid.weight", "mid"),)
KINDS_HELP = ("LoRA (lora_down + lora_up [+ lora_mid]), LoHa (hada_w1_a/b + hada_w2_a/b [+ hada_t1/t2]), "
              "LoKr (lokr_w1 or lokr_w1_a/b + lokr_w2 or lokr_w2_a/b [+ lokr_t2]), full difference (diff [+ diff_b])")


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _tucker(core: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """core (r, r, kh, kw) ×₁ up (r, out) ×₂ down (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("ij...,ip,jq->pq...", core, up, down)


def _fits(shape_2d: tuple[int, int], weight: Tensor) -> bool:
    return shape_2d == (weight.shape[0], weight[0].numel())


class AlphaScaled:
    """`scale` = alpha / rank, 1 without an alpha (as kohya and the web UI apply it); the class
    defines `alpha` and `rank`."""

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class LohaLayer(AlphaScaled):
    w1_a: Tensor
    w1_b: Tensor
    w2_a: Tensor
    w2_b: Tensor
    t1: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None
    bias: Tensor | None = None  # (no LoHa bias delta; kept for merge_loras' uniform interface)

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])


    def _factor_shape(self, a: Tensor, b: Tensor, t: Tensor | None) -> tuple[int, int]:
        if t is None:  # a (out, r), b (r, in·kh·kw)
            return int(a.shape[0]), int(_flat(b).shape[1])
        return int(a.shape[1]), int(b.shape[1] * t[0, 0].numel())  # a (r, out), b (r, in)

    def shape_2d(self) -> tuple[int, int]:
        return self._factor_shape(self.w1_a, self.w1_b, self.t1)

    def check(self) -> str | None:
        one, two = self._factor_shape(self.w1_a, self.w1_b, self.t1), self._factor_shape(self.w2_a, self.w2_b, self.t2)
        return None if one == two else f"its two Hadamard factors have the shapes {one} and {two}"

    def fits(self, weight: Tensor) -> bool:
        return _fits(self.shape_2d(), weight)

    def shape_text(self) -> str:
        return f"LoHa factors {tuple(self.w1_a.shape)} @ {tuple(self.w1_b.shape)}"

    def delta(self, weight: Tensor) -> Tensor:
        def factor(a, b, t):
            a, b = (x.to(weight.device, torch.float32) for x in (a, b))
            if t is None:
                return (_flat(a) @ _flat(b)).reshape(weight.shape)
            return _tucker(t.to(weight.device, torch.float32), a, b).reshape(weight.shape)
        return factor(self.w1_a, self.w1_b, self.t1) * factor(self.w2_a, self.w2_b, self.t2) * self.scale


@dataclass
class LokrLayer:
    w1: Tensor | None = None
    w1_a: Tensor | None = None
    w1_b: Tensor | None = None
    w2: Tensor | None = None
    w2_a: Tensor | None = None
    w2_b: Tensor | None = None
    t2: Tensor | None = None
    alpha: float | None = None
    bias: Tensor | None = None

    @property
    def scale(self) -> float:
        # alpha / rank applies to the low-rank factors only; two full factors take alpha as 1
        low_rank = self.w2_b if self.w2 is None else self.w1_b if self.w1 is None else None
        if low_rank is None or self.alpha is None:
            return 1.0
        return self.alpha / int(low_rank.shape[0])

    def _w1_shape(self) -> tuple[int, int]:
        return tuple(self.w1.shape) if self.w1 is not None else (int(self.w1_a.shape[0]), int(self.w1_b.shape[1]))

    def _w2_shape(self) -> tuple[int, ...]:
        if self.w2 is not None:
            return tuple(self.w2.shape)
        if self.t2 is not None:  # w2_a (r, b), w2_b (r, d)
            return (int(self.w2_a.shape[1]), int(self.w2_b.shape[1]), *self.t2.shape[2:])
        return (int(self.w2_a.shape[0]), *self.w2_b.shape[1:])

    def shape_2d(self) -> tuple[int, int]:
        (a, c), (b, *rest) = self._w1_shape(), self._w2_shape()
        return a * b, c * int(torch.Size(rest).numel())

    def check(self) -> str | None:
        if self.w1 is None and self.w1_a.shape[1] != self.w1_b.shape[0]:
            return f"lokr_w1_a {tuple(self.w1_a.shape)} and lokr_w1_b {tuple(self.w1_b.shape)} disagree on the rank"
        if self.w2 is None and self.t2 is None and self.w2_a.shape[1] != self.w2_b.shape[0]:
            return f"lokr_w2_a {tuple(self.w2_a.shape)} and lokr_w2_b {tuple(self.w2_b.shape)} disagree on the rank"
        return None

    def fits(self, weight: Tensor) -> bool:
        return _fits(self.shape_2d(), weight)

    def shape_text(self) -> str:
        return f"LoKr factors {self._w1_shape()} ⊗ {self._w2_shape()}"

    def delta(self, weight: Tensor) -> Tensor:
        f32 = lambda t: t.to(weight.device, torch.float32)  # noqa: E731
        w1 = f32(self.w1) if self.w1 is not None else f32(self.w1_a) @ f32(self.w1_b)  # (a, c)
        if self.w2 is not None:
            w2 = f32(self.w2)
        elif self.t2 is not None:
            w2 = _tucker(f32(self.t2), f32(self.w2_a), f32(self.w2_b))
        else:  # (b, r) @ (r, d[, kh, kw]) keeping w2_b's trailing dimensions
            w2 = (f32(self.w2_a) @ _flat(f32(self.w2_b))).reshape(self._w2_shape())
        w1 = w1.reshape(*w1.shape, *[1] * (w2.ndim - 2))  # kron pairs dimensions: kernels come from w2
        # (a·b, c·d[, kh, kw]); a 2-d w2 of a conv holds (d, kh, kw) flattened in that order, so
        # the reshape below lands on the same layout
        return torch.kron(w1, w2.contiguous()).reshape(weight.shape) * self.scale


@dataclass
class TuckerLoconLayer(AlphaScaled):
    down: Tensor  # (r, in[, 1, 1])
    mid: Tensor  # (r, r, kh, kw)
    up: Tensor  # (out, r[, 1, 1])
    alpha: float | None = None
    bias: Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


    def shape_2d(self) -> tuple[int, int]:
        return int(self.up.shape[0]), int(_flat(self.down).shape[1] * self.mid[0, 0].numel())

    def check(self) -> str | None:
        ranks = {int(self.down.shape[0]), int(self.up.shape[1]), int(self.mid.shape[0]), int(self.mid.shape[1])}
        return None if len(ranks) == 1 else "its lora_down, lora_mid and lora_up disagree on the rank"

    def fits(self, weight: Tensor) -> bool:
        return weight.ndim == 4 and tuple(weight.shape[2:]) == tuple(self.mid.shape[2:]) and \
            _fits(self.shape_2d(), weight)

    def shape_text(self) -> str:
        return f"up {tuple(self.up.shape)} / mid {tuple(self.mid.shape)} / down {tuple(self.down.shape)}"

    def delta(self, weight: Tensor) -> Tensor:
        f32 = lambda t: _flat(t.to(weight.device, torch.float32))  # noqa: E731
        mid = self.mid.to(weight.device, torch.float32)
        # mid's first index pairs with up's rank, its second with down's (mid ×₁ upᵀ ×₂ down)
        return _tucker(mid, f32(self.up).T, f32(self.down)).reshape(weight.shape) * self.scale


@dataclass
class FullDiffLayer:
    diff: Tensor
    bias: Tensor | None = None  # diff_b
    alpha: float | None = None  # unused: a full difference is added as it is

    def shape_2d(self) -> tuple[int, int]:
        return int(self.diff.shape[0]), int(self.diff[0].numel())

    def check(self) -> str | None:
        return None

    def fits(self, weight: Tensor) -> bool:
        return tuple(self.diff.shape) == tuple(weight.shape) or (self.diff.numel() == weight.numel()
                                                                and _fits(self.shape_2d(), weight))

    def shape_text(self) -> str:
        return f"diff {tuple(self.diff.shape)}"

    def delta(self, weight: Tensor) -> Tensor:
        return self.diff.to(weight.device, torch.float32).reshape(weight.shape)


def lycoris_layer(path: Path, name: str, found: dict[str, Tensor], alpha: float | None):
    """The LyCORIS layer that the tensors `found` ({part: tensor}) of one module make, or a
    ModelLoadError naming the file, the layer and its tensors."""
    have = set(found) - {"alpha"}
    get = found.get

    def refuse(why: str):
        raise ModelLoadError(f"{path}: layer {name!r} has the tensors {', '.join(sorted(have))}, {why}; "
                             f"t2i reads {KINDS_HELP}")

    layer = None
    if have and have <= {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}:
        if not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= have:
            refuse("an incomplete LoHa layer (hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b are needed)")
        layer = LohaLayer(get("hada_w1_a"), get("hada_w1_b"), get("hada_w2_a"), get("hada_w2_b"),
                          get("hada_t1"), get("hada_t2"), alpha)
    elif have and all(part.startswith("lokr_") for part in have):
        one = "lokr_w1" in have or {"lokr_w1_a", "lokr_w1_b"} <= have
        two = "lokr_w2" in have or {"lokr_w2_a", "lokr_w2_b"} <= have
        if not (one and two) or ("lokr_t2" in have and "lokr_w2" in have):
            refuse("an incomplete LoKr layer (lokr_w1 or lokr_w1_a + lokr_w1_b, and lokr_w2 or lokr_w2_a + "
                   "lokr_w2_b are needed)")
        layer = LokrLayer(get("lokr_w1"), get("lokr_w1_a"), get("lokr_w1_b"), get("lokr_w2"), get("lokr_w2_a"),
                          get("lokr_w2_b"), get("lokr_t2"), alpha)
    elif have == {"down", "mid", "up"}:
        layer = TuckerLoconLayer(get("down"), get("mid"), get("up"), alpha)
    elif have in ({"diff"}, {"diff", "diff_b"}):
        layer = FullDiffLayer(get("diff"), get("diff_b"))
    if layer is None:
        refuse("which make no layer kind t2i knows (or mix two kinds)")
    problem = layer.check()
    if problem:
        raise ModelLoadError(f"{path}: layer {name!r} is malformed: {problem}")
    return layer
