"""SDXL text conditioning with the web UI's prompt syntax (Podell et al. 2023, "SDXL: Improving
Latent Diffusion Models for High-Resolution Image Synthesis").

SDXL's UNet is conditioned on three things, where SD 1.x/2.x have only the first:

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

import torch
from torch import Tensor

from t2i.diffusion.conditioning import COMMA_BACKTRACK, PromptEncoder, TokenChunk, apply_weights
from t2i.diffusion.sampling import _device_dtype

__all__ = ["SDXLPromptEncoder", "time_ids"]


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
