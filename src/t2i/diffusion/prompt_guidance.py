"""Classifier-free guidance over a `PromptConditioning`: the text context follows the prompt
schedule ([a:b:when], [a|b]) step by step, and AND parts are composed (Liu et al. 2022,
"Compositional Visual Generation with Composable Diffusion Models"):
`uncond + cfg · Σ_i w_i (cond_i − uncond)`.

Contexts of one UNet batch must have one length: conditional parts are padded among themselves by
repeating their last vector, then the shorter of conditional and unconditional by encodings of the
empty prompt, one chunk at a time (both as the web UI does). Built by
`PromptConditioning.denoiser` (t2i.diffusion.conditioning), called by `sampling.denoise`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from t2i.diffusion.sampling import CFGDenoiser

if TYPE_CHECKING:
    from t2i.diffusion.conditioning import PromptConditioning


def _pad_repeat_last(rows: list[Tensor]) -> Tensor:
    """(1, T_i, D) each → (N, max T, D), a shorter row continued by its last vector."""
    longest = max(row.shape[1] for row in rows)
    padded = [row if row.shape[1] == longest else
              torch.cat([row, row[:, -1:].expand(1, longest - row.shape[1], row.shape[2])], dim=1) for row in rows]
    return torch.cat(padded)


def _pad_with_empty(context: Tensor, length: int, empty: Tensor) -> Tensor:
    """(N, T, D) → (N, length, D) with copies of the empty prompt's encoding (1, L, D)."""
    missing = length - context.shape[1]
    if missing == 0:
        return context
    if missing % empty.shape[1]:
        raise ValueError(f"cannot pad a context of {context.shape[1]} tokens to {length} with "
                         f"{empty.shape[1]}-token chunks; encode both with the same PromptEncoder")
    filler = empty.repeat(1, missing // empty.shape[1], 1).expand(context.shape[0], -1, -1)
    return torch.cat([context, filler], dim=1)


class PromptDenoiser(CFGDenoiser):
    """Classifier-free guidance whose text context follows the prompt schedule, with AND parts.

    `begin_step(i, total)` (called by `sample_scheduler` before each model evaluation) selects the
    context of step i; a static conditioning sets it once, here. With one part of weight 1 per
    image the UNet batch is the base class's [uncond (B), cond (B)]; otherwise it is
    [uncond (B), every part of every image (R)] and `combine_parts` sums the weighted differences.
    """

    def __init__(self, unet, cond: PromptConditioning, uncond: PromptConditioning | None, cfg_scale: float,
                 batch_size: int, steps: int | None = None):
        for what, c in (("prompt", cond), ("negative prompt", uncond)):
            if c is not None and len(c.prompts) not in (1, batch_size):
                raise ValueError(f"got {len(c.prompts)} {what}s for {batch_size} images; give 1 or {batch_size}")
        if uncond is not None and not uncond.simple:
            raise ValueError("the negative prompt conditioning has AND parts or a part weight; build it with "
                             "encoder.conditioning(negative_prompt, negative=True)")
        if not cond.simple and uncond is None:
            raise ValueError("a prompt with AND parts or a part weight (`text :1.2`) is guided relative to the "
                             "unconditional prediction: give a negative prompt conditioning (an empty one is fine)")
        # The base class sets the device, dtype, scale (and anything it gains later); the
        # context here depends on the step, so it gets a placeholder and is replaced below.
        placeholder = torch.zeros(1, 1, 1)
        super().__init__(unet, placeholder, placeholder if uncond is not None else None, cfg_scale, batch_size)
        self.guided = uncond is not None and (self.cfg_scale != 1.0 or not cond.simple)
        self.simple = cond.simple
        self.batch_size = batch_size
        self.cond, self.uncond = cond, uncond if self.guided else None
        self.static = cond.static and (self.uncond is None or self.uncond.static)
        image_parts = [(b, weight) for b in range(batch_size) for _, weight in cond.parts[b if len(cond.parts) > 1 else 0]]
        self.owners = torch.tensor([b for b, _ in image_parts], device=self.device)  # (R,) image of each part
        self.part_weights = torch.tensor([w for _, w in image_parts]).view(-1, 1, 1, 1)  # (R, 1, 1, 1)
        rows = list(range(batch_size)) + [b for b, _ in image_parts] if self.guided else [b for b, _ in image_parts]
        self.rows = torch.tensor(rows, device=self.device)  # image of each UNet batch row
        self._per_step: dict[int, list[tuple]] = {}  # total -> the (context, pooled) of each step
        self.context = None
        self.pooled: Tensor | None = None  # (rows, P) pooled text embeddings (SDXL), row for row with context
        if self.static or steps is not None:
            self.begin_step(0, steps)

    def begin_step(self, step: int, total: int | None) -> None:
        if self.static:
            if self.context is None:
                self.context, self.pooled = self._build_context(*self._key_at(0, None))
            return  # a prompt without schedules: nothing to do per step
        contexts = self._per_step.get(total)
        if contexts is None:  # first step of a run: every step's context, each distinct one built once
            contexts = self._per_step[total] = self._contexts_for(total)
        self.context, self.pooled = contexts[min(step, len(contexts) - 1)]

    def _key_at(self, step: int, total: int | None) -> tuple:
        return self.cond.texts_at(step, total), self.uncond.texts_at(step, total) if self.uncond is not None else None

    def _contexts_for(self, total: int | None) -> list[tuple]:
        if total is None:
            raise ValueError("this prompt changes over the steps: give the number of model evaluations")
        built: dict[tuple, tuple] = {}
        contexts = []
        for step in range(total):
            key = self._key_at(step, total)
            if key not in built:
                built[key] = self._build_context(*key)
            contexts.append(built[key])
        return contexts

    def _build_context(self, cond_texts: tuple, uncond_texts: tuple | None) -> tuple[Tensor, Tensor | None]:
        """(context (B + R or R, T, D), pooled (B + R or R, P) or None): uncond of each image,
        then each part of each image."""
        per_image = lambda texts, b: texts[b if len(texts) > 1 else 0]  # noqa: E731
        cond_rows = [text for b in range(self.batch_size) for text, _ in per_image(cond_texts, b)]
        cond = _pad_repeat_last([self.cond.context(text) for text in cond_rows])
        pooled = self._pooled_rows(self.cond, cond_rows)
        if uncond_texts is None:
            return cond.to(self.device, self.dtype), pooled
        uncond_rows = [per_image(uncond_texts, b)[0][0] for b in range(self.batch_size)]
        uncond = _pad_repeat_last([self.uncond.context(text) for text in uncond_rows])
        length = max(cond.shape[1], uncond.shape[1])
        cond = _pad_with_empty(cond, length, self.cond.encoder.empty)
        uncond = _pad_with_empty(uncond, length, self.uncond.encoder.empty)
        if pooled is not None:
            pooled = torch.cat([self._pooled_rows(self.uncond, uncond_rows), pooled])
        return torch.cat([uncond, cond]).to(self.device, self.dtype), pooled

    def _pooled_rows(self, conditioning: PromptConditioning, texts: list[str]) -> Tensor | None:
        vectors = [conditioning.pooled(text) for text in texts]
        return None if vectors[0] is None else torch.cat(vectors).to(self.device, self.dtype)

    def unet_kwargs(self, x: Tensor) -> dict:
        """SDXL: the pooled embeddings and size conditioning of the current rows (x: the UNet input)."""
        if self.pooled is None:
            return {}
        return {"added_cond_kwargs": self.cond.encoder.unet_conditions(self.pooled, tuple(x.shape[-2:]))}

    def combine_parts(self, uncond_out: Tensor, cond_out: Tensor) -> Tensor:
        """uncond + cfg · Σ_i w_i (cond_i − uncond), the sum over each image's parts."""
        weights = self.part_weights.to(cond_out.device)
        owners = self.owners.to(cond_out.device)
        delta = (cond_out - uncond_out[owners]) * weights  # (R, C, H, W)
        return uncond_out + self.cfg_scale * torch.zeros_like(uncond_out).index_add_(0, owners, delta)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.context is None:
            raise ValueError("this prompt changes over the steps: call begin_step(i, total) before each model "
                             "evaluation (sample_scheduler does), or give steps= when building the denoiser")
        if self.simple:
            return super().__call__(x, t)
        x_in = x.to(self.device, self.dtype)[self.rows]  # (B + R, C, H, W)
        out = self.unet(x_in, t.to(self.device), encoder_hidden_states=self.context, **self.unet_kwargs(x_in)).sample
        out = out.to(x.device, torch.float32)
        return self.combine_parts(out[: self.batch_size], out[self.batch_size:])
