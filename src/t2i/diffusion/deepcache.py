"""DeepCache: reuse a UNet's deep features across denoising steps.

Ma, Fang & Wang 2023, "DeepCache: Accelerating Diffusion Models for Free". Between adjacent
steps the deep (low-resolution) features of a diffusion UNet change little, while the shallow
skip branch carries the step-specific detail. So every `interval`-th model evaluation runs the
whole UNet and caches the input of its last `depth` up-blocks (the output of the deeper up path);
the evaluations in between run only the shallow branch: time embedding, conv_in, the first
`depth` down-blocks, then the last `depth` up-blocks on the cached deep feature with fresh skip
connections, and the output convolution.

    with DeepCacheUNet(unet, interval=3) as cached:
        latents = denoise(cached, scheduler, noise, cond, uncond, steps=20, ...)

A wrapper around the diffusers `UNet2DConditionModel`, not a patch: full evaluations call the
real module (a forward hook on one up-block keeps the feature); the shallow evaluations call its
submodules in the order its own `forward` does. Start a new wrapper for every sampling run (the
cache holds one run's feature). interval 1 is the plain UNet.
"""
from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

from torch import Tensor, nn


class DeepCacheUNet(nn.Module):
    """A diffusers UNet2DConditionModel that runs in full only every `interval` calls."""

    def __init__(self, unet: nn.Module, interval: int, depth: int = 1):
        super().__init__()
        if interval < 1:
            raise ValueError(f"DeepCache interval must be >= 1 (1 = no caching), got {interval}")
        n_up = len(getattr(unet, "up_blocks", ()))
        if not 1 <= depth < n_up:
            raise ValueError(f"DeepCache depth must be between 1 and {n_up - 1} for this UNet, got {depth}")
        config = unet.config
        if config.center_input_sample or config.addition_embed_type == "image_hint" \
                or getattr(unet, "class_embedding", None) is not None:
            raise ValueError("DeepCache supports Stable Diffusion-style UNets (no class embeddings, centred input "
                             "or image hints)")
        self.unet, self.interval, self.depth = unet, int(interval), int(depth)
        self.calls = 0  # model evaluations so far
        self.full_calls = 0
        self.cached: Tensor | None = None  # input of up_blocks[-depth] at the last full evaluation
        self._hook = None
        if self.interval > 1:
            self._hook = unet.up_blocks[-depth - 1].register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        self.cached = output

    def close(self) -> None:
        """Remove the hook from the UNet and drop the cached feature."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.cached = None

    def __enter__(self) -> "DeepCacheUNet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, **kwargs):
        unsupported = sorted(k for k, v in kwargs.items()
                             if v is not None and k not in ("added_cond_kwargs", "cross_attention_kwargs"))
        if unsupported:
            raise ValueError(f"DeepCache does not support {', '.join(unsupported)} (ControlNet, adapters, masks); "
                             f"turn it off for this run")
        full = self.interval == 1 or self.calls % self.interval == 0 or self.cached is None \
            or self.cached.shape[0] != sample.shape[0]
        self.calls += 1
        if full:
            self.full_calls += 1
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        return SimpleNamespace(sample=self._shallow(sample, timestep, encoder_hidden_states, **kwargs))

    def _shallow(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, added_cond_kwargs=None,
                 cross_attention_kwargs=None) -> Tensor:
        """The UNet's forward for the shallow branch only, on the cached deep feature."""
        unet = self.unet
        forward_upsample_size = any(dim % 2**unet.num_upsamplers for dim in sample.shape[-2:])

        t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
        emb = unet.time_embedding(t_emb, None)
        aug_emb = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                                     added_cond_kwargs=added_cond_kwargs)
        emb = emb + aug_emb if aug_emb is not None else emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        encoder_hidden_states = unet.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs)
        attention = {"encoder_hidden_states": encoder_hidden_states, "attention_mask": None,
                     "cross_attention_kwargs": cross_attention_kwargs, "encoder_attention_mask": None}

        hidden = unet.conv_in(sample)
        skips = (hidden,)
        for block in unet.down_blocks[:self.depth]:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=emb, **attention)
            else:
                hidden, res = block(hidden_states=hidden, temb=emb)
            skips += res
        up_blocks = unet.up_blocks[-self.depth:]
        # the last `depth` up-blocks consume the first skip connections (conv_in's first); the
        # downsampled output of the last shallow down-block belongs to the deep path
        skips = skips[:sum(len(block.resnets) for block in up_blocks)]

        hidden = self.cached
        for i, block in enumerate(up_blocks):
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            final = i == len(up_blocks) - 1
            upsample_size = skips[-1].shape[2:] if not final and forward_upsample_size else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               upsample_size=upsample_size, **attention)
            else:
                hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res,
                               upsample_size=upsample_size)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


def deep_cache(unet: nn.Module, interval: int):
    """A context manager giving the UNet to sample with: `unet` itself for interval 1, else a
    DeepCacheUNet that is closed (hook removed) on exit."""
    if interval == 1:
        return nullcontext(unet)
    if not hasattr(unet, "up_blocks"):
        raise ValueError(f"DeepCache needs a diffusers UNet2DConditionModel, not a {type(unet).__name__} "
                         f"(inpainting and wrapped UNets are not supported); use deepcache_interval 1")
    return DeepCacheUNet(unet, interval)
