"""The bundled SD 1.5 / 2.x / SDXL config folders at full size, built without memory (meta
tensors): they give the published parameter counts, and t2i's key maps agree tensor for tensor
with diffusers' own original-layout converter, so real files land in the right places."""
import json

import pytest

from t2i.checkpoints.convert import (
    Target, clip_target, open_clip_target, text_name, to_original, unet_target, vae_target,
)
from t2i.checkpoints.detect import SD1_CLIP_PREFIXES, SD2_OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX
from t2i.checkpoints.single_file import bundled_config_dir


def config(name, part):
    return json.loads((bundled_config_dir(name) / part / "config.json").read_text())


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_size():
    """Every distinct full-size module of the bundled configs, on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        return {
            "sd15/unet": UNet2DConditionModel.from_config(config("sd15", "unet")),
            "sd2/unet": UNet2DConditionModel.from_config(config("sd2", "unet")),
            "sdxl/unet": UNet2DConditionModel.from_config(config("sdxl", "unet")),
            "sd15/vae": AutoencoderKL.from_config(config("sd15", "vae")),
            "sd15/text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(config("sd15", "text_encoder"))),
            # SD 2.x files hold all 24 OpenCLIP layers; the bundled config keeps the 23 SD uses.
            "sd2/open_clip_24": CLIPTextModel(CLIPTextConfig.from_dict({**config("sd2", "text_encoder"),
                                                                       "num_hidden_layers": 24})),
            "sdxl/text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig.from_dict(config("sdxl", "text_encoder_2"))),
        }


def test_published_parameter_counts(full_size):
    expected = {"sd15/unet": 859_520_964, "sd2/unet": 865_910_724, "sdxl/unet": 2_567_463_684,
                "sd15/vae": 83_653_863, "sd15/text_encoder": 123_060_480, "sdxl/text_encoder_2": 694_659_840}
    assert {k: count(full_size[k]) for k in expected} == expected
    assert count(full_size["sd2/open_clip_24"]) - 340_387_840 == 12_596_224  # 23 layers kept: one layer less
    # Shared parts are the same JSON rather than built again.
    assert config("sdxl", "text_encoder") == config("sd15", "text_encoder")
    differs = ("sample_size", "scaling_factor", "force_upcast")
    shape = lambda c: {k: v for k, v in c.items() if k not in differs}  # noqa: E731
    assert shape(config("sd2", "vae")) == shape(config("sdxl", "vae")) == shape(config("sd15", "vae"))
    assert config("sdxl", "vae")["scaling_factor"] == 0.13025
    pads = {n: json.loads((bundled_config_dir(n) / "tokenizer" / "tokenizer_config.json").read_text())["pad_token"]
            for n in ("sd15", "sd2", "sdxl")}
    assert pads == {"sd15": "<|endoftext|>", "sd2": "!", "sdxl": "<|endoftext|>"}


def agree(module, target_of, diffusers_convert, strip_text_model=False):
    """Write `module`'s (meta) tensors to the original layout through t2i's map, convert back
    with diffusers' converter, and check every tensor came back to its own name: the very same
    tensor object where it is stored as is, the same shape where it is reshaped or split."""
    state = module.state_dict()
    original = to_original({"m": (state, target_of)})
    for name, tensor in state.items():  # to_original detaches: put the objects themselves back
        if target_of(name).kind == "same":
            original[target_of(name).key] = tensor
    back = diffusers_convert(original)
    if strip_text_model:
        back = {text_name(k): v for k, v in back.items()}
        state = {text_name(k): v for k, v in state.items()}
    assert set(back) >= set(state), sorted(set(state) - set(back))[:5]
    for name, tensor in state.items():
        target: Target = target_of(name)
        if target.kind == "same":
            assert back[name] is tensor, name
        assert back[name].shape == tensor.shape, name


@pytest.mark.parametrize("name", ["sd15", "sd2", "sdxl"])
def test_unet_map_agrees_with_diffusers(full_size, name):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet_config = config(name, "unet")
    agree(full_size[f"{name}/unet"], lambda n: unet_target(n, unet_config),
          lambda sd: convert_ldm_unet_checkpoint(sd, unet_config))


def test_vae_map_agrees_with_diffusers(full_size):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_config = config("sd15", "vae")
    agree(full_size["sd15/vae"], lambda n: vae_target(n, vae_config),
          lambda sd: convert_ldm_vae_checkpoint(sd, vae_config))


@pytest.mark.parametrize("prefix", [SD1_CLIP_PREFIXES[0], SDXL_CLIP_PREFIX])
def test_clip_map_agrees_with_diffusers(full_size, prefix):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    agree(full_size["sd15/text_encoder"], lambda n: clip_target(text_name(n), prefix), convert_ldm_clip_checkpoint,
          strip_text_model=True)


@pytest.mark.parametrize("model, prefix", [("sd2/open_clip_24", SD2_OPEN_CLIP_PREFIX),
                                           ("sdxl/text_encoder_2", SDXL_OPEN_CLIP_PREFIX)])
def test_open_clip_map_agrees_with_diffusers(full_size, model, prefix):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    module = full_size[model]
    convert = lambda sd: convert_open_clip_checkpoint(module, sd, prefix=prefix)  # noqa: E731
    if model.startswith("sd2"):
        # diffusers drops layer 23 (SD 2.x conditions on the penultimate layer), as t2i does.
        state = module.state_dict()
        original = to_original({"m": (state, lambda n: open_clip_target(text_name(n), prefix))})
        back = {text_name(k): v for k, v in convert(original).items()}
        kept = {text_name(k) for k in state if ".layers.23." not in k}
        assert set(back) == kept
        assert all(back[k].shape == state[k if k in state else "text_model." + k].shape for k in back)
    else:
        agree(module, lambda n: open_clip_target(text_name(n), prefix), convert, strip_text_model=True)


def test_original_key_counts_match_real_files(full_size):
    """Tensor counts of the real files' components (SD 1.5: UNet 686, VAE 248, CLIP 196 without
    position ids; SDXL UNet 1680)."""
    def n_original(module, target_of):
        return len(to_original({"m": (module.state_dict(), target_of)}))

    assert n_original(full_size["sd15/unet"], lambda n: unet_target(n, config("sd15", "unet"))) == 686
    assert n_original(full_size["sd15/vae"], lambda n: vae_target(n, config("sd15", "vae"))) == 248
    assert n_original(full_size["sd15/text_encoder"], lambda n: clip_target(text_name(n), "x.")) == 196
    assert n_original(full_size["sdxl/unet"], lambda n: unet_target(n, config("sdxl", "unet"))) == 1680
