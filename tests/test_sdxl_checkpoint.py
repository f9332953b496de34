"""SDXL base in the original single-file layout: two text encoders (CLIP ViT-L and an OpenCLIP
tower with fused q/k/v and a transposed projection) and size/crop conditioning, tiny and random."""
import pytest
import torch

from t2i.checkpoints.convert import save_single_file, text_name
from t2i.checkpoints.single_file import load_single_file, load_user_model
from t2i.runtime import Runtime


def tiny_sdxl_pipeline():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from t2i.models.text import load_tokenizer

    def clip(act, width):
        return CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=37, num_hidden_layers=3,
                              num_attention_heads=2, max_position_embeddings=77, hidden_act=act, projection_dim=width,
                              bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)

    torch.manual_seed(0)
    # SDXL's pattern at toy width: a plain top level, deeper transformers lower down, 6 time ids
    # of `addition_time_embed_dim` each plus the pooled embedding into the added embedding. The
    # two encoders differ in width (32 + 48 = 80) as CLIP-L and bigG do (768 + 1280 = 2048);
    # diffusers tells them apart by width.
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), cross_attention_dim=80, attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 48, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=8, sample_size=32, scaling_factor=0.13025)
    tokenizer_2 = load_tokenizer(max_length=77)
    tokenizer_2.pad_token = "!"  # OpenCLIP's padding
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(clip("quick_gelu", 32)),
                                     text_encoder_2=CLIPTextModelWithProjection(clip("gelu", 48)),
                                     tokenizer=load_tokenizer(max_length=77), tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=scheduler)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    pipe = tiny_sdxl_pipeline()
    pipe.save_pretrained(root / "folder")
    save_single_file(pipe, root / "tiny-xl.safetensors")
    return pipe, root / "folder", root / "tiny-xl.safetensors"


def same(a, b):
    sa = {text_name(k): v for k, v in a.state_dict().items()}
    sb = {text_name(k): v for k, v in b.state_dict().items()}
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sdxl_single_file_round_trip(sdxl):
    from safetensors.torch import load_file

    pipe, folder, path = sdxl
    state = load_file(str(path))
    assert "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight" in state
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in state
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    model = load_single_file(path, config_dir=folder)
    assert model.config.family == "sdxl" and model.config.scaling_factor == 0.13025
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same(getattr(pipe, part), getattr(model, part)), part
    assert model.tokenizer_2.pad_token_id == 0 and model.tokenizer.pad_token_id == 49407
    assert all(p.is_contiguous() for p in model.parameters())  # e.g. the transposed OpenCLIP projection


def test_diffusers_reads_the_sdxl_export(sdxl):
    from diffusers import StableDiffusionXLPipeline

    pipe, folder, path = sdxl
    other = StableDiffusionXLPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert same(getattr(pipe, part), getattr(other, part)), part


def test_sdxl_text_conditioning_matches_diffusers(sdxl):
    pipe, folder, path = sdxl
    model = load_single_file(path, config_dir=folder)
    with torch.no_grad():
        context, pooled = model.encode_prompts_sdxl(["a red circle"])
        expected, _, expected_pooled, _ = pipe.encode_prompt("a red circle", device="cpu", num_images_per_prompt=1,
                                                             do_classifier_free_guidance=False)
    assert context.shape == (1, 77, 80) and pooled.shape == (1, 48)
    assert torch.allclose(context, expected, atol=1e-6) and torch.allclose(pooled, expected_pooled, atol=1e-6)


def test_sdxl_loads_for_generation(sdxl):
    """Generation itself is checked against diffusers in tests/test_sd_anchor.py."""
    _, folder, path = sdxl
    loaded = load_user_model(path, Runtime.auto("full", "cpu"), config_dir=folder)
    assert loaded.model.config.family == "sdxl" and loaded.name == "tiny-xl" and len(loaded.hash) == 10
