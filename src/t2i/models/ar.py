"""An autoregressive transformer over VQGAN codes (Esser et al. 2021, stage 2).

An image is its VQGAN code grid read in raster order, (h, w) -> a sequence of h·w tokens;
transformers' `GPT2LMHeadModel` learns p(code_t | condition, code_<t). Its vocabulary is
exactly the codebook, so the head never predicts anything but a code.

The condition is a prefix of tokens in front of the codes, embedded by a separate table
(`cond_embed`) and fed with the codes' embeddings through `inputs_embeds`:
- "none":  one BOS token;
- "class": one class token (`class_names` gives the names);
- "text":  the caption's CLIP-BPE ids (the real CLIP tokenizer, `t2i.models.text`), padded with
  EOS to `text_max_length`. CLIP has 49,408 tokens: a full-width row for each would dwarf a small
  transformer, so the table is factorised (49,408 × text_embed_dim, then a linear map to the
  model width); rows of words never seen in training stay at their initial values.
Keeping condition tokens out of the GPT vocabulary means sampling never has to mask them.

Sampling (`sample_codes`): temperature, then top-k, then top-p (nucleus, Holtzman et al. 2020);
the next code is drawn by inverse-CDF from one uniform per image taken from that image's own
torch.Generator, so image i of a batch equals a single run with its generator, and sampling with
cached keys/values (one new token per step) and without (the whole sequence recomputed every
step) consume the same random numbers and give the same codes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from t2i.config import ClassNames, Depth, Fraction, Heads, Width, between, check_model_size
from t2i.errors import ModelLoadError
from t2i.models.common import FamilyFileModel
from t2i.models.sizes import gpt_params
from t2i.models.text import CLIP_VOCAB_SIZE, load_tokenizer, tokenize

CONDITIONINGS = ("none", "class", "text")
CodeSide = Annotated[int, between(0, 1024)]  # 0: not set yet


@dataclass
class ARConfig:
    num_codes: Annotated[int, between(0, 1 << 20)] = 0  # the VQGAN's codebook size (0: the recipe fills it)
    code_shape: tuple[CodeSide, CodeSide] = (0, 0)  # the VQGAN's code grid (h, w), e.g. (16, 16); same
    conditioning: Literal["none", "class", "text"] = "none"
    class_names: ClassNames = ()  # class-conditional: index = class id
    text_max_length: Annotated[int, between(2, 1024)] = 24  # text-conditional: CLIP tokens in the prefix, incl. BOS/EOS
    text_embed_dim: Width = 32  # width of the factorised CLIP-token table
    n_embd: Width = 256
    n_layer: Depth = 6
    n_head: Heads = 8
    dropout: Fraction = 0.0

    def __post_init__(self):
        self.code_shape = tuple(self.code_shape)
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        check_model_size("autoregressive transformer", self.approx_params())

    def approx_params(self) -> int:
        gpt = gpt_params(self.n_embd, self.n_layer, self.num_codes, self.prefix_len + self.seq_len)
        if self.conditioning == "text":  # the factorised CLIP-token table
            return gpt + CLIP_VOCAB_SIZE * self.text_embed_dim + self.text_embed_dim * self.n_embd
        return gpt + max(1, len(self.class_names)) * self.n_embd

    @property
    def seq_len(self) -> int:
        return self.code_shape[0] * self.code_shape[1]

    @property
    def prefix_len(self) -> int:
        return self.text_max_length if self.conditioning == "text" else 1


def build_gpt(config: ARConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt_config = GPT2Config(
        vocab_size=config.num_codes,
        n_positions=config.prefix_len + config.seq_len,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=None,  # no special tokens in the code vocabulary: the prefix carries them
        eos_token_id=None,
    )
    return GPT2LMHeadModel(gpt_config)


class CodeTransformer(FamilyFileModel, nn.Module):
    """GPT-2 over (condition prefix, codes). `loss = model.loss(cond_ids, codes)`.
    Saved as one safetensors file, the config embedded (t2i.checkpoints.family_file)."""

    kind, config_class = "ar", ARConfig

    def __init__(self, config: ARConfig):
        super().__init__()
        if config.num_codes < 2 or min(config.code_shape) < 1:
            raise ValueError(f"num_codes ({config.num_codes}) and code_shape ({config.code_shape}) must be set "
                             f"to the VQGAN's codebook size and code grid")
        if config.conditioning == "class" and not config.class_names:
            raise ValueError("class-conditional models need class_names (one name per class id)")
        self.config = config
        self.gpt = build_gpt(config)
        if config.conditioning == "text":
            self.cond_embed = nn.Sequential(nn.Embedding(CLIP_VOCAB_SIZE, config.text_embed_dim),
                                            nn.Linear(config.text_embed_dim, config.n_embd, bias=False))
        else:
            n = len(config.class_names) if config.conditioning == "class" else 1  # 1: the BOS token
            self.cond_embed = nn.Embedding(n, config.n_embd)
        self._tokenizer = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- conditions ----------------------------------------------------------------------------
    def condition_ids(self, conditions: Sequence[str | int | None]) -> torch.Tensor:
        """(B, prefix_len) prefix token ids: captions for text, class names or ids for class,
        anything (only the count matters) for unconditional models."""
        cfg = self.config
        if cfg.conditioning == "none":
            return torch.zeros(len(conditions), 1, dtype=torch.long)
        if cfg.conditioning == "class":
            ids = []
            for c in conditions:
                if isinstance(c, int) and 0 <= c < len(cfg.class_names):
                    ids.append(c)
                elif isinstance(c, str) and c in cfg.class_names:
                    ids.append(cfg.class_names.index(c))
                else:
                    raise ValueError(f"unknown class {c!r}; use a name from {list(cfg.class_names)} "
                                     f"or an id below {len(cfg.class_names)}")
            return torch.tensor(ids, dtype=torch.long).view(-1, 1)
        if not all(isinstance(c, str) for c in conditions):
            raise ValueError("a text-conditional model needs a caption (str) per image")
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(max_length=cfg.text_max_length)
        return tokenize(self._tokenizer, list(conditions))

    # -- the model -----------------------------------------------------------------------------
    def embed(self, cond_ids: torch.Tensor | None, codes: torch.Tensor) -> torch.Tensor:
        """(B, P) prefix ids and (B, t) codes -> (B, P + t, C) input embeddings (no positions:
        GPT-2 adds them, counting from the cache length when there is a cache)."""
        parts = [] if cond_ids is None else [self.cond_embed(cond_ids.to(self.device))]
        parts.append(self.gpt.transformer.wte(codes.to(self.device)))
        return torch.cat(parts, dim=1)

    def forward(self, cond_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, P) and (B, T) -> (B, T, num_codes) logits, row t predicting code t."""
        self._check(cond_ids, codes)
        hidden = self.embed(cond_ids, codes[:, :-1])  # (B, P + T - 1, C)
        return self.gpt(inputs_embeds=hidden, use_cache=False).logits[:, cond_ids.shape[1] - 1:]

    def loss(self, cond_ids: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        codes = codes.reshape(codes.shape[0], -1).to(self.device)
        logits = self(cond_ids, codes)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1))

    def _check(self, cond_ids: torch.Tensor, codes: torch.Tensor) -> None:
        cfg = self.config
        if cond_ids.dim() != 2 or cond_ids.shape[1] != cfg.prefix_len:
            raise ValueError(f"condition ids must be (batch, {cfg.prefix_len}), got {tuple(cond_ids.shape)}; "
                             f"make them with model.condition_ids(...)")
        if codes.shape[1] != cfg.seq_len:
            raise ValueError(f"codes must hold {cfg.seq_len} = {cfg.code_shape} tokens per image, got {codes.shape[1]}")

    # -- files ---------------------------------------------------------------------------------
    # GPT-2 ties its output head to the token embedding (one tensor, two names); safetensors
    # refuses shared tensors, so the file holds it once, under the embedding's name
    TIED = ("gpt.lm_head.weight", "gpt.transformer.wte.weight")

    def state_for_file(self) -> dict[str, torch.Tensor]:
        state = self.state_dict()
        state.pop(self.TIED[0])
        return state

    @classmethod
    def state_from_file(cls, tensors: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
        if cls.TIED[0] in tensors:
            raise ModelLoadError(f"{path} stores {cls.TIED[0]} separately; t2i writes it once, tied to "
                                 f"{cls.TIED[1]}: this file was not written by t2i")
        if cls.TIED[1] in tensors:
            tensors[cls.TIED[0]] = tensors[cls.TIED[1]]
        return tensors


# -- sampling hyper-parameters -------------------------------------------------------------------
def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by T: T < 1 sharpens the distribution, T > 1 flattens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; use top_k=1 for greedy decoding")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (k = 0: keep all); the rest become -inf."""
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {k}")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most probable tokens whose probability mass
    reaches p (p = 1: keep all); the rest become -inf."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1:
        return logits
    probs = logits.float().softmax(-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the strictly more probable tokens
    keep_sorted = mass_before < p  # the first token always stays (mass_before = 0)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def next_token_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits -> (B, V) sampling probabilities after temperature, top-k and top-p."""
    logits = top_p_filter(top_k_filter(apply_temperature(logits.float(), temperature), top_k), top_p)
    return logits.softmax(-1)


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row by inverse CDF, row i from one uniform of generators[i] (CPU)."""
    cdf = probs.detach().double().cpu().cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    # right=True picks the first token whose cdf exceeds u·total, never a zero-probability one
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def sample_codes(model: CodeTransformer, cond_ids: torch.Tensor, generators: Sequence[torch.Generator], *,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, use_cache: bool = True,
                 prefix_codes: torch.Tensor | None = None, callback=None) -> torch.Tensor:
    """Sample (B, seq_len) codes. `prefix_codes` (B, t) are kept and continued (completion).

    use_cache=True feeds one new token per step and reuses the keys/values of the earlier ones
    (past_key_values); False recomputes the whole sequence each step (the slow reference)."""
    cfg = model.config
    b = cond_ids.shape[0]
    if len(generators) != b:
        raise ValueError(f"need one generator per image: {b} conditions, {len(generators)} generators")
    if cond_ids.shape[1] != cfg.prefix_len:
        raise ValueError(f"condition ids must be (batch, {cfg.prefix_len}); make them with model.condition_ids")
    codes = torch.zeros(b, 0, dtype=torch.long) if prefix_codes is None else prefix_codes.reshape(b, -1).long().cpu()
    if codes.shape[1] > cfg.seq_len:
        raise ValueError(f"prefix of {codes.shape[1]} codes is longer than the sequence ({cfg.seq_len})")
    if codes.numel() and (codes.min() < 0 or codes.max() >= cfg.num_codes):
        raise ValueError(f"prefix codes must lie in [0, {cfg.num_codes}), got [{codes.min()}, {codes.max()}]")
    next_token_probs(torch.zeros(1, 2), temperature, top_k, top_p)  # validate before the first step
    was_training = model.training
    model.eval()  # no dropout while sampling; the caller's mode comes back afterwards
    try:
        return _sample_loop(model, cond_ids, codes, generators, temperature, top_k, top_p, use_cache, callback)
    finally:
        model.train(was_training)


def _sample_loop(model, cond_ids, codes, generators, temperature, top_k, top_p, use_cache, callback):
    cfg = model.config
    past = None
    for t in range(codes.shape[1], cfg.seq_len):
        if use_cache and past is not None:
            out = model.gpt(inputs_embeds=model.embed(None, codes[:, -1:]), past_key_values=past, use_cache=True)
        else:
            out = model.gpt(inputs_embeds=model.embed(cond_ids, codes), use_cache=use_cache)
        past = out.past_key_values if use_cache else None
        probs = next_token_probs(out.logits[:, -1], temperature, top_k, top_p)
        codes = torch.cat([codes, draw(probs, generators).unsqueeze(1)], dim=1)
        if callback is not None:
            callback(t + 1, cfg.seq_len)
    return codes


def complete_codes(model: CodeTransformer, cond_ids: torch.Tensor, codes: torch.Tensor, keep_rows: int,
                   generators: Sequence[torch.Generator], **sampling) -> torch.Tensor:
    """Image completion: keep the first `keep_rows` rows of each (B, h, w) code grid (e.g. the top
    half: h // 2) and sample the rest; returns (B, h, w)."""
    h, w = model.config.code_shape
    if codes.shape[1:] != (h, w):
        raise ValueError(f"codes must be (batch, {h}, {w}), got {tuple(codes.shape)}")
    if not 0 <= keep_rows <= h:
        raise ValueError(f"keep_rows must be in [0, {h}], got {keep_rows}")
    prefix = codes[:, :keep_rows].reshape(codes.shape[0], -1)
    return sample_codes(model, cond_ids, generators, prefix_codes=prefix, **sampling).view(-1, h, w)


@torch.no_grad()
def generate_images(model: CodeTransformer, vqgan, conditions: Sequence[str | int | None], seeds: Sequence[int],
                    **sampling) -> torch.Tensor:
    """Conditions and seeds (one each per image) -> (B, 3, H, W) images in [-1, 1] via `vqgan`."""
    if len(conditions) != len(seeds):
        raise ValueError(f"need one seed per condition, got {len(conditions)} conditions and {len(seeds)} seeds")
    if vqgan.num_codes != model.config.num_codes or tuple(vqgan.code_shape) != model.config.code_shape:
        raise ValueError(f"the transformer was trained on {model.config.num_codes} codes in a "
                         f"{model.config.code_shape} grid, the VQGAN has {vqgan.num_codes} in {vqgan.code_shape}: "
                         f"use the matching first stage")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    codes = sample_codes(model, model.condition_ids(conditions), generators, **sampling)
    vq_device = next(vqgan.parameters()).device
    return vqgan.decode_codes(codes.view(-1, *model.config.code_shape).to(vq_device))
