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

This module holds the encoders (SDXL's two text encoders included) and the per-step conditioning;
chunking and weights are in t2i.diffusion.prompt_tokens, the guidance wrapper (AND, padding) in
t2i.diffusion.prompt_guidance, and what a text encoder hands the UNet (clip skip, textual-inversion
vectors) in t2i.diffusion.text_states. `PromptEncoder.from_model` gives SDXL models (a second text
encoder) the `SDXLPromptEncoder`; the two classes live together so that choice needs no import cycle.

SDXL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image
Synthesis"): its UNet is conditioned on three things, where SD 1.x/2.x have only the first:

- context (cross-attention): the penultimate hidden states of CLIP ViT-L (768) and of OpenCLIP
  bigG (1280), concatenated per token into 2048 channels. Clip skip N takes N − 1 layers more
  off both (no final layer norm, as SDXL was trained).
- pooled text embedding: OpenCLIP bigG's projected EOS state (1280), taken from the prompt's
  first 75-token chunk, unweighted, as the web UI does for long prompts.
- size conditioning ("time ids"): original size (h, w), crop top-left (top, left), target size
  (h, w). As both the web UI and diffusers do by default, original and target are the size being
  generated and the crop is (0, 0); the denoiser reads the size off the latents, so img2img,
  inpainting and the hires fix's second pass get their own size without being told.

Attention weights apply to each encoder's states separately (each rescaled to its own mean), as
in the web UI. The two encoders share CLIP's vocabulary and differ only in padding (EOS for
ViT-L, "!" for bigG), so the chunks are tokenized once and re-padded for the second encoder.

An empty negative prompt is all zeros (context and pooled), not the encoding of "": SDXL
pipelines set `force_zeros_for_empty_prompt`, and the web UI zeroes a negative prompt batch that
is all empty strings too. Padding a longer context still uses the real encoding of "".
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
from t2i.diffusion.text_states import EmbeddingMatcher, placing_embeddings, text_hidden_states
from t2i.prompts import extract_extra_networks, has_schedule, has_syntax, parse_attention, schedule, split_and

__all__ = ["COMMA_BACKTRACK", "TokenChunk", "chunk_tokens", "apply_weights", "PromptEncoder", "SDXLPromptEncoder",
           "PromptConditioning", "PromptDenoiser"]


# --------------------------------------------------------------------------- encoding


class PromptEncoder:
    """Text → (1, n_chunks · (chunk_length + 2), D) hidden states, cached per text."""

    def __init__(self, tokenizer, text_encoder, *, comma_backtrack: int = COMMA_BACKTRACK, clip_skip: int = 1):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.comma_backtrack = int(comma_backtrack)
        self.clip_skip = int(clip_skip)  # the web UI's "Clip skip" (see t2i.diffusion.text_states.text_hidden_states)
        self.chunk_length = chunk_length_for(tokenizer, text_encoder)
        self._cache: dict[str, Tensor] = {}
        self.embeddings: dict = {}  # textual-inversion embeddings by name (see use_embeddings)
        self._matcher = None

    # SDXL zeroes an empty negative prompt instead of encoding "" (see SDXLPromptEncoder)
    zero_empty_negative = False

    @classmethod
    def from_model(cls, model, *, embeddings=None, **kwargs) -> "PromptEncoder":
        """For a LatentDiffusion (anything with `.tokenizer` and `.text_encoder`); an SDXL model
        (a second text encoder) gets the SDXLPromptEncoder. `clip_skip` defaults to the model's
        config (1 where it has none). `embeddings`: textual-inversion embeddings prompts may name."""
        kwargs.setdefault("clip_skip", getattr(getattr(model, "config", None), "clip_skip", 1))
        if cls is PromptEncoder and getattr(model, "text_encoder_2", None) is not None:
            encoder = SDXLPromptEncoder.from_model(model, **kwargs)  # below: base and subclass share a module
        else:
            encoder = cls(model.tokenizer, model.text_encoder, **kwargs)
        return encoder.use_embeddings(embeddings) if embeddings else encoder

    def use_embeddings(self, embeddings) -> "PromptEncoder":
        """Let prompts name these textual-inversion embeddings (read by t2i.extra_networks.embeddings;
        here anything with `name` and `for_width`, see t2i.diffusion.text_states); set before the
        first encoding, since encodings are cached per text."""
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


# --------------------------------------------------------------------------- SDXL


def time_ids(height: int, width: int, crop: tuple[int, int] = (0, 0)) -> list[int]:
    """SDXL's six size-conditioning numbers: original (h, w), crop (top, left), target (h, w)."""
    return [height, width, crop[0], crop[1], height, width]


