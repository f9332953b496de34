import json

import pytest
import torch

from conftest import tiny_ldm_config
from t2i.checkpoints.diffusers_folder import ModelLoadError, load_ldm_folder, save_ldm_folder
from t2i.models.ldm import LatentDiffusion, LDMConfig


def test_parts_shapes_finite_and_gradients_flow():
    torch.manual_seed(0)
    model = LatentDiffusion(tiny_ldm_config())
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    z = model.encode_images(images, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 4, 16, 16)
    hidden = model.encode_prompts(["a red circle", ""])
    assert hidden.shape == (2, 32, 32)
    eps = model.unet(z, torch.tensor([10, 500]), hidden).sample
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    out = model.decode_latents(z)
    assert out.shape == images.shape and torch.isfinite(out).all()
    (eps.square().mean() + out.square().mean()).backward()
    for part in (model.unet, model.vae, model.text_encoder):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(1)
    model = LatentDiffusion(tiny_ldm_config())
    model.config.scaling_factor = 0.7
    save_ldm_folder(model, tmp_path / "m")
    loaded = load_ldm_folder(tmp_path / "m")
    assert loaded.config == model.config
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "m" / "t2i_config.json").read_text())
    assert meta["t2i_version"] and meta["config"]["scaling_factor"] == 0.7
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_diffusers_pipeline_loads_the_folder_offline(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), local_files_only=True)
    out = pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np").images
    assert out.shape == (1, 32, 32, 3)


def test_strict_loading_rejects_mismatched_weights(tmp_path):
    torch.manual_seed(2)
    save_ldm_folder(LatentDiffusion(tiny_ldm_config()), tmp_path / "m")
    meta_path = tmp_path / "m" / "t2i_config.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["unet"]["block_out_channels"] = [16, 48]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="does not match"):
        load_ldm_folder(tmp_path / "m")


def test_corrupt_weights_file_gives_clear_error(tmp_path):
    torch.manual_seed(3)
    save_ldm_folder(LatentDiffusion(tiny_ldm_config()), tmp_path / "m")
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="is corrupt or truncated"):
        load_ldm_folder(tmp_path / "m")


def test_missing_folder_and_unknown_config_keys(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_ldm_folder(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown keys"):
        LDMConfig.from_dict({"resolution": 32, "unet": {"chanels": [1]}})
