"""Shared fixtures: tiny random models built from configs (seconds on a CPU)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def tiny_ldm_config(resolution: int = 32):
    from t2i.models.ldm import LDMConfig, UNetConfig, VAEConfig
    from t2i.models.text import TextEncoderConfig

    return LDMConfig(
        resolution=resolution,
        vae=VAEConfig(block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8),
        unet=UNetConfig(block_out_channels=(16, 32), cross_attention=(False, True), norm_num_groups=8),
        text=TextEncoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=32),
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny latent diffusion model saved as a t2i/diffusers folder."""
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_ldm_folder(LatentDiffusion(tiny_ldm_config()), path)
    return path


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from t2i.checkpoints.registry import load_model
    from t2i.runtime import Runtime

    return load_model(tiny_model_dir, Runtime.auto("full", "cpu"))


@pytest.fixture(scope="session")
def restorer_dir(tmp_path_factory):
    """A folder holding a small random-weight RestoreFormer (a face restorer spandrel loads)."""
    import torch

    from t2i.checkpoints.image_models import import_spandrel

    import_spandrel()
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(0)
    net = RestoreFormer(n_embed=16, embed_dim=32, ch=32, ch_mult=(1, 1, 1, 1, 1, 1), num_res_blocks=1, z_channels=32)
    folder = tmp_path_factory.mktemp("faces")
    torch.save(net.state_dict(), folder / "restoreformer.pth")
    return folder


@pytest.fixture(scope="session")
def sd_file(tmp_path_factory):
    """A tiny SD 1.x single file in float16 (as real checkpoints ship) and its config folder."""
    from test_sd_checkpoints import tiny_pipeline

    from t2i.checkpoints.convert import save_single_file

    root = tmp_path_factory.mktemp("sd-file")
    pipe = tiny_pipeline()
    pipe.save_pretrained(root / "folder")
    save_single_file(pipe, root / "tiny.safetensors", dtype=torch.float16)
    return root / "tiny.safetensors", root / "folder"
