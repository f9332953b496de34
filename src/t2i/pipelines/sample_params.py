"""`t2i sample`'s parameters (GAN, VAE, pixel DDPM, VQGAN + AR, class/unconditional LDM), torch-free
like the other params."""
from __future__ import annotations

from dataclasses import dataclass

from t2i.pipelines.generation_params import MAX_SEED
from t2i.pipelines.params import param


@dataclass
class SampleParams:
    n: int = param(16, "number of images", label="Images", group="family", minimum=1, maximum=1024)
    seed: int = param(0, "image i uses seed + i", group="family", minimum=0, maximum=MAX_SEED, infotext="Seed")
    class_name: str | None = param(None, "class name (class-conditional models; default: cycle through all)",
                                   label="Class", group="family", flag="--class")
    prompt: str | None = param(None, "the prompt (text-conditional DDPM, AR and retrieval LDM models)", group="family",
                               infotext="Prompt")
    width: int | None = param(None, "image width (DDPM: any multiple of its size step, larger than trained too)",
                              group="family", minimum=8, maximum=4096, infotext="Size", infotext_part=0)
    height: int | None = param(None, "image height", group="family", minimum=8, maximum=4096, infotext="Size",
                               infotext_part=1)
    negative_prompt: str | None = param(None, "pixel DDPM text models: what guidance steers away from",
                                        group="family", infotext="Negative prompt")
    sampler: str | None = param(None, "pixel DDPM and LDM: DDPM (ancestral), DDIM (default) or another sampler name",
                                group="family", infotext="Sampler")
    steps: int | None = param(None, "pixel DDPM: sampling steps (default: all for DDPM, 50 otherwise; LDM: 20)",
                              group="family", minimum=1, maximum=10_000, infotext="Steps")
    eta: float | None = param(None, "pixel DDPM and LDM: DDIM's eta (0: deterministic)", group="family", minimum=0.0,
                              maximum=1.0, infotext="Eta")
    guidance_scale: float | None = param(None, "pixel DDPM and class LDM: classifier-free guidance towards the "
                                                "class or prompt (LDM default 3)",
                                         group="family", minimum=0.0, maximum=100.0, infotext="CFG scale")
    top_k: int | None = param(None, "AR: sample among the k most likely codes (0: all, 1: greedy)", group="family",
                              minimum=0, maximum=1_000_000, infotext="Top-k")
    top_p: float | None = param(None, "AR: nucleus sampling, the most likely codes holding this mass (1: all)",
                                group="family", minimum=0.0, maximum=1.0, infotext="Top-p")
    temperature: float | None = param(None, "AR: below 1 sharpens, above 1 flattens (default: 1)", group="family",
                                      minimum=0.0, maximum=100.0, infotext="Temperature")
    use_cache: bool | None = param(None, "AR: reuse cached keys/values (--no-cache recomputes every step: slow, "
                                         "same codes)", group="family", flag="--cache")
    # retrieval-augmented diffusion (t2i.pipelines.rdm): --prompt retrieves the model's neighbours
    database: str | None = param(None, "retrieval LDM: a database from `t2i rdm build-db` to retrieve from instead "
                                       "of the model's own", group="family", infotext="Database")
    retrieval: str | None = param(None, "retrieval LDM: what the prompt's CLIP text embedding gives the model: its "
                                        "k nearest database images (neighbours, default), itself (text), or itself "
                                        "and k - 1 neighbours (both)", group="family",
                                  choices=("neighbours", "text", "both"), infotext="Retrieval")
    # CLIP-guided generation (t2i.pipelines.clip_guided): a prompt that reaches the image only through a CLIP
    clip_guided: str | None = param(None, "CLIP-guided generation from a latent diffusion model (RUN may be "
                                          "`default`): the prompt steers it only through a CLIP; "
                                          "--clip-guidance-method says how", group="family", infotext="CLIP-guided")
    clip_lr: float | None = param(None, "CLIP guidance, optimize method: Adam's learning rate on the latent "
                                        "(default 0.1)", group="family", minimum=1e-6, maximum=100.0,
                                  infotext="CLIP lr")
    clip_init: str | None = param(None, "CLIP guidance, optimize method: start from noise (default, one per seed) "
                                        "or a blank latent", group="family", choices=("noise", "blank"),
                                  infotext="CLIP init")
    clip_model: str | None = param(None, "CLIP guidance: a transformers CLIPModel folder (default: t2i's bundled "
                                         "CLIP)", group="family", infotext="CLIP model")
    clip_guidance_method: str | None = param(None, "CLIP guidance: sample the diffusion model with an empty "
                                                   "prompt, steered by CLIP's gradient at the predicted x0 "
                                                   "(diffusion-x0, default) or through the UNet too (diffusion); "
                                                   "--sampler, --eta, --steps apply (default DDIM, 20 steps). Or "
                                                   "optimize the VAE latent with Adam (optimize; --steps: Adam "
                                                   "steps, default 50)", group="family",
                                             choices=("optimize", "diffusion", "diffusion-x0"), infotext="CLIP method")
    clip_guidance_scale: float | None = param(None, "CLIP guidance, diffusion method: how hard CLIP's gradient "
                                                    "steers the sampler, relative to the noise prediction "
                                                    "(0: plain empty-prompt sampling; default 0.3)",
                                              group="family", minimum=0.0, maximum=1e6, infotext="CLIP scale")
