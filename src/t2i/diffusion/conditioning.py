"""Text conditioning with the web UI's prompt syntax, applied in sampling.

From a prompt to what the UNet's cross-attention sees at each step, as the most used web UI
(AUTOMATIC1111) does it; the string work lives in `t2i.prompts`:

- Attention weights: the tokens of each `(text, weight)` chunk carry its weight; the text
  encoder's hidden states are multiplied per token, then each encoded chunk is rescaled so its
  mean stays what it was (the web UI's "Original" emphasis).
- Long prompts: tokens are cut into chunks of `model_max_length - 2` (75 for SD), each encoded
  with BOS, EOS and padding, and the chunks are concatenated along the sequence axis, with no
  length limit. `BREAK` pads the current chunk and starts a new one. When a chunk fills up and a
  comma lies within its last 20 tokens, the words after the comma move to the next chunk.
- Prompt editing `[a:b:when]` and alternation `[a|b]`: each distinct scheduled text is encoded
  once; the denoiser picks the right encoding at each model evaluation (`begin_step`), with the
  schedule counted over the scheduler's model evaluations (Heun: 2 × steps − 1), as the web UI
  does. Step index i (0-based) uses the text that `schedule` gives for step i + 1 (the web UI
  compares its 0-based counter with those step numbers, so its switches come one step later).
- AND, composable diffusion (Liu et al. 2022, "Compositional Visual Generation with Composable
  Diffusion Models"): every part is a row of the UNet batch and the guidance is
  `uncond + cfg · Σ_i w_i (cond_i − uncond)`.
- Negative prompts take the same syntax except AND, which stays literal text (as in the web UI).
- The contexts of one UNet batch must have one length: conditional parts are padded among
  themselves by repeating their last vector, and then the shorter of conditional and
  unconditional by encodings of the empty prompt, one chunk at a time (both as the web UI).

    encoder = PromptEncoder.from_model(model)
    cond = encoder.conditioning("a (red:1.3) [circle|square] AND a blue triangle :0.5")
    uncond = encoder.conditioning("blurry", negative=True)
    latents = denoise(unet, scheduler, noise, cond, uncond, steps=20, cfg_scale=7.0, generators=gens)

A prompt without syntax (`has_syntax` False) is encoded once, before sampling, and sampled by the
base `CFGDenoiser` path: no extra work per step.

This module holds the encoder and the per-step conditioning; chunking and weights are in
t2i.diffusion.prompt_tokens, the guidance wrapper (AND, padding) in t2i.diffusion.prompt_guidance,
and SDXL's two text encoders in t2i.diffusion.sdxl.
"""
from __future__ import annotations

from bisect import bisect_left
from contextlib import nullcontext

import torch
from torch import Tensor

# Tokens and guidance live in their own modules; their public names stay importable from here.
from t2i.diffusion.prompt_guidance import PromptDenoiser
from t2i.diffusion.prompt_tokens import COMMA_BACKTRACK, TokenChunk, apply_weights, chunk_length_for, chunk_tokens
from t2i.diffusion.sampling import _device_dtype
from t2i.prompts import extract_extra_networks, has_schedule, has_syntax, parse_attention, schedule, split_and

__all__ = ["COMMA_BACKTRACK", "TokenChunk", "chunk_tokens", "apply_weights", "PromptEncoder", "PromptConditioning",
           "PromptDenoiser"]


# --------------------------------------------------------------------------- encoding


