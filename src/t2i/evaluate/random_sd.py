"""Random-weight models in the real Stable Diffusion architectures, for speed and numerics checks.

Timing needs the real shapes, not trained weights: `random_sd_model("sd15")` is the SD 1.5
architecture (860 M UNet parameters) from t2i's bundled config, initialised as diffusers and
transformers initialise new modules. `tiny=True` keeps the block layout (four levels, two layers
per block, cross-attention on the first three, 8 heads) at a tenth of the width, for tests.

    model = random_sd_model("sd15", tiny=True)   # a StableDiffusionModel, float32, CPU
"""
from __future__ import annotations

import json

import torch

from t2i.checkpoints.single_file import bundled_config_dir
from t2i.models.sd import SDModelConfig, StableDiffusionModel
from t2i.models.text import load_tokenizer

# Channel widths and text sizes of the tiny variant (SD 1.5 / 10, groups that divide them)
TINY_UNET = {"block_out_channels": [32, 64, 128, 128], "cross_attention_dim": 32, "norm_num_groups": 8,
             "sample_size": 16}
TINY_VAE = {"block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "layers_per_block": 1, "sample_size": 128}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
             "projection_dim": 32}


def sd_configs(family: str = "sd15", tiny: bool = False) -> dict:
    """{"unet", "vae", "text_encoder", "scheduler"} configs of the bundled `family` folder."""
    folder = bundled_config_dir(family)
    read = lambda part, name="config.json": json.loads((folder / part / name).read_text())  # noqa: E731
    configs = {"unet": read("unet"), "vae": read("vae"), "text_encoder": read("text_encoder"),
               "scheduler": read("scheduler", "scheduler_config.json")}
    if tiny:
        if family != "sd15":
            raise ValueError(f"the tiny variant exists for sd15 only, not {family!r}")
        configs["unet"].update(TINY_UNET)
        configs["vae"].update(TINY_VAE)
        configs["text_encoder"].update(TINY_TEXT)
    return configs


def random_sd_unet(family: str = "sd15", tiny: bool = False, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(sd_configs(family, tiny)["unet"]).eval().requires_grad_(False)


def random_sd_vae(family: str = "sd15", tiny: bool = False, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL.from_config(sd_configs(family, tiny)["vae"]).eval().requires_grad_(False)


def random_sd_model(family: str = "sd15", tiny: bool = False, seed: int = 0):
    """A StableDiffusionModel (SD 1.x layout) with random weights, float32 on the CPU."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if family != "sd15":
        raise ValueError(f"random_sd_model builds sd15 models, not {family!r}")
    configs = sd_configs(family, tiny)
    torch.manual_seed(seed)
    text_config = {k: v for k, v in configs["text_encoder"].items() if not k.startswith("_")}
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(text_config)).eval().requires_grad_(False)
    scheduler = {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")}
    config = SDModelConfig(family="sd1", resolution=configs["vae"]["sample_size"])
    return StableDiffusionModel(config, tokenizer=load_tokenizer(), text_encoder=text_encoder,
                                unet=random_sd_unet(family, tiny, seed + 1), vae=random_sd_vae(family, tiny, seed + 2),
                                scheduler_config=scheduler)
