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
"""
from __future__ import annotations

from bisect import bisect_left
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from t2i.diffusion.sampling import CFGDenoiser, _device_dtype
from t2i.prompts import (
    BREAK_WEIGHT,
    extract_extra_networks,
    has_schedule,
    has_syntax,
    parse_attention,
    schedule,
    split_and,
)

__all__ = ["COMMA_BACKTRACK", "TokenChunk", "chunk_tokens", "PromptEncoder", "PromptConditioning", "PromptDenoiser"]

COMMA_BACKTRACK = 20  # the web UI's default "comma padding backtrack", in tokens


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenChunk:
    """One text encoder input: BOS, up to `chunk_length` tokens, EOS, padding."""

    ids: tuple[int, ...]  # (chunk_length + 2,)
    weights: tuple[float, ...]  # (chunk_length + 2,) 1.0 at BOS, EOS and padding
    # textual-inversion embeddings: (index in ids of the first of its vectors, embedding name)
    fixes: tuple[tuple[int, str], ...] = ()


def chunk_length_for(tokenizer, text_encoder=None) -> int:
    """Tokens per chunk without BOS/EOS: model_max_length − 2, capped by the encoder's positions."""
    limit = tokenizer.model_max_length
    positions = getattr(getattr(text_encoder, "config", None), "max_position_embeddings", None)
    if positions is not None and (limit is None or limit > positions):
        limit = positions  # tokenizers saved without a limit report a huge model_max_length
    if limit is None or limit < 3:
        raise ValueError(f"the tokenizer's model_max_length is {limit}; set it to the text encoder's "
                         f"context length (77 for Stable Diffusion)")
    return int(limit) - 2


def chunk_tokens(tokenizer, pieces: list[tuple[str, float]], *, comma_backtrack: int = COMMA_BACKTRACK,
                 chunk_length: int | None = None, embeddings=None) -> list[TokenChunk]:
    """Tokenize `parse_attention` output into chunks of `chunk_length` tokens (default
    model_max_length − 2), each with BOS, EOS and padding; ("BREAK", -1.0) closes a chunk.

    Always at least one chunk (an empty prompt is BOS, EOS, padding). The layout equals the
    tokenizer's own `padding="max_length"` output for a prompt that fits in one chunk.
    `embeddings` (an EmbeddingMatcher): a textual-inversion name becomes its N vectors'
    placeholders, which count toward the chunk and never straddle two chunks (as in the web UI).
    """
    size = chunk_length or chunk_length_for(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    # verbose=False: pieces longer than model_max_length are expected here, not an error.
    piece_ids = tokenizer([text for text, _ in pieces], add_special_tokens=False, truncation=False,
                          verbose=False).input_ids
    chunks: list[TokenChunk] = []
    ids: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, str]] = []  # (index in `ids`, embedding name) of the current chunk
    last_comma = -1  # index in `ids` of the last comma of the current chunk

    def close() -> None:
        nonlocal last_comma
        n_pad = size - len(ids)
        chunks.append(TokenChunk(tuple([bos, *ids, eos] + [pad] * n_pad), tuple([1.0, *weights, 1.0] + [1.0] * n_pad),
                                 tuple((1 + at, name) for at, name in fixes)))  # 1 +: after BOS
        ids.clear()
        weights.clear()
        fixes.clear()
        last_comma = -1

    for (text, weight), tokens in zip(pieces, piece_ids):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            close()
            continue
        i = 0
        while i < len(tokens):
            token = tokens[i]
            found = embeddings.match(tokens, i) if embeddings is not None else None
            if token == comma:
                last_comma = len(ids)
            elif len(ids) == size and last_comma != -1 and len(ids) - last_comma <= comma_backtrack:
                # A full chunk with a comma near its end: move the words after the comma on, so
                # that a phrase is not cut in two between chunks.
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                moved_fixes = [(at - cut, name) for at, name in fixes if at >= cut]
                del ids[cut:], weights[cut:]
                fixes[:] = [(at, name) for at, name in fixes if at < cut]
                close()
                ids.extend(moved_ids)
                weights.extend(moved_weights)
                fixes.extend(moved_fixes)
            if len(ids) == size:
                close()
            if found is None:
                ids.append(token)
                weights.append(weight)
                i += 1
                continue
            embedding, name_tokens = found
            if embedding.count > size:
                raise ValueError(f"embedding {embedding.name!r} has {embedding.count} vectors, more than the {size} "
                                 f"tokens of a prompt chunk; it cannot be used with this model")
            if len(ids) + embedding.count > size:
                close()
            fixes.append((len(ids), embedding.name))
            ids.extend([embeddings.placeholder] * embedding.count)
            weights.extend([weight] * embedding.count)
            i += name_tokens
    if ids or not chunks:
        close()
    return chunks


def apply_weights(z: Tensor, weights: Tensor) -> Tensor:
    """(n, L, D) hidden states × (n, L) token weights, each chunk rescaled to its old mean."""
    z32 = z.float()
    before = z32.mean(dim=(1, 2), keepdim=True)
    weighted = z32 * weights.to(z.device, torch.float32)[..., None]
    after = weighted.mean(dim=(1, 2), keepdim=True)
    return (weighted * (before / after)).to(z.dtype)


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


# --------------------------------------------------------------------------- guidance


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