class PromptEncoder:
    """Text → (1, n_chunks · (chunk_length + 2), D) hidden states, cached per text."""

    def __init__(self, tokenizer, text_encoder, *, comma_backtrack: int = COMMA_BACKTRACK, clip_skip: int = 1):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.comma_backtrack = int(comma_backtrack)
        self.clip_skip = int(clip_skip)  # the web UI's "Clip skip" (see t2i.models.text.text_hidden_states)
        self.chunk_length = chunk_length_for(tokenizer, text_encoder)
        self._cache: dict[str, Tensor] = {}
        self.embeddings: dict = {}  # textual-inversion embeddings by name (see use_embeddings)
        self._matcher = None

    # SDXL zeroes an empty negative prompt instead of encoding "" (see t2i.diffusion.sdxl)
    zero_empty_negative = False

    @classmethod
    def from_model(cls, model, *, embeddings=None, **kwargs) -> "PromptEncoder":
        """For a LatentDiffusion (anything with `.tokenizer` and `.text_encoder`); an SDXL model
        (a second text encoder) gets the SDXLPromptEncoder. `clip_skip` defaults to the model's
        config (1 where it has none). `embeddings`: textual-inversion embeddings prompts may name."""
        kwargs.setdefault("clip_skip", getattr(getattr(model, "config", None), "clip_skip", 1))
        if cls is PromptEncoder and getattr(model, "text_encoder_2", None) is not None:
            from t2i.diffusion.sdxl import SDXLPromptEncoder

            encoder = SDXLPromptEncoder.from_model(model, **kwargs)
        else:
            encoder = cls(model.tokenizer, model.text_encoder, **kwargs)
        return encoder.use_embeddings(embeddings) if embeddings else encoder

    def use_embeddings(self, embeddings) -> "PromptEncoder":
        """Let prompts name these textual-inversion embeddings (t2i.extra_networks.embeddings);
        set before the first encoding, since encodings are cached per text."""
        from t2i.extra_networks.embeddings import EmbeddingMatcher

        if self._cache:
            raise RuntimeError("set embeddings before encoding any text with this PromptEncoder")
        embeddings = list(embeddings or ())
        self.embeddings = {e.name: e for e in embeddings}
        self._matcher = EmbeddingMatcher(embeddings, self.tokenizer) if embeddings else None
        return self

    def placing_embeddings(self, text_encoder, chunks: list[TokenChunk]):
        """Context in which `text_encoder` sees the chunks' embedding vectors at their positions."""
        if self._matcher is None:
            return nullcontext()
        from t2i.extra_networks.embeddings import placing_embeddings

        return placing_embeddings(text_encoder, chunks, self.embeddings)

    def chunks(self, text: str) -> list[TokenChunk]:
        """The token chunks of one text: attention weights and BREAK apply; AND and [..] do not."""
        pieces = parse_attention(text) if has_syntax(text) else [(text, 1.0)]
        return chunk_tokens(self.tokenizer, pieces, comma_backtrack=self.comma_backtrack, chunk_length=self.chunk_length,
                            embeddings=self._matcher)

    def encode(self, text: str) -> Tensor:
        """(1, T, D) hidden states of one text (one AND part at one step), encoded once."""
        z = self._cache.get(text)
        if z is None:
            z = self._cache[text] = self._encode(self.chunks(text))
        return z

    def pooled(self, text: str) -> Tensor | None:
        """(1, P) pooled text embedding, for models conditioned on one besides the context (SDXL)."""
        return None

    @property
    def empty(self) -> Tensor:
        """(1, L, D) the empty prompt: what pads an unconditional context to a conditional one."""
        return self.encode("")

    @torch.no_grad()
    def _encode(self, chunks: list[TokenChunk]) -> Tensor:
        from t2i.models.text import text_hidden_states  # imports transformers: not at CLI start-up

        device = _device_dtype(self.text_encoder)[0]
        ids = torch.tensor([chunk.ids for chunk in chunks], device=device)  # (n, L)
        with self.placing_embeddings(self.text_encoder, chunks):
            z = text_hidden_states(self.text_encoder, ids, self.clip_skip)  # (n, L, D)
        weights = torch.tensor([chunk.weights for chunk in chunks])  # (n, L)
        if (weights != 1.0).any():  # all-1 weights leave the states bit-identical
            z = apply_weights(z, weights)
        return z.reshape(1, -1, z.shape[-1])  # chunks side by side along the sequence

    def conditioning(self, prompts: str | list[str], *, negative: bool = False,
                     steps: int | None = None) -> "PromptConditioning":
        """One prompt for every image, or one per image. `negative`: AND stays literal text."""
        return PromptConditioning(self, prompts, composable=not negative, steps=steps)


# --------------------------------------------------------------------------- over the steps


