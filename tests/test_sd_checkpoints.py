"""Stable Diffusion single files and diffusers folders, with tiny random models in the real
formats: export to the original layout, load back through t2i, and generate exactly what
diffusers' own pipeline generates from the same weights."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from t2i.checkpoints.convert import open_clip_target, save_single_file, text_name, to_original
from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.single_file import load_diffusers_folder, load_single_file, load_user_model
from t2i.runtime import Runtime

CPU = Runtime.auto("full", "cpu")


def tiny_unet(in_channels=4, context=32, linear_projection=False):
    from diffusers import UNet2DConditionModel

    # SD's block pattern (cross-attention levels, then a plain one) at toy width, 2 layers per
    # block as in SD so that the original layout's block numbering is exercised.
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=context, attention_head_dim=2, norm_num_groups=8, use_linear_projection=linear_projection)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                         norm_num_groups=8, sample_size=32)


def tiny_clip_config(layers=2, act="quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=layers,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act=act, projection_dim=32,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def tiny_pipeline(in_channels=4):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel

    from t2i.models.text import load_tokenizer

    torch.manual_seed(0)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    # (SD's schedule; spacing given explicitly because diffusers' from_config drops defaulted keys)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=CLIPTextModel(tiny_clip_config()),
                                   tokenizer=load_tokenizer(max_length=77), unet=tiny_unet(in_channels),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """(pipeline, its diffusers folder, its original-layout single file)."""
    root = tmp_path_factory.mktemp("sd1")
    pipe = tiny_pipeline()
    pipe.save_pretrained(root / "folder")
    save_single_file(pipe, root / "tiny-sd1.safetensors")
    return pipe, root / "folder", root / "tiny-sd1.safetensors"


def assert_same_weights(a, b, parts=("unet", "vae", "text_encoder")):
    for part in parts:
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        sa, sb = ({text_name(k): v for k, v in s.items()} for s in (sa, sb))
        assert sa.keys() == sb.keys(), part
        bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not bad, f"{part}: {bad[:3]}"


def test_export_writes_the_original_layout(sd1):
    _, _, path = sd1
    state = load_file(str(path))
    assert {k.split(".")[0] for k in state} == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.input_blocks.4.0.in_layers.2.weight",  # level 1 starts after 2 layers + op
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight",  # upsampler of a level without attention
                "model.diffusion_model.output_blocks.5.1.proj_out.weight", "model.diffusion_model.out.2.weight",
                "first_stage_model.decoder.up.1.upsample.conv.weight",
                "first_stage_model.encoder.mid.block_2.conv1.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        assert key in state, key
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)  # stored as 1x1 convs
    assert state["first_stage_model.encoder.mid.attn_1.q.bias"].shape == (32,)


def test_single_file_loads_the_same_weights(sd1):
    pipe, folder, path = sd1
    model = load_single_file(path, config_dir=folder)
    assert_same_weights(pipe, model)
    assert model.config.family == "sd1" and not model.config.inpainting
    assert model.scheduler_config()["prediction_type"] == "epsilon"
    assert all(not p.requires_grad for p in model.parameters())


def test_diffusers_reads_the_export(sd1):
    """The ecosystem's reader (diffusers' from_single_file, offline with a local config) gets
    exactly the weights back: the export direction is right, the text_model. prefix included."""
    from diffusers import StableDiffusionPipeline

    pipe, folder, path = sd1
    other = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    assert_same_weights(pipe, other)


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_txt2img_equals_diffusers_pipeline(sd1, sampler):
    """The correctness anchor: same weights (from the single file), prompt, seed, sampler, steps
    and CFG scale give diffusers' image to within 2/255 per pixel."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from t2i.checkpoints.registry import LoadedModel
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    pipe, folder, path = sd1
    loaded = load_user_model(path, CPU, config_dir=folder)
    assert isinstance(loaded, LoadedModel) and loaded.name == "tiny-sd1" and len(loaded.hash) == 10
    cls = {"DDIM": DDIMScheduler, "Euler": EulerDiscreteScheduler}[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    expected = pipe("a red circle", negative_prompt="blurry", num_inference_steps=6, guidance_scale=7.5, height=32,
                    width=32, eta=0.0, generator=torch.Generator().manual_seed(1234), output_type="np").images[0]
    params = Txt2ImgParams(prompt="a red circle", negative_prompt="blurry", steps=6, cfg_scale=7.5, sampler=sampler,
                           scheduler="Automatic", seed=1234, eta=0.0)
    image = np.asarray(txt2img(loaded, params).images[0]).astype(np.float64)
    assert image.shape == (32, 32, 3) and image.std() > 5  # a real image, not a flat one
    assert np.abs(image - expected * 255).max() <= 2.0


def test_registry_loads_a_plain_diffusers_folder(sd1):
    from t2i.checkpoints.registry import load_model
    from t2i.models.sd import StableDiffusionModel

    pipe, folder, _ = sd1
    loaded = load_model(folder, CPU)
    assert isinstance(loaded.model, StableDiffusionModel) and loaded.name == "folder"
    assert_same_weights(pipe, loaded.model)
    ids = loaded.model.tokenizer(["a cat"], padding="max_length", max_length=77).input_ids[0]
    assert ids[:4] == [49406, 320, 2368, 49407] and ids[-1] == 49407  # CLIP ids, padded with EOS


def test_diffusers_folder_variants(sd1, tmp_path):
    """Older transformers wrote CLIP names with `text_model.`; older diffusers wrote pickles."""
    pipe, folder, _ = sd1
    copy = shutil.copytree(folder, tmp_path / "old-style")
    te_file = copy / "text_encoder" / "model.safetensors"
    save_file({"text_model." + text_name(k): v for k, v in load_file(str(te_file)).items()}, str(te_file))
    vae_file = copy / "vae" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(vae_file)), copy / "vae" / "diffusion_pytorch_model.bin")
    vae_file.unlink()
    model = load_diffusers_folder(copy)
    assert_same_weights(pipe, model)
    assert model.config.family == "sd1" and model.config.resolution == 32


