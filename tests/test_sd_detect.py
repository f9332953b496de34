"""Architecture detection from tensor names and shapes, and the prediction-type hints."""
import pytest
import torch

from t2i.checkpoints.detect import Architecture, detect_architecture, resolve_prediction_type
from t2i.checkpoints.diffusers_folder import ModelLoadError

U, V = "model.diffusion_model.", "first_stage_model."


def fake(in_channels=4, context=768, text="sd1", text_width=None, label_emb=None):
    """The few tensors detection reads (shapes as in the real files, contents irrelevant)."""
    t = lambda *shape: torch.empty(shape)  # noqa: E731
    state = {U + "input_blocks.0.0.weight": t(320, in_channels, 3, 3),
             U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": t(320, context),
             V + "decoder.conv_in.weight": t(512, 4, 3, 3)}
    width = text_width or context
    if text == "sd1":
        state["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = t(49408, width)
    elif text == "sd1-old":
        state["cond_stage_model.transformer.embeddings.token_embedding.weight"] = t(49408, width)
    elif text == "sd2":
        state["cond_stage_model.model.token_embedding.weight"] = t(49408, width)
    elif text == "sdxl":
        state["conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"] = t(49408, 768)
        state["conditioner.embedders.1.model.token_embedding.weight"] = t(49408, context - 768)
    elif text == "refiner":
        state["conditioner.embedders.0.model.token_embedding.weight"] = t(49408, 1280)
    if label_emb or (label_emb is None and text == "sdxl"):
        state[U + "label_emb.0.0.weight"] = t(1280, 2816)
    return state


@pytest.mark.parametrize("text, context, family, config", [
    ("sd1", 768, "sd1", "sd15"), ("sd1-old", 768, "sd1", "sd15"), ("sd2", 1024, "sd2", "sd2"),
    ("sdxl", 2048, "sdxl", "sdxl"),
])
def test_families(text, context, family, config):
    arch = detect_architecture(fake(context=context, text=text), "m.safetensors")
    assert (arch.family, arch.config_name, arch.context_dim, arch.inpainting) == (family, config, context, False)


@pytest.mark.parametrize("text, context, label", [("sd1", 768, "SD 1.x inpainting"), ("sd2", 1024, "SD 2.x inpainting"),
                                                  ("sdxl", 2048, "SDXL base inpainting")])
def test_inpainting_variants(text, context, label):
    arch = detect_architecture(fake(in_channels=9, context=context, text=text), "m.safetensors")
    assert arch.inpainting and arch.in_channels == 9 and arch.label == label


@pytest.mark.parametrize("state, message", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.empty(4, 320)}, "LoRA"),
    ({"encoder.down.0.block.0.conv1.weight": torch.empty(1), "decoder.up.0.block.0.conv1.weight": torch.empty(1)},
     "VAE alone"),
    ({"string_to_param": torch.empty(1, 768)}, "textual-inversion"),
    ({"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": torch.empty(1),
      "conv_in.weight": torch.empty(1)},
     "diffusers-format UNet"),
    ({"some.random.tensor": torch.empty(3)}, "expected an original-layout"),
])
def test_not_a_checkpoint_hints(state, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        detect_architecture(state, "thing.safetensors")
    assert "thing.safetensors" in str(info.value)


def test_unsupported_and_inconsistent_layouts():
    with pytest.raises(ModelLoadError, match="8 input channels.*InstructPix2Pix"):
        detect_architecture(fake(in_channels=8), "p2p.ckpt")
    with pytest.raises(ModelLoadError, match="refiner"):
        detect_architecture(fake(context=1280, text="refiner"), "refiner.safetensors")
    with pytest.raises(ModelLoadError, match="1024 does not match the UNet's cross-attention width 768"):
        detect_architecture(fake(context=768, text="sd2", text_width=1024), "mixed.safetensors")
    with pytest.raises(ModelLoadError, match="no text encoder"):
        detect_architecture(fake(text="none"), "unet_only.safetensors")
    with pytest.raises(ModelLoadError, match="size/crop"):
        detect_architecture(fake(context=2048, text="sdxl", label_emb=False), "xl.safetensors")
    no_vae = {k: v for k, v in fake().items() if not k.startswith(V)}
    with pytest.raises(ModelLoadError, match="no VAE"):
        detect_architecture(no_vae, "novae.safetensors")


def test_prediction_type_hints(tmp_path):
    sd2 = Architecture("sd2", 4, 1024, ("cond_stage_model.model.",))
    path = tmp_path / "v2.safetensors"
    pred, notes = resolve_prediction_type(sd2, path, {}, {}, None)
    assert pred == "epsilon" and "cannot tell" in notes[0]  # the default is said out loud
    assert sd2.default_resolution(pred) == 512
    assert resolve_prediction_type(sd2, path, {}, {}, "v_prediction") == ("v_prediction", [])
    assert resolve_prediction_type(sd2, path, {"v_pred": torch.empty(0)}, {}, None)[0] == "v_prediction"
    assert resolve_prediction_type(sd2, path, {}, {"modelspec.prediction_type": "v"}, None)[0] == "v_prediction"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    pred, notes = resolve_prediction_type(sd2, path, {}, {}, None)
    assert pred == "v_prediction" and "v2.yaml" in notes[0] and sd2.default_resolution(pred) == 768
    sd1 = Architecture("sd1", 4, 768, ("cond_stage_model.transformer.text_model.",))
    assert resolve_prediction_type(sd1, tmp_path / "x.ckpt", {}, {}, None) == ("epsilon", [])
    with pytest.raises(ValueError, match="prediction_type"):
        resolve_prediction_type(sd1, path, {}, {}, "v")

