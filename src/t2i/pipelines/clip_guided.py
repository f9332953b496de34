"""CLIP-guided generation (Taming Transformers' "text-to-image optimization via CLIP", VQGAN-CLIP):
no sampler, no denoiser; a latent is optimised with Adam so that its decoded image's CLIP
embedding points the same way as the prompt's.

    scorer = load_scorer(None)                               # t2i's bundled CLIP
    images, history = clip_guided(ldm.decode_latents, (4, 16, 16), scorer, "a red circle",
                                  n=2, seed=0, steps=50, lr=0.1)

Each step decodes the latent through the model's decoder and scores several randomly shifted and
cropped views of the image (VQGAN-CLIP's "cutouts"): a change that only fools CLIP at one exact
pixel alignment does not survive them, so the optimisation has to change what the image shows.
`history` holds the mean cosine similarity of the views at each step (before its update).

That is `--clip-guidance-method optimize`. The default, `diffusion-x0` (or `diffusion`), samples
the diffusion model itself with an empty prompt and steers it with the same views' CLIP gradient
instead (t2i.pipelines.clip_guided_diffusion): its images stay scenes, the optimised latent's do not.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from t2i.errors import ParamError
from t2i.evaluate.clip_scorer import load_scorer
from t2i.metadata import build_infotext
from t2i.models.clip import IMAGE_MEAN, IMAGE_STD
from t2i.models.common import to_pil_images
from t2i.outputs import make_grid
from t2i.pipelines.clip_guided_diffusion import (
    DEFAULT_SAMPLER,
    DEFAULT_SCALE,
    clip_guided_diffusion,
)
from t2i.pipelines.clip_guided_diffusion import DEFAULT_STEPS as DIFFUSION_STEPS
from t2i.pipelines.sample_params import SampleParams

DEFAULT_STEPS = 50
DEFAULT_LR = 0.1
INITS = ("noise", "blank")  # the latent's start: N(0, 1) per seed, or all zeros (the decoder's "average" image)
CUTOUTS = 8  # augmented views per image and step
MIN_CROP = 0.75  # a view covers at least this fraction of the image side


def check_options(steps: int, lr: float, init: str) -> None:
    if steps < 1:
        raise ParamError(f"CLIP guidance needs at least 1 step, got {steps}")
    if not lr > 0:
        raise ParamError(f"the CLIP guidance learning rate (--clip-lr) must be > 0, got {lr}")
    if init not in INITS:
        raise ParamError(f"--clip-init must be one of {', '.join(INITS)}, got {init!r}")


def _views(images: torch.Tensor, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B * count, 3, size, size): random square-ish crops (75-100% of
    the side, anywhere in the image) resized to CLIP's input, CLIP-normalised."""
    _, _, h, w = images.shape
    views = []
    for _ in range(count):
        frac = MIN_CROP + (1 - MIN_CROP) * float(torch.rand((), generator=generator))
        ch, cw = max(1, round(h * frac)), max(1, round(w * frac))
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        crop = images[:, :, top:top + ch, left:left + cw]
        views.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    x = torch.cat(views)
    mean = torch.tensor(IMAGE_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _image_features(scorer, pixels: torch.Tensor) -> torch.Tensor:
    out = scorer.model.get_image_features(pixel_values=pixels)
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 4.x / 5
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def initial_latents(shape: tuple[int, ...], n: int, seed: int, init: str) -> torch.Tensor:
    if init == "blank":
        return torch.zeros(n, *shape)
    # image i from seed + i, whatever n is: the same seed gives the same image in a batch of 1 or 8
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def clip_guided(decode: Callable[[torch.Tensor], torch.Tensor], latent_shape: tuple[int, ...], scorer, prompt: str,
                n: int = 1, seed: int = 0, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, init: str = "noise",
                cutouts: int = CUTOUTS, on_step: Callable[[int, float], None] | None = None, freeze: tuple = (),
                tv: float = 0.0):
    """n images (PIL) decoded from latents optimised towards `prompt`, and the per-step mean
    cosine similarity. `decode`: (B, *latent_shape) -> images in [-1, 1], differentiable;
    `freeze`: the modules behind it, kept free of gradients for the run; `tv`: weight of a
    total-variation penalty on the image (favours flat regions over texture)."""
    check_options(steps, lr, init)
    if not prompt.strip():
        raise ParamError("--clip-guided needs a prompt to steer towards, e.g. --clip-guided \"a red circle\"")
    text = scorer.embed_texts([prompt])[0]
    latents = initial_latents(tuple(latent_shape), n, seed, init).requires_grad_(True)
    optimiser = torch.optim.Adam([latents], lr=lr)
    generator = torch.Generator().manual_seed(seed)  # the views' randomness, reproducible per seed
    history: list[float] = []
    with _frozen(scorer.model, *freeze):
        _optimise(decode, latents, optimiser, scorer, text, steps, cutouts, generator, history, on_step, tv)
    with torch.no_grad():
        final = decode(latents.detach()).float().clamp(-1, 1)
    return to_pil_images(final), history


@contextmanager
def _frozen(*modules):
    """Only the latent learns: no weight gradients (time, memory, and no .grad left on the model)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _optimise(decode, latents, optimiser, scorer, text, steps, cutouts, generator, history, on_step, tv) -> None:
    for step in range(steps):
        images = (decode(latents).float().clamp(-1, 1) + 1) / 2
        feats = _image_features(scorer, _views(images, scorer.image_size, cutouts, generator))
        similarity = feats @ text.to(feats.dtype)
        loss = -similarity.mean()
        if tv:
            loss = loss + tv * ((images[..., 1:, :] - images[..., :-1, :]).abs().mean()
                                + (images[..., 1:] - images[..., :-1]).abs().mean())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        history.append(float(similarity.detach().mean()))
        if on_step is not None:
            on_step(step + 1, history[-1])


def view_similarity(scorer, text: torch.Tensor, seed: int, cutouts: int = CUTOUTS) -> Callable:
    """images in [0, 1] (B, 3, H, W) -> the mean cosine similarity of `cutouts` random views
    with the unit text embedding `text`; the views' randomness seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)

    def similarity(images: torch.Tensor) -> torch.Tensor:
        feats = _image_features(scorer, _views(images, scorer.image_size, cutouts, generator))
        return (feats @ text.to(feats.dtype)).mean()
    return similarity


# options of the samplers that mean nothing here: an error rather than silently ignored
_NOT_FOR_CLIP = ("class_name", "prompt", "negative_prompt", "sampler", "eta", "guidance_scale", "top_k", "top_p",
                 "temperature", "use_cache", "database", "retrieval", "clip_guidance_scale")
# the diffusion method samples (--sampler, --eta apply) and has no Adam (--clip-lr, --clip-init do not)
_NOT_FOR_DIFFUSION = ("class_name", "prompt", "negative_prompt", "guidance_scale", "top_k", "top_p", "temperature",
                      "use_cache", "database", "retrieval", "clip_lr", "clip_init")
METHODS = ("optimize", "diffusion", "diffusion-x0")
DEFAULT_METHOD = "diffusion-x0"  # measured: BENCHMARKS.md, "CLIP-guided generation"


def _refuse(params: SampleParams, names: tuple[str, ...], why: str) -> None:
    given = [f"--{k.replace('_', '-')}" for k in names if getattr(params, k) is not None]
    if given:
        raise ParamError(f"{', '.join(given)} do not apply to --clip-guided {why}")


def _size(model, params: SampleParams) -> tuple[int, int]:
    factor, res = model.vae_scale_factor, model.config.resolution
    width, height = params.width or res, params.height or res
    for label, value in (("width", width), ("height", height)):
        if value % factor:
            raise ParamError(f"--{label} must be a multiple of {factor} for this model, got {value}")
    return width, height


def sample_clip_guided(model, params: SampleParams, name: str, scorer=None) -> tuple:
    """`t2i sample RUN --clip-guided PROMPT`: (grid, infotext, images) from a latent diffusion
    model (`model`: a LatentDiffusion; the optimize method takes anything with decode_latents,
    vae_scale_factor, latent_channels and config.resolution), by CLIP-guided diffusion sampling
    (default) or by optimising its VAE latent (--clip-guidance-method optimize)."""
    method = params.clip_guidance_method or DEFAULT_METHOD
    if method not in METHODS:
        raise ParamError(f"--clip-guidance-method must be one of {', '.join(METHODS)}, got {method!r}")
    if method.startswith("diffusion"):
        return _sample_diffusion(model, params, name, scorer, method)
    _refuse(params, _NOT_FOR_CLIP, "with the optimize method (it optimises a latent, no sampler)")
    steps = params.steps or DEFAULT_STEPS
    lr = params.clip_lr if params.clip_lr is not None else DEFAULT_LR
    init = params.clip_init or "noise"
    width, height = _size(model, params)
    factor = model.vae_scale_factor
    scorer = scorer or load_scorer(params.clip_model)
    param = next(model.vae.parameters())
    shape = (model.latent_channels, height // factor, width // factor)
    decoder = model if isinstance(model, torch.nn.Module) else model.vae  # with a tiny decoder, if one is set
    images, history = clip_guided(lambda z: model.decode_latents(z.to(param.device, param.dtype)), shape, scorer,
                                  params.clip_guided, params.n, params.seed, steps, lr, init, freeze=(decoder,))
    info = build_infotext(params.clip_guided, "", {
        "Steps": steps, "Seed": params.seed, "Size": images[0].size, "Model": name, "CLIP-guided": params.clip_guided,
        "CLIP method": method, "CLIP lr": lr, "CLIP init": init, "CLIP model": params.clip_model,
        "CLIP similarity": f"{history[0]:.3f} -> {history[-1]:.3f}"})
    return make_grid(images), info, images


def _sample_diffusion(model, params: SampleParams, name: str, scorer, method: str) -> tuple:
    _refuse(params, _NOT_FOR_DIFFUSION, "with the diffusion method (an empty-prompt sampler steered by CLIP)")
    if not params.clip_guided.strip():
        raise ParamError("--clip-guided needs a prompt to steer towards, e.g. --clip-guided \"a red circle\"")
    if not hasattr(model, "unet") or not hasattr(model, "scheduler_config"):
        raise ParamError(f"--clip-guidance-method diffusion samples a latent diffusion model; {name} has no UNet")
    steps = params.steps or DIFFUSION_STEPS
    scale = params.clip_guidance_scale if params.clip_guidance_scale is not None else DEFAULT_SCALE
    sampler, eta = params.sampler or DEFAULT_SAMPLER, params.eta or 0.0
    width, height = _size(model, params)
    factor = model.vae_scale_factor
    shape = (model.latent_channels, height // factor, width // factor)
    scorer = scorer or load_scorer(params.clip_model)
    text = scorer.embed_texts([params.clip_guided])[0]
    param = next(model.vae.parameters())

    def decode(z):
        return model.decode_latents(z.to(param.device, param.dtype))

    decoder = model if isinstance(model, torch.nn.Module) else model.vae
    images, starts, ends = [], [], []
    with _frozen(scorer.model, decoder, model.unet):
        for i in range(params.n):  # image i from seed + i, whatever n is
            latents, history = clip_guided_diffusion(
                model, lambda seed: view_similarity(scorer, text, seed), shape, params.seed + i, steps=steps,
                scale=scale, sampler=sampler, eta=eta, decode=decode,
                gradient="x0" if method == "diffusion-x0" else "full")
            with torch.no_grad():
                images += to_pil_images(decode(latents).float().clamp(-1, 1))
            if history:
                starts.append(history[0])
                ends.append(history[-1])
    fields = {"Steps": steps, "Sampler": sampler, "Seed": params.seed, "Size": images[0].size, "Model": name,
              "CLIP-guided": params.clip_guided, "CLIP method": method, "CLIP scale": scale,
              "CLIP model": params.clip_model}
    if params.eta is not None:
        fields["Eta"] = eta
    if starts:
        fields["CLIP similarity"] = f"{sum(starts) / len(starts):.3f} -> {sum(ends) / len(ends):.3f}"
    return make_grid(images), build_infotext(params.clip_guided, "", fields), images