def test_wrong_shapes_for_the_detected_architecture(sd1):
    """The tiny file is SD 1.x-shaped; against the bundled full-size SD 1.5 config every tensor
    is the wrong size: one error naming the file, before anything is loaded."""
    from t2i.checkpoints.registry import load_model

    _, _, path = sd1
    with pytest.raises(ModelLoadError, match=r"tiny-sd1\.safetensors does not match the SD 1\.x UNet: .*wrong shape"):
        load_model(path, CPU)


@pytest.mark.parametrize("damage, message", [
    (lambda s: s.pop("model.diffusion_model.out.2.bias"), "1 missing tensors.*out.2.bias"),
    (lambda s: s.__setitem__("first_stage_model.decoder.conv_in.weight", torch.zeros(1, 2, 3, 3)),
     "VAE: 1 tensors of the wrong shape"),
    (lambda s: s.__setitem__("model.diffusion_model.input_blocks.99.0.skip_connection.weight", torch.zeros(1)),
     "UNet: 1 unexpected tensors"),
    (lambda s: s.pop("cond_stage_model.transformer.text_model.final_layer_norm.weight"), "text encoder: 1 missing"),
])
def test_damaged_checkpoints_fail_with_one_message(sd1, tmp_path, damage, message):
    _, folder, path = sd1
    state = load_file(str(path))
    damage(state)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ModelLoadError, match=message) as info:
        load_single_file(bad, config_dir=folder)
    assert str(bad) in str(info.value)


def test_inpainting_checkpoint(tmp_path):
    pipe = tiny_pipeline(in_channels=9)
    pipe.save_pretrained(tmp_path / "folder")
    # The config folder a user names may be the plain text-to-image one: detection sets 9 channels.
    config = json.loads((tmp_path / "folder" / "unet" / "config.json").read_text())
    (tmp_path / "folder" / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 4}))
    save_single_file(pipe, tmp_path / "inpaint.safetensors")
    model = load_single_file(tmp_path / "inpaint.safetensors", config_dir=tmp_path / "folder")
    assert model.config.inpainting and model.unet.config.in_channels == 9
    assert_same_weights(pipe, model)


def test_sd2_open_clip_layout(sd1, tmp_path):
    """SD 2.x: OpenCLIP text tower (fused q/k/v, transposed projection, one layer more than SD
    uses), pad token "!", and the v-prediction hint from the web UI's sidecar YAML."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipe, folder, _ = sd1
    torch.manual_seed(1)
    full_tower = CLIPTextModelWithProjection(tiny_clip_config(layers=3, act="gelu"))
    text_state = to_original({"te": (full_tower.state_dict(),
                                     lambda n: open_clip_target(text_name(n), "cond_stage_model.model."))})
    state = {k: v for k, v in load_file(str(sd1[2])).items() if not k.startswith("cond_stage_model.")}
    path = tmp_path / "tiny-sd2.safetensors"
    save_file({**state, **text_state}, str(path))
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: v\n")
    config_dir = tmp_path / "sd2config"
    shutil.copytree(folder, config_dir)
    (config_dir / "text_encoder" / "config.json").write_text(tiny_clip_config(layers=2, act="gelu").to_json_string())
    tok = json.loads((config_dir / "tokenizer" / "tokenizer_config.json").read_text())
    (config_dir / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**tok, "pad_token": "!"}))

    model = load_single_file(path, config_dir=config_dir)
    assert model.config.family == "sd2" and model.config.prediction_type == "v_prediction"
    assert model.scheduler_config()["prediction_type"] == "v_prediction"
    assert model.tokenizer.pad_token_id == 0
    reference = CLIPTextModel(tiny_clip_config(layers=2, act="gelu"))  # SD 2.x: the penultimate layer
    missing, unexpected = reference.load_state_dict({text_name(k): v for k, v in full_tower.state_dict().items()},
                                                    strict=False)
    assert not missing and all(".layers.2." in k or "projection" in k for k in unexpected)
    ids = torch.tensor([[49406, 320, 2368, 49407] + [0] * 73])
    with torch.no_grad():
        assert torch.allclose(model.encode_prompts(["a cat"]), reference(ids).last_hidden_state, atol=1e-6)


def test_clip_skip_uses_an_earlier_layer_through_the_final_norm(sd1):
    pipe, folder, path = sd1
    model = load_single_file(path, config_dir=folder, clip_skip=2)
    ids = pipe.tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        expected = pipe.text_encoder.final_layer_norm(hidden)
        assert torch.allclose(model.encode_prompts(["a cat"]), expected, atol=1e-6)