class _ScheduledText:
    """One prompt (or AND part) over the steps: the text that applies at each step."""

    def __init__(self, prompt: str):
        self.prompt = prompt
        self.static = not has_schedule(prompt)
        self._total: int | None = None
        self._ends: list[int] = []
        self._texts: list[str] = [prompt]

    def texts(self, total: int | None) -> list[str]:
        if self.static:
            return self._texts
        if total is None:
            raise ValueError(f"prompt {self.prompt!r} changes over the steps ([a:b:when] or [a|b]); "
                             f"give the number of steps (model evaluations) to pick its text")
        if total != self._total:
            entries = schedule(self.prompt, total)
            self._ends, self._texts, self._total = [end for end, _ in entries], [text for _, text in entries], total
        return self._texts

    def text_at(self, step: int, total: int | None) -> str:
        texts = self.texts(total)
        if self.static:
            return texts[0]
        k = bisect_left(self._ends, step + 1)  # step is 0-based, schedule counts from 1
        return texts[min(k, len(texts) - 1)]


def _split(prompt: str, composable: bool) -> list[tuple[_ScheduledText, float]]:
    if not has_syntax(prompt):
        return [(_ScheduledText(prompt), 1.0)]
    # <lora:...> tags are activated by the caller (extra networks); the text encoder never sees them.
    text, _ = extract_extra_networks(prompt)
    parts = split_and(text) if composable else [(text, 1.0)]
    return [(_ScheduledText(part), float(weight)) for part, weight in parts]


class PromptConditioning:
    """The conditioning of prompts (one for every image, or one per image) at each step.

    `at_step(i, total)` gives, per prompt, its AND parts as (hidden states (1, T, D), weight).
    `steps`: the number of model evaluations, if known; the denoiser also learns it per step.
    """

    def __init__(self, encoder: PromptEncoder, prompts: str | list[str], *, composable: bool = True,
                 steps: int | None = None):
        self.encoder = encoder
        self.prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not self.prompts or not all(isinstance(p, str) for p in self.prompts):
            raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}")
        self.steps = steps
        # an all-empty negative prompt is zeros for models trained that way (SDXL), as the web UI does
        self.zeroed = not composable and encoder.zero_empty_negative and all(p == "" for p in self.prompts)
        self.parts = [_split(prompt, composable) for prompt in self.prompts]
        self.static = all(text.static for parts in self.parts for text, _ in parts)
        # simple: one part of weight 1 per prompt, i.e. plain classifier-free guidance
        self.simple = all(len(parts) == 1 and parts[0][1] == 1.0 for parts in self.parts)
        if self.static:
            self.prepare(None)  # encode now, before sampling

    @property
    def needs_uncond(self) -> bool:
        """AND parts and part weights are defined relative to the unconditional prediction."""
        return not self.simple

    def prepare(self, total: int | None) -> None:
        """Encode every text that any step of a `total`-evaluation run uses."""
        for parts in self.parts:
            for text, _ in parts:
                for variant in text.texts(total if total is not None else self.steps):
                    self.encoder.encode(variant)

    def context(self, text: str) -> Tensor:
        """(1, T, D) hidden states of one of these prompts' texts."""
        z = self.encoder.encode(text)
        return torch.zeros_like(z) if self.zeroed else z

    def pooled(self, text: str) -> Tensor | None:
        """(1, P) pooled embedding of one of these prompts' texts, or None (models without one)."""
        p = self.encoder.pooled(text)
        return torch.zeros_like(p) if self.zeroed and p is not None else p

    def texts_at(self, step: int, total: int | None = None) -> tuple:
        """Per prompt, per part: (text, weight) at 0-based `step`; hashable, to key caches."""
        total = total if total is not None else self.steps
        return tuple(tuple((text.text_at(step, total), weight) for text, weight in parts) for parts in self.parts)

    def at_step(self, step: int, total: int | None = None) -> list[list[tuple[Tensor, float]]]:
        """Per prompt, per part: (hidden states (1, T, D), weight) at 0-based `step`."""
        return [[(self.context(text), weight) for text, weight in parts] for parts in self.texts_at(step, total)]

    def denoiser(self, unet, uncond: "PromptConditioning | None", cfg_scale: float, batch_size: int,
                 steps: int | None = None) -> "PromptDenoiser":
        """The guidance wrapper for these prompts (what `sampling.denoise` calls)."""
        if uncond is not None and not isinstance(uncond, PromptConditioning):
            raise ValueError("with a PromptConditioning cond, uncond must be one too (or None); build it with "
                             "encoder.conditioning(negative_prompt, negative=True)")
        return PromptDenoiser(unet, self, uncond, cfg_scale, batch_size, steps=steps if steps is not None else self.steps)

