"""LyCORIS LoRA kinds (LoHa, LoKr, Tucker LoCon, full differences) and SD 2.x text-encoder LoRA
names on tiny random Stable Diffusion models: files built by hand, merged weights against the
formulas (written here independently of lycoris.py), `<lora:...>` tags, exact restore, and clear
errors for what t2i cannot apply."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.registry import LoadedModel
from t2i.extra_networks.library import ExtraNetworks, activate_extra_networks
from t2i.extra_networks.lora import read_lora
from t2i.models.sd import SDModelConfig, StableDiffusionModel
from t2i.pipelines.txt2img import Txt2ImgParams
from t2i.runtime import Runtime
from test_extra_networks import assert_bit_identical, module, snapshot
from test_sd_checkpoints import tiny_clip_config, tiny_pipeline, tiny_unet

CPU = Runtime.auto("full", "cpu")
LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # (32, 32), no bias
LINEAR_BIAS = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"  # (32, 32) + bias
CONV = "down_blocks.1.resnets.0.conv1"  # 3x3 convolution (64, 32, 3, 3)


@pytest.fixture(scope="module")
def model():
    pipe = tiny_pipeline()
    return StableDiffusionModel(SDModelConfig(family="sd1", resolution=32), tokenizer=pipe.tokenizer,
                                text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae,
                                scheduler_config={}).eval().requires_grad_(False)


def loaded_for(model, folder):
    return LoadedModel(model, "tiny", "0123456789", folder / "tiny.safetensors", CPU,
                       ExtraNetworks(lora_dirs=(folder,), embedding_dirs=(folder / "none",)))


def kohya(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def tucker(core, up, down):
    """core (r, r, kh, kw) with up (r, out) on its first index and down (r, in) on its second,
    as matrix products per kernel position."""
    per_position = up.T @ core.permute(2, 3, 0, 1) @ down  # (kh, kw, out, in)
    return per_position.permute(2, 3, 0, 1)


def kron(w1, w2):
    """Kronecker product by its definition: block (i, j) is w1[i, j] * w2 (kernels come from w2)."""
    a, c = w1.shape
    b, d, *kernel = w2.shape
    blocks = torch.einsum("ij,pq...->ipjq...", w1, w2)
    return blocks.reshape(a * b, c * d, *kernel)


def build_file(path):
    """One file of every kind; returns {module: (scale-free ΔW, scale, bias ΔW or None)}."""
    r = 2
    state, want = {}, {}
    # LoHa on a linear layer, alpha 1 of rank 2
    w1a, w1b, w2a, w2b = rand(32, r, seed=1), rand(r, 32, seed=2), rand(32, r, seed=3), rand(r, 32, seed=4)
    state |= {kohya(LINEAR) + ".hada_w1_a": w1a, kohya(LINEAR) + ".hada_w1_b": w1b, kohya(LINEAR) + ".hada_w2_a": w2a,
              kohya(LINEAR) + ".hada_w2_b": w2b, kohya(LINEAR) + ".alpha": torch.tensor(1.0)}
    want[LINEAR] = ((w1a @ w1b) * (w2a @ w2b), 0.5, None)
    # LoHa with Tucker cores on the 3x3 convolution, no alpha (scale 1)
    t1, t2 = rand(r, r, 3, 3, seed=5), rand(r, r, 3, 3, seed=6)
    ua, da, ub, db = rand(r, 64, seed=7), rand(r, 32, seed=8), rand(r, 64, seed=9), rand(r, 32, seed=10)
    state |= {kohya(CONV) + ".hada_t1": t1, kohya(CONV) + ".hada_t2": t2, kohya(CONV) + ".hada_w1_a": ua,
              kohya(CONV) + ".hada_w1_b": da, kohya(CONV) + ".hada_w2_a": ub, kohya(CONV) + ".hada_w2_b": db}
    want[CONV] = (tucker(t1, ua, da) * tucker(t2, ub, db), 1.0, None)
    # full difference with a bias difference
    diff, diff_b = rand(32, 32, seed=11), rand(32, seed=12)
    state |= {kohya(LINEAR_BIAS) + ".diff": diff, kohya(LINEAR_BIAS) + ".diff_b": diff_b}
    want[LINEAR_BIAS] = (diff, 1.0, diff_b)
    save_file(state, str(path))
    return want


@pytest.mark.parametrize("multiplier", [0.7])
def test_loha_and_full_diff_merge_by_formula_and_restore_exactly(model, tmp_path, multiplier):
    want = build_file(tmp_path / "lyco.safetensors")
    before = snapshot(model)
    with activate_extra_networks(loaded_for(model, tmp_path), Txt2ImgParams(prompt=f"a <lora:lyco:{multiplier}>")):
        for name, (delta, scale, bias) in want.items():
            layer = module(model, "unet", name)
            base = before["unet"][name + ".weight"]
            assert torch.allclose(layer.weight, base + multiplier * scale * delta.reshape(base.shape), atol=1e-4), name
            if bias is not None:
                assert torch.allclose(layer.bias, before["unet"][name + ".bias"] + multiplier * bias, atol=1e-5)
    assert_bit_identical(model, before)


LOKR_CASES = {
    # name: (module, tensors, ΔW without scale, scale)
    "linear, w1 full, w2 low-rank": lambda: (
        LINEAR, {"lokr_w1": rand(4, 2, seed=1), "lokr_w2_a": rand(8, 2, seed=2), "lokr_w2_b": rand(2, 16, seed=3),
                 "alpha": torch.tensor(4.0)},
        lambda t: kron(t["lokr_w1"], t["lokr_w2_a"] @ t["lokr_w2_b"]), 4.0 / 2),
    "linear, both factors low-rank": lambda: (
        LINEAR, {"lokr_w1_a": rand(4, 1, seed=4), "lokr_w1_b": rand(1, 2, seed=5), "lokr_w2_a": rand(8, 1, seed=6),
                 "lokr_w2_b": rand(1, 16, seed=7), "alpha": torch.tensor(0.5)},
        lambda t: kron(t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w2_a"] @ t["lokr_w2_b"]), 0.5),
    "linear, both full: alpha ignored": lambda: (
        LINEAR, {"lokr_w1": rand(2, 4, seed=8), "lokr_w2": rand(16, 8, seed=9), "alpha": torch.tensor(8.0)},
        lambda t: kron(t["lokr_w1"], t["lokr_w2"]), 1.0),
    "3x3 conv, w2 full": lambda: (
        CONV, {"lokr_w1": rand(8, 4, seed=10), "lokr_w2": rand(8, 8, 3, 3, seed=11)},
        lambda t: kron(t["lokr_w1"], t["lokr_w2"]), 1.0),
    "3x3 conv, w2 low-rank": lambda: (
        CONV, {"lokr_w1": rand(8, 4, seed=12), "lokr_w2_a": rand(8, 2, seed=13), "lokr_w2_b": rand(2, 8, 3, 3, seed=14),
               "alpha": torch.tensor(1.0)},
        lambda t: kron(t["lokr_w1"], (t["lokr_w2_a"] @ t["lokr_w2_b"].reshape(2, -1)).reshape(8, 8, 3, 3)), 0.5),
    "3x3 conv, Tucker": lambda: (
        CONV, {"lokr_w1": rand(8, 4, seed=15), "lokr_t2": rand(2, 2, 3, 3, seed=16), "lokr_w2_a": rand(2, 8, seed=17),
               "lokr_w2_b": rand(2, 8, seed=18), "alpha": torch.tensor(2.0)},
        lambda t: kron(t["lokr_w1"], tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])), 1.0),
}


@pytest.mark.parametrize("case", list(LOKR_CASES))
def test_lokr_merges_by_formula_and_restores_exactly(model, tmp_path, case):
    name, tensors, formula, scale = LOKR_CASES[case]()
    save_file({f"{kohya(name)}.{part}": t for part, t in tensors.items()}, str(tmp_path / "lokr.safetensors"))
    before = snapshot(model)
    with activate_extra_networks(loaded_for(model, tmp_path), Txt2ImgParams(prompt="<lora:lokr:-0.5>")):
        base = before["unet"][name + ".weight"]
        want = base - 0.5 * scale * formula(tensors).reshape(base.shape)
        assert torch.allclose(module(model, "unet", name).weight, want, atol=1e-4)
    assert_bit_identical(model, before)


def test_tucker_locon_and_plain_3x3_locon(model, tmp_path):
    down, mid, up = rand(2, 32, 1, 1, seed=1), rand(2, 2, 3, 3, seed=2), rand(64, 2, 1, 1, seed=3)
    other = "up_blocks.1.resnets.0.conv2"  # a 3x3 convolution: kohya's plain LoCon
    out, cin, *kernel = module(model, "unet", other).weight.shape
    plain_down, plain_up = rand(2, cin, *kernel, seed=4), rand(out, 2, 1, 1, seed=5)
    save_file({kohya(CONV) + ".lora_down.weight": down, kohya(CONV) + ".lora_mid.weight": mid,
               kohya(CONV) + ".lora_up.weight": up, kohya(CONV) + ".alpha": torch.tensor(1.0),
               kohya(other) + ".lora_down.weight": plain_down, kohya(other) + ".lora_up.weight": plain_up},
              str(tmp_path / "locon.safetensors"))
    before = snapshot(model)
    with activate_extra_networks(loaded_for(model, tmp_path), Txt2ImgParams(prompt="<lora:locon>")):
        want = before["unet"][CONV + ".weight"] + 0.5 * tucker(mid, up[:, :, 0, 0].T, down[:, :, 0, 0])
        assert torch.allclose(module(model, "unet", CONV).weight, want, atol=1e-4)
        plain = (plain_up.reshape(out, 2) @ plain_down.reshape(2, -1)).reshape(out, cin, *kernel)
        assert torch.allclose(module(model, "unet", other).weight, before["unet"][other + ".weight"] + plain, atol=1e-4)
    assert_bit_identical(model, before)


def test_unknown_incomplete_and_misfit_layers_are_refused(model, tmp_path):
    key = kohya(LINEAR)
    cases = {
        "glora": ({key + ".a1.weight": torch.ones(2, 32), key + ".lora_down.weight": torch.ones(2, 32),
                   key + ".lora_up.weight": torch.ones(32, 2)}, r"glora.safetensors holds LoRA tensors of a kind .*a1\.weight"),
        "half_loha": ({key + ".hada_w1_a": torch.ones(32, 2), key + ".hada_w1_b": torch.ones(2, 32)},
                      r"half_loha.safetensors: layer .*hada_w1_a, hada_w1_b, an incomplete LoHa layer"),
        "mixed": ({key + ".hada_w1_a": torch.ones(32, 2), key + ".lokr_w1": torch.ones(2, 2)},
                  r"mixed.safetensors: layer .*make no layer kind t2i knows"),
        "bad_rank": ({key + ".lokr_w1_a": torch.ones(4, 2), key + ".lokr_w1_b": torch.ones(3, 2),
                      key + ".lokr_w2": torch.ones(8, 16)}, r"bad_rank.safetensors: layer .* malformed: .*rank"),
    }
    for name, (state, message) in cases.items():
        save_file(state, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(ModelLoadError, match=message):
            read_lora(tmp_path / f"{name}.safetensors")
    # a LoKr made for a wider model: refused before any weight changes
    save_file({key + ".lokr_w1": torch.ones(4, 4), key + ".lokr_w2": torch.ones(8, 16)}, str(tmp_path / "wide.safetensors"))
    before = snapshot(model)
    with pytest.raises(ModelLoadError, match=r"wide.safetensors: LoRA layer .*LoKr factors \(4, 4\).*does not fit"):
        with activate_extra_networks(loaded_for(model, tmp_path), Txt2ImgParams(prompt="<lora:wide>")):
            pass
    assert_bit_identical(model, before)


def test_sd2_text_encoder_names_in_both_spellings(tmp_path, caplog):
    """An SD 2.x-shaped model (OpenCLIP-sized text encoder converted to the transformers layout,
    linear projections in the UNet): kohya names (`lora_te_text_model_encoder_layers_...`) and
    the web UI's OpenCLIP names (`lora_te_model_transformer_resblocks_...`) reach the same
    modules; a layer past the converted encoder's end (OpenCLIP's unused last layer) is left out
    with a warning."""
    from transformers import CLIPTextModel

    pipe = tiny_pipeline()
    torch.manual_seed(2)
    sd2 = StableDiffusionModel(SDModelConfig(family="sd2", resolution=32), tokenizer=pipe.tokenizer,
                               text_encoder=CLIPTextModel(tiny_clip_config(layers=2, act="gelu")),
                               unet=tiny_unet(linear_projection=True), vae=pipe.vae,
                               scheduler_config={}).eval().requires_grad_(False)
    names = {  # file name -> text encoder module
        "lora_te_text_model_encoder_layers_1_mlp_fc1": "encoder.layers.1.mlp.fc1",
        "lora_te_text_model_encoder_layers_0_self_attn_k_proj": "encoder.layers.0.self_attn.k_proj",
        "lora_te_model_transformer_resblocks_0_attn_q_proj": "encoder.layers.0.self_attn.q_proj",
        "lora_te_model_transformer_resblocks_1_attn_out_proj": "encoder.layers.1.self_attn.out_proj",
        "lora_te_model_transformer_resblocks_0_mlp_c_fc": "encoder.layers.0.mlp.fc1",
        "lora_te_model_transformer_resblocks_1_mlp_c_proj": "encoder.layers.1.mlp.fc2",
    }
    state, layers = {}, {}
    for i, (key, name) in enumerate(names.items()):
        weight = module(sd2, "text_encoder", name).weight
        down, up = rand(2, weight.shape[1], seed=i), rand(weight.shape[0], 2, seed=20 + i)
        state |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(2.0)}
        layers[name] = (down, up)
    state |= {"lora_te_model_transformer_resblocks_2_mlp_c_fc.lora_down.weight": rand(2, 32, seed=40),
              "lora_te_model_transformer_resblocks_2_mlp_c_fc.lora_up.weight": rand(37, 2, seed=41)}
    save_file(state, str(tmp_path / "sd2.safetensors"))
    before = {name: module(sd2, "text_encoder", name).weight.clone() for name in layers}
    with caplog.at_level(logging.WARNING, logger="t2i"):
        with activate_extra_networks(loaded_for(sd2, tmp_path), Txt2ImgParams(prompt="<lora:sd2:0:0.8>")):
            for name, (down, up) in layers.items():  # te weight 0, unet 0.8: the text encoder must not move
                assert torch.equal(module(sd2, "text_encoder", name).weight, before[name])
        with activate_extra_networks(loaded_for(sd2, tmp_path), Txt2ImgParams(prompt="<lora:sd2:0.8:0>")):
            for name, (down, up) in layers.items():
                assert torch.allclose(module(sd2, "text_encoder", name).weight, before[name] + 0.8 * (up @ down),
                                      atol=1e-5), name
    assert "1 of 7 LoRA layers match no module" in caplog.text and "resblocks_2_mlp_c_fc" in caplog.text
    assert all(torch.equal(module(sd2, "text_encoder", name).weight, w) for name, w in before.items())
