"""What one fine-tuning step runs, as one nn.Module: text encoding (when the text encoder trains
or textual-inversion vectors are learned) and the UNet's prediction.

One module, because data-parallel training (accelerate's DistributedDataParallel) synchronises
the gradients of the parameters that took part in the wrapped module's forward: LoRA layers
inside the UNet, the text encoder, the learned token vectors and a hypernetwork's layers must
all be reached through this one `forward`. Frozen parameters stay out of the optimizer and of
the checkpoints (t2i.training.trainer: trained_only).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from t2i.diffusion.text_states import text_hidden_states


class TextEncoding:
    """How a model turns token ids into (context, pooled) for its UNet; the same function runs
    frozen once per caption (cached) or live in every step (when something in it trains)."""

    def __init__(self, model):
        self.sdxl = getattr(model, "text_encoder_2", None) is not None
        self.tokenizers = [model.tokenizer] + ([model.tokenizer_2] if self.sdxl else [])
        config = getattr(model, "config", None)
        self.clip_skip = int(getattr(config, "clip_skip", 1) or 1)

    def ids(self, captions: list[str]) -> list[Tensor]:
        """Token ids per text encoder: (B, L) each, padded as the tokenizer pads."""
        from t2i.models.text import tokenize

        return [tokenize(tok, captions) for tok in self.tokenizers]

    def __call__(self, encoders: list[nn.Module], ids: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        device = next(encoders[0].parameters()).device
        if not self.sdxl:
            return text_hidden_states(encoders[0], ids[0].to(device), self.clip_skip), None
        layer = -(self.clip_skip + 1)  # SDXL conditions on the penultimate layers (t2i.diffusion.sdxl)
        first = encoders[0](ids[0].to(device), output_hidden_states=True).hidden_states[layer]
        out = encoders[1](ids[1].to(device), output_hidden_states=True)
        return torch.cat([first, out.hidden_states[layer].to(first.dtype)], dim=-1), out.text_embeds


@contextmanager
def placing_vectors(encoder: nn.Module, vectors: Tensor, rows: Tensor, cols: Tensor, which: Tensor) -> Iterator[None]:
    """While inside, `encoder`'s token embeddings at (rows, cols) are `vectors[which]` (with their
    gradient): a forward hook on the embedding table, removed on exit."""
    def hook(module, args, output: Tensor) -> Tensor:
        out = output.clone()
        out[rows.to(out.device), cols.to(out.device)] = vectors[which.to(vectors.device)].to(out.dtype)
        return out

    handle = encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class FinetuneNet(nn.Module):
    """forward(groups) -> one prediction per group. A group is a dict with `zt` (B, C, h, w) noisy
    latents, `t` (B,) timesteps and either `context` (B, T, D) cached text states (+ `pooled` for
    SDXL) or `ids` (a list of (B, L) token ids per text encoder, + `ti`: (rows, cols, which)
    positions of learned vectors); SDXL groups also carry `time_ids` (B, 6)."""

    def __init__(self, model, extras: dict[str, nn.Module] | None = None):
        super().__init__()
        self.unet = model.unet
        self.text_encoders = nn.ModuleList([model.text_encoder] + ([model.text_encoder_2]
                                                                   if getattr(model, "text_encoder_2", None) else []))
        self.extras = nn.ModuleDict(extras or {})
        self.text = TextEncoding(model)

    def encode(self, ids: list[Tensor], ti=None) -> tuple[Tensor, Tensor | None]:
        tokens = self.extras["tokens"] if "tokens" in self.extras else None
        if ti is None or tokens is None:
            return self.text(list(self.text_encoders), ids)
        rows, cols, which = ti
        with placing_vectors(self.text_encoders[0], tokens.vectors[0], rows, cols, which):
            if len(self.text_encoders) == 1:
                return self.text(list(self.text_encoders), ids)
            with placing_vectors(self.text_encoders[1], tokens.vectors[1], rows, cols, which):
                return self.text(list(self.text_encoders), ids)

    def forward(self, groups: list[dict]) -> list[Tensor]:
        out = []
        for group in groups:
            if "context" in group:
                context, pooled = group["context"], group.get("pooled")
            else:
                context, pooled = self.encode(group["ids"], group.get("ti"))
            added = None
            if self.text.sdxl:
                added = {"text_embeds": pooled, "time_ids": group["time_ids"]}
            unet_dtype = next(self.unet.parameters()).dtype
            out.append(self.unet(group["zt"].to(unet_dtype), group["t"], encoder_hidden_states=context.to(unet_dtype),
                                 added_cond_kwargs=added).sample)
        return out