def repad(ids: Tensor, pad: int) -> Tensor:
    """(n, L) chunk ids padded with EOS after their EOS -> padded with `pad` (the web UI's rule:
    everything after the first EOS of a chunk)."""
    eos = ids[:, -1:]  # a chunk always ends with EOS or padding, which is EOS for the first tokenizer
    after = (ids == eos).int().cumsum(dim=1) > 1  # positions after the first EOS
    return ids.masked_fill(after, pad)


class SDXLPromptEncoder(PromptEncoder):
    """Text → (1, T, 768 + 1280) context and (1, 1280) pooled embedding, each cached per text;
    `unet_conditions` adds the size conditioning for a batch of UNet rows."""

    zero_empty_negative = True

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2, *, vae_scale_factor: int,
                 clip_skip: int = 1, crop: tuple[int, int] = (0, 0), comma_backtrack: int = COMMA_BACKTRACK):
        super().__init__(tokenizer, text_encoder, comma_backtrack=comma_backtrack, clip_skip=clip_skip)
        if clip_skip < 1:
            raise ValueError(f"clip_skip must be >= 1 (1 = SDXL's own penultimate layer), got {clip_skip}")
        for name, tok in (("tokenizer", tokenizer), ("tokenizer_2", tokenizer_2)):
            if tok.eos_token_id is None:
                raise ValueError(f"the SDXL {name} has no EOS token; it must be a CLIP tokenizer")
        if tokenizer.pad_token_id not in (None, tokenizer.eos_token_id) or tokenizer.eos_token_id != tokenizer_2.eos_token_id:
            raise ValueError("SDXL's first tokenizer must pad with EOS and share its EOS with the second (CLIP's vocabulary)")
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self.pad_2 = tokenizer_2.pad_token_id if tokenizer_2.pad_token_id is not None else tokenizer_2.eos_token_id
        self.layer = -(clip_skip + 1)  # index into hidden_states (which start with the embeddings)
        self.vae_scale_factor = int(vae_scale_factor)
        self.crop = tuple(crop)
        self._pooled: dict[str, Tensor] = {}

    @classmethod
    def from_model(cls, model, **kwargs) -> "SDXLPromptEncoder":
        """For a StableDiffusionModel of family "sdxl"."""
        kwargs.setdefault("clip_skip", getattr(model.config, "clip_skip", 1))  # a caller's (pipelines') wins
        return cls(model.tokenizer, model.text_encoder, model.tokenizer_2, model.text_encoder_2,
                   vae_scale_factor=model.vae_scale_factor, **kwargs)

    def encode(self, text: str) -> Tensor:
        """(1, T, 2048-ish) context of one text, encoded once (with its pooled embedding)."""
        z = self._cache.get(text)
        if z is None:
            z, self._pooled[text] = self._encode_pair(self.chunks(text))
            self._cache[text] = z
        return z

    def pooled(self, text: str) -> Tensor:
        """(1, P) pooled embedding of one text: its first chunk's, unweighted."""
        if text not in self._pooled:
            self.encode(text)
        return self._pooled[text]

    @torch.no_grad()
    def _encode_pair(self, chunks: list[TokenChunk]) -> tuple[Tensor, Tensor]:
        device = _device_dtype(self.text_encoder)[0]
        ids = torch.tensor([chunk.ids for chunk in chunks])  # (n, L)
        weights = torch.tensor([chunk.weights for chunk in chunks])  # (n, L)
        with self.placing_embeddings(self.text_encoder, chunks):  # textual inversion: clip_l vectors
            first = self.text_encoder(ids.to(device), output_hidden_states=True).hidden_states[self.layer]
        device_2 = _device_dtype(self.text_encoder_2)[0]
        with self.placing_embeddings(self.text_encoder_2, chunks):  # and clip_g vectors
            out = self.text_encoder_2(repad(ids, self.pad_2).to(device_2), output_hidden_states=True)
        second, pooled = out.hidden_states[self.layer], out.text_embeds[:1]  # (n, L, D2), (1, P)
        if (weights != 1.0).any():  # per encoder, each rescaled to its own mean (the web UI's emphasis)
            first, second = apply_weights(first, weights), apply_weights(second, weights)
        z = torch.cat([first, second.to(first.device, first.dtype)], dim=-1)  # (n, L, D1 + D2)
        return z.reshape(1, -1, z.shape[-1]), pooled

    def unet_conditions(self, pooled: Tensor, latent_size: tuple[int, int]) -> dict:
        """SDXL UNet's `added_cond_kwargs` for rows whose pooled embeddings are `pooled` (N, P),
        sampling latents of `latent_size` (h, w): the same size conditioning for every row."""
        height, width = (int(s) * self.vae_scale_factor for s in latent_size)
        ids = torch.tensor([time_ids(height, width, self.crop)], dtype=pooled.dtype, device=pooled.device)
        return {"text_embeds": pooled, "time_ids": ids.expand(pooled.shape[0], -1)}
