"""Extra networks on tiny random Stable Diffusion models: LoRA files in the kohya (both UNet
layouts) and diffusers/peft formats merged and restored exactly, `<lora:...>` tags, textual
inversion embeddings placed at their tokens, a separate VAE file, kohya export, safe loading."""
import hashlib
import json
import logging
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2i.checkpoints.convert import text_name, to_original, vae_target
from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.registry import LoadedModel
from t2i.diffusion.conditioning import PromptEncoder
from t2i.extra_networks.embeddings import Embedding, load_embedding
from t2i.extra_networks.library import ExtraNetworks, activate_extra_networks, configure_extra_networks, lora_requests
from t2i.extra_networks.lora import read_lora, save_kohya_lora
from t2i.models.sd import SDModelConfig, StableDiffusionModel
from t2i.models.text import text_hidden_states
from t2i.pipelines.params import ParamError
from t2i.pipelines.txt2img import Txt2ImgParams, infotext_for, resolve_params, txt2img
from t2i.runtime import Runtime
from test_sd_checkpoints import tiny_pipeline, tiny_vae

CPU = Runtime.auto("full", "cpu")

# diffusers module -> its kohya name in the original (web-UI) UNet layout, written out by hand
# from the layout (2 layers per block: input block 1 + 3·level + layer, output block 3·level + layer).
UNET_MODULES = {
    "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q": "input_blocks_2_1_transformer_blocks_0_attn1_to_q",
    "down_blocks.0.attentions.0.proj_in": "input_blocks_1_1_proj_in",  # a 1x1 convolution in SD 1.x
    "down_blocks.1.resnets.0.conv1": "input_blocks_4_0_in_layers_2",  # a 3x3 convolution (LoCon)
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k": "output_blocks_5_1_transformer_blocks_0_attn2_to_k",
    "mid_block.attentions.0.proj_out": "middle_block_1_proj_out",
}
TE_MODULE = "encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def model():
    pipe = tiny_pipeline()
    scheduler = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
    sd = StableDiffusionModel(SDModelConfig(family="sd1", resolution=32), tokenizer=pipe.tokenizer,
                              text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae, scheduler_config=scheduler)
    return sd.eval().requires_grad_(False)


@pytest.fixture
def loaded(model, tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "embeddings").mkdir()
    networks = ExtraNetworks(lora_dirs=(tmp_path / "loras",), embedding_dirs=(tmp_path / "embeddings",))
    return LoadedModel(model, "tiny", "0123456789", tmp_path / "tiny.safetensors", CPU, networks)


def module(model, component, name):
    modules = {text_name(n): m for n, m in getattr(model, component).named_modules()}
    return modules[name]


def random_lora(weight, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    if weight.ndim == 4:
        return (torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=g),
                torch.randn(weight.shape[0], rank, 1, 1, generator=g))
    return torch.randn(rank, weight.shape[1], generator=g), torch.randn(weight.shape[0], rank, generator=g)


def expected(base, down, up, scale):
    product = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
    return base.float() + scale * product.reshape(base.shape)


def snapshot(model):
    return {part: {text_name(k): v.clone() for k, v in getattr(model, part).state_dict().items()}
            for part in ("unet", "text_encoder")}


def assert_bit_identical(model, before):
    for part, state in snapshot(model).items():
        assert state.keys() == before[part].keys()
        assert all(torch.equal(before[part][k], v) for k, v in state.items()), part


def lora_file(model, path, style, rank=2, seed=0):
    """A LoRA on UNET_MODULES and TE_MODULE in one of the naming styles; {(component, module): (down, up)}."""
    layers = {("unet", m): random_lora(module(model, "unet", m).weight, rank, seed + i)
              for i, m in enumerate(UNET_MODULES)}
    layers[("text_encoder", TE_MODULE)] = random_lora(module(model, "text_encoder", TE_MODULE).weight, rank, seed + 9)
    state, metadata = {}, {}
    for (component, name), (down, up) in layers.items():
        if style.startswith("kohya"):
            if component == "unet":
                key = "lora_unet_" + (UNET_MODULES[name] if style == "kohya_original" else name.replace(".", "_"))
            else:
                key = "lora_te_text_model_" + name.replace(".", "_")
            state |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up, key + ".alpha": torch.tensor(1.0)}
        elif style == "peft":
            prefix = f"{component}.{'text_model.' if component != 'unet' else ''}{name}"
            state |= {prefix + ".lora_A.weight": down, prefix + ".lora_B.weight": up}
            metadata = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 4, "unet.r": rank,
                                                             "text_encoder.lora_alpha": 4, "text_encoder.r": rank})}
        else:  # older diffusers: lora.down / lora.up, alpha = rank
            prefix = f"{component}.{name}"
            state |= {prefix + ".lora.down.weight": down, prefix + ".lora.up.weight": up}
    save_file(state, str(path), metadata=metadata or None)
    return layers


SCALES = {"kohya_diffusers": 0.5, "kohya_original": 0.5, "peft": 2.0, "diffusers_old": 1.0}  # alpha / rank


@pytest.mark.parametrize("style", list(SCALES))
def test_lora_styles_merge_and_restore_exactly(model, loaded, tmp_path, style):
    layers = lora_file(model, tmp_path / "loras" / "style.safetensors", style)
    before = snapshot(model)
    params = Txt2ImgParams(prompt="a cat <lora:style:0.7>")
    with activate_extra_networks(loaded, params):
        for (component, name), (down, up) in layers.items():
            base = before[component][name + ".weight"]
            merged = module(model, component, name).weight
            assert torch.allclose(merged, expected(base, down, up, 0.7 * SCALES[style]), atol=1e-5), name
            assert not torch.equal(merged, base)
    assert_bit_identical(model, before)


def test_several_loras_with_separate_text_encoder_and_unet_weights(model, loaded, tmp_path):
    a = lora_file(model, tmp_path / "loras" / "a.safetensors", "kohya_diffusers", seed=0)
    (tmp_path / "loras" / "sub").mkdir()  # LoRA folders are searched recursively, as in the web UI
    b = lora_file(model, tmp_path / "loras" / "sub" / "b.safetensors", "peft", seed=50)
    name = next(iter(UNET_MODULES))
    before = snapshot(model)
    with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:a:0.3:0.9> x <lora:b:-1>")):
        unet_w, te_w = module(model, "unet", name).weight, module(model, "text_encoder", TE_MODULE).weight
        want_unet = (expected(before["unet"][name + ".weight"], *a[("unet", name)], 0.9 * 0.5)
                     + expected(torch.zeros_like(unet_w), *b[("unet", name)], -1 * 2.0))
        want_te = (expected(before["text_encoder"][TE_MODULE + ".weight"], *a[("text_encoder", TE_MODULE)], 0.3 * 0.5)
                   + expected(torch.zeros_like(te_w), *b[("text_encoder", TE_MODULE)], -1 * 2.0))
        assert torch.allclose(unet_w, want_unet, atol=1e-5) and torch.allclose(te_w, want_te, atol=1e-5)
    assert_bit_identical(model, before)


def test_unmatched_layers_warn_and_foreign_files_fail(model, loaded, tmp_path, caplog):
    down, up = random_lora(module(model, "unet", next(iter(UNET_MODULES))).weight)
    good = "lora_unet_" + next(iter(UNET_MODULES)).replace(".", "_")
    save_file({good + ".lora_down.weight": down, good + ".lora_up.weight": up,
               "lora_unet_no_such_block.lora_down.weight": down.clone(),
               "lora_unet_no_such_block.lora_up.weight": up.clone()}, str(tmp_path / "loras" / "half.safetensors"))
    with caplog.at_level(logging.WARNING, logger="t2i"):
        with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:half>")):
            pass
    assert "1 of 2 LoRA layers match no module" in caplog.text
    save_file({"lora_unet_no_such_block.lora_down.weight": down, "lora_unet_no_such_block.lora_up.weight": up},
              str(tmp_path / "loras" / "foreign.safetensors"))
    with pytest.raises(ModelLoadError, match="foreign.safetensors.*none of its 1 LoRA layers"):
        with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:foreign>")):
            pass
    # a layer of the wrong shape (made for a wider model): refused before any weight changes
    before = snapshot(model)
    save_file({good + ".lora_down.weight": torch.ones(2, 7), good + ".lora_up.weight": torch.ones(32, 2)},
              str(tmp_path / "loras" / "wide.safetensors"))
    with pytest.raises(ModelLoadError, match="wide.safetensors.*does not fit"):
        with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:half> <lora:wide>")):
            pass
    assert_bit_identical(model, before)
    with pytest.raises(ParamError, match="'missing' not found.*loras"):
        with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:missing:1>")):
            pass


def test_lycoris_and_non_lora_files_are_refused_clearly(tmp_path):
    # LyCORIS kinds t2i applies are tested in test_lycoris.py; an incomplete one, or OFT, is refused
    save_file({"lora_unet_x.hada_w1_a": torch.ones(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(ModelLoadError, match="loha.safetensors: layer 'x' .*an incomplete LoHa layer"):
        read_lora(tmp_path / "loha.safetensors")
    save_file({"lora_unet_x.oft_blocks": torch.ones(2, 2)}, str(tmp_path / "oft.safetensors"))
    with pytest.raises(ModelLoadError, match="oft.safetensors is a OFT file"):
        read_lora(tmp_path / "oft.safetensors")
    save_file({"encoder.conv_in.weight": torch.ones(2, 2)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(ModelLoadError, match="vae.safetensors is not a LoRA file"):
        read_lora(tmp_path / "vae.safetensors")


def test_prompt_tags():
    requests = lora_requests("a <lora:ink:0.8> b <lora:x:0.2:0.6> <lora:y:te=0.1:unet=0.3> <lora:z> <hypernet:h:1>",
                             {"/models/extra.safetensors": 0.5, "pair": (0.1, 0.2)})
    assert [(r.name, r.te, r.unet) for r in requests] == [
        ("ink", 0.8, 0.8), ("x", 0.2, 0.6), ("y", 0.1, 0.3), ("z", 1.0, 1.0),
        ("/models/extra.safetensors", 0.5, 0.5), ("pair", 0.1, 0.2)]
    assert requests[4].alias == "extra"
    assert [r.name for r in lora_requests("<lyco:old:0.5>")] == ["old"]  # the old LyCORIS spelling
    with pytest.raises(ParamError, match="unknown extra network kind 'hypernetx'"):
        lora_requests("a <hypernetx:h:1>")  # a typo is an error, not silently ignored
    for bad in ("<lora:a:strong>", "<lora:a:1:2:3>", "<lora:a:dyn=4>"):
        with pytest.raises(ParamError):
            lora_requests(bad)
    with pytest.raises(ParamError, match="weight"):
        lora_requests("", {"a": "0.5"})


def test_generation_with_lora_and_embedding(model, loaded, tmp_path):
    """Tags are stripped from the text, the LoRA changes the image, the infotext carries the web
    UI's hashes, and the next generation without them is the original image again."""
    lora = tmp_path / "loras" / "detail.safetensors"
    lora_file(model, lora, "kohya_diffusers")
    width = model.text_encoder.get_input_embeddings().embedding_dim
    emb = tmp_path / "embeddings" / "shiny.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, width)}, "name": "shiny", "step": 100}, emb)
    base = Txt2ImgParams(prompt="a red cat", seed=3, steps=1, width=16, height=16, sampler="Euler", cfg_scale=3.0)
    plain = txt2img(loaded, base)
    tagged = txt2img(loaded, replace(base, prompt="a red cat <lora:detail:1>"))
    zero = txt2img(loaded, replace(base, prompt="a red cat <lora:detail:0>"))  # after `tagged`: restored exactly
    api = txt2img(loaded, replace(base, loras={str(lora): 1.0}))
    shiny = txt2img(loaded, replace(base, prompt="a red shiny cat"))
    pixels = lambda r: torch.tensor(list(r.images[0].getdata()))  # noqa: E731
    assert not torch.equal(pixels(plain), pixels(tagged)) and not torch.equal(pixels(plain), pixels(shiny))
    assert torch.equal(pixels(plain), pixels(zero)) and torch.equal(pixels(tagged), pixels(api))
    with open(lora, "rb") as f:  # the web UI's LoRA hash: sha256 of the tensor data after the header
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        lora_hash = hashlib.sha256(f.read()).hexdigest()[:12]
    assert f'Lora hashes: "detail: {lora_hash}"' in tagged.infotexts[0]
    assert tagged.infotexts[0].startswith("a red cat <lora:detail:1>\n")
    assert f'TI hashes: "shiny: {hashlib.sha256(emb.read_bytes()).hexdigest()[:12]}"' in shiny.infotexts[0]
    assert "Lora hashes" not in plain.infotexts[0] and "TI hashes" not in plain.infotexts[0]


# ----------------------------------------------------------------------------- textual inversion


def test_embedding_formats(tmp_path):
    torch.save({"string_to_param": {"*": torch.ones(3, 8)}, "name": "x"}, tmp_path / "webui.pt")
    save_file({"emb_params": torch.ones(2, 8)}, str(tmp_path / "st.safetensors"))
    save_file({"clip_l": torch.ones(2, 8), "clip_g": torch.ones(2, 12)}, str(tmp_path / "xl.safetensors"))
    (tmp_path / "concept").mkdir()
    torch.save({"<cat-toy>": torch.ones(8)}, tmp_path / "concept" / "learned_embeds.bin")
    webui, st, xl = (load_embedding(tmp_path / n) for n in ("webui.pt", "st.safetensors", "xl.safetensors"))
    concept = load_embedding(tmp_path / "concept" / "learned_embeds.bin")
    assert (webui.name, webui.count, st.name, st.count, concept.name, concept.count) == ("webui", 3, "st", 2, "<cat-toy>", 1)
    assert xl.for_width(8).shape == (2, 8) and xl.for_width(12).shape == (2, 12) and xl.for_width(16) is None
    assert webui.hash == hashlib.sha256((tmp_path / "webui.pt").read_bytes()).hexdigest()[:12]
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="other.pt is not a textual-inversion embedding"):
        load_embedding(tmp_path / "other.pt")


class _RunsCode:
    marker = None

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_embedding_is_refused(loaded, tmp_path):
    marker = tmp_path / "pwned"
    _RunsCode.marker = marker
    torch.save({"string_to_param": {"*": _RunsCode()}}, tmp_path / "embeddings" / "evil.pt")
    with pytest.raises(ModelLoadError, match="refused to load .*evil.pt"):
        with activate_extra_networks(loaded, Txt2ImgParams(prompt="an evil cat")):
            pass
    assert not marker.exists()


def token_inputs(text_encoder, store: list):
    """Record the token part of what the text encoder's embedding layer outputs (token +
    position embeddings, after every hook on the token table)."""
    embeddings = {text_name(n): m for n, m in text_encoder.named_modules()}["embeddings"]
    positions = embeddings.position_embedding.weight
    return embeddings.register_forward_hook(lambda m, i, out: store.append(out - positions[: out.shape[1]]))


def test_multi_vector_embedding_at_its_tokens(model):
    """The encoder's input at the embedding's positions is its vectors, and the result equals a
    text encoder whose vocabulary was extended by tokens with those vectors."""
    width = model.text_encoder.get_input_embeddings().embedding_dim
    vectors = torch.randn(3, width, generator=torch.Generator().manual_seed(1))
    emb = Embedding("mystyle", {"": vectors}, None, "abc")
    encoder = PromptEncoder.from_model(model, embeddings=[emb])
    chunk = encoder.chunks("a mystyle cat")[0]
    a, cat = model.tokenizer(["a", "cat"], add_special_tokens=False).input_ids
    assert chunk.ids[:7] == (49406, *a, 0, 0, 0, *cat, 49407) and chunk.fixes == ((2, "mystyle"),)
    seen = []
    hook = token_inputs(model.text_encoder, seen)
    try:
        z = encoder.encode("a mystyle cat")
    finally:
        hook.remove()
    assert torch.allclose(seen[0][0, 2:5], vectors, atol=1e-6)
    table = model.text_encoder.get_input_embeddings().weight
    assert torch.allclose(seen[0][0, :2], table[[49406, a[0]]], atol=1e-6)
    assert torch.allclose(seen[0][0, 5], table[cat[0]], atol=1e-6)
    # oracle: the same ids with three new vocabulary entries holding the vectors
    import copy

    oracle = copy.deepcopy(model.text_encoder)
    oracle.resize_token_embeddings(49408 + 3)
    with torch.no_grad():
        oracle.get_input_embeddings().weight[49408:] = vectors
    ids = torch.tensor([[49406, *a, 49408, 49409, 49410, *cat] + [49407] * 71])  # 77 ids, as the chunk
    assert torch.allclose(z, text_hidden_states(oracle, ids), atol=1e-6)
    assert not torch.allclose(z, PromptEncoder.from_model(model).encode("a mystyle cat"))


def test_embedding_vectors_count_toward_the_chunk(model):
    emb = Embedding("mystyle", {"": torch.zeros(3, 32)}, None, "")
    encoder = PromptEncoder.from_model(model, embeddings=[emb])
    chunks = encoder.chunks("cat " * 73 + "mystyle dog")  # 73 + 3 > 75: the embedding opens chunk 2
    assert len(chunks) == 2 and chunks[0].fixes == () and chunks[1].fixes == ((1, "mystyle"),)
    assert chunks[0].ids[74] == 49407  # the first chunk ends after its 73 tokens
    # a comma within 20 tokens of a full chunk's end moves what follows it, the embedding included
    chunks = encoder.chunks("cat " * 60 + ", mystyle" + " dog" * 20)
    assert chunks[0].fixes == () and chunks[1].fixes == ((1, "mystyle"),)
    assert chunks[1].ids[1:4] == (0, 0, 0)
    too_long = Embedding("huge", {"": torch.zeros(80, 32)}, None, "")
    with pytest.raises(ValueError, match="'huge' has 80 vectors"):
        PromptEncoder.from_model(model, embeddings=[too_long]).chunks("huge")


def test_embeddings_found_by_name_and_width(loaded, tmp_path, caplog):
    folder = tmp_path / "embeddings"
    save_file({"emb_params": torch.ones(2, 32)}, str(folder / "good-one.safetensors"))
    save_file({"emb_params": torch.ones(2, 768)}, str(folder / "sd15only.safetensors"))
    networks = loaded.extra_networks
    with caplog.at_level(logging.WARNING, logger="t2i"):
        found = networks.embeddings_named_in(["a Good-One, and sd15only", "goodone"], [32])
    assert [e.name for e in found] == ["good-one"]
    assert "sd15only" in caplog.text and "another model" in caplog.text
    assert networks.embeddings_named_in(["a good-ones cat"], [32]) == []


# ----------------------------------------------------------------------------- VAE


@pytest.fixture
def fresh(model, tmp_path):
    """The tiny model with a VAE of its own (a --vae file replaces VAE weights in place)."""
    import copy

    sd = StableDiffusionModel(model.config, tokenizer=model.tokenizer, text_encoder=model.text_encoder,
                              unet=model.unet, vae=copy.deepcopy(model.vae), scheduler_config=model.scheduler_config())
    return LoadedModel(sd, "tiny", "0123456789", tmp_path / "m.safetensors", CPU)


def test_vae_files_in_both_layouts(fresh, tmp_path):
    torch.manual_seed(5)
    other = tiny_vae()
    original = to_original({"vae": (other.state_dict(), lambda n: vae_target(n, dict(other.config)))})
    webui = {k.removeprefix("first_stage_model."): v for k, v in original.items()}
    webui["loss.logvar"] = torch.zeros(())  # web-UI VAE files may carry their training loss: skipped
    save_file(webui, str(tmp_path / "my-vae.safetensors"))
    configure_extra_networks(fresh, vae=tmp_path / "my-vae.safetensors")
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in fresh.model.vae.state_dict().items())
    params = resolve_params(Txt2ImgParams(prompt="x", seed=1), fresh)
    info = infotext_for(params, 1, fresh, "0.1.0")
    digest = hashlib.sha256((tmp_path / "my-vae.safetensors").read_bytes()).hexdigest()[:10]
    assert f"Model: tiny, VAE hash: {digest}, VAE: my-vae.safetensors," in info
    # diffusers layout, as a folder
    torch.manual_seed(6)
    third = tiny_vae()
    third.save_pretrained(tmp_path / "vae-folder")
    configure_extra_networks(fresh, vae=tmp_path / "vae-folder")
    assert all(torch.equal(v, third.state_dict()[k]) for k, v in fresh.model.vae.state_dict().items())


def test_wrong_vae_files_are_refused(fresh, tmp_path):
    from diffusers import AutoencoderKL

    before = {k: v.clone() for k, v in fresh.model.vae.state_dict().items()}
    wide = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=8, layers_per_block=1,
                         norm_num_groups=8)
    save_file(wide.state_dict(), str(tmp_path / "eight-channels.safetensors"))
    with pytest.raises(ModelLoadError, match="eight-channels.safetensors does not fit this model's VAE: .*wrong shape"):
        configure_extra_networks(fresh, vae=tmp_path / "eight-channels.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.ones(1, 1)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ModelLoadError, match="lora.safetensors is not a VAE file"):
        configure_extra_networks(fresh, vae=tmp_path / "lora.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        configure_extra_networks(fresh, vae=tmp_path / "nowhere.safetensors")
    assert all(torch.equal(v, before[k]) for k, v in fresh.model.vae.state_dict().items())
    assert fresh.extra_networks.vae_name is None


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("layout", ["diffusers", "original"])
def test_kohya_export_round_trip(model, loaded, tmp_path, layout):
    names = list(UNET_MODULES)[:3]
    layers = {f"unet.{n}": random_lora(module(model, "unet", n).weight, 4, i) for i, n in enumerate(names)}
    layers[f"text_encoder.text_model.{TE_MODULE}"] = random_lora(module(model, "text_encoder", TE_MODULE).weight, 4, 7)
    path = save_kohya_lora(tmp_path / "loras" / "trained.safetensors", layers, alpha=8,
                           unet_config=model.unet.config, unet_layout=layout)
    state = load_file(str(path))
    key = "lora_unet_" + (UNET_MODULES[names[0]] if layout == "original" else names[0].replace(".", "_"))
    assert float(state[key + ".alpha"]) == 8.0 and key + ".lora_up.weight" in state
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in state
    before = snapshot(model)
    with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:trained:1>")):
        for key, (down, up) in layers.items():
            component, _, name = key.partition(".")
            name = name.removeprefix("text_model.")
            want = expected(before[component][name + ".weight"], down, up, 8 / 4)
            assert torch.allclose(module(model, component, name).weight, want, atol=1e-5), key
    assert_bit_identical(model, before)


def test_cli_flags():
    from t2i.interfaces.cli import build_parser

    args = build_parser().parse_args(["generate", "a cat", "--vae", "v.safetensors", "--lora-dir", "a",
                                      "--lora-dir", "b", "--embeddings-dir", "e"])
    assert (args.vae, args.lora_dirs, args.embedding_dirs) == ("v.safetensors", ["a", "b"], ["e"])
    args = build_parser().parse_args(["img2img", "in.png", "x", "--vae", "v.pt"])
    assert args.vae == "v.pt"


def test_sdxl_lora_names_and_two_encoder_embeddings(tmp_path):
    """SDXL: kohya lora_te1_/lora_te2_ and original-layout UNet names; an embedding's clip_l
    vectors go to the first text encoder and its clip_g vectors to the second."""
    from test_sdxl_checkpoint import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    xl = StableDiffusionModel(SDModelConfig(family="sdxl", resolution=32), tokenizer=pipe.tokenizer,
                              text_encoder=pipe.text_encoder, unet=pipe.unet, vae=pipe.vae, scheduler_config={},
                              tokenizer_2=pipe.tokenizer_2, text_encoder_2=pipe.text_encoder_2).eval()
    # one folder for both kinds: a LoRA named in a <lora:...> tag is not taken for an embedding
    loaded = LoadedModel(xl, "xl", "0123456789", tmp_path / "xl.safetensors", CPU,
                         ExtraNetworks(lora_dirs=(tmp_path,), embedding_dirs=(tmp_path,)))
    targets = {  # (component, diffusers module): kohya name
        ("unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v"):
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v",
        ("text_encoder", "encoder.layers.1.mlp.fc1"): "lora_te1_text_model_encoder_layers_1_mlp_fc1",
        ("text_encoder_2", "encoder.layers.2.self_attn.out_proj"): "lora_te2_text_model_encoder_layers_2_self_attn_out_proj",
    }
    state, layers = {}, {}
    for i, ((component, name), key) in enumerate(targets.items()):
        layers[(component, name)] = down, up = random_lora(module(xl, component, name).weight, 2, i)
        state |= {key + ".lora_down.weight": down, key + ".lora_up.weight": up}  # no alpha: scale 1
    save_file(state, str(tmp_path / "xl-lora.safetensors"))
    before = {key: module(xl, *key).weight.clone() for key in layers}
    with activate_extra_networks(loaded, Txt2ImgParams(prompt="<lora:xl-lora:0.5>")):
        for key, (down, up) in layers.items():
            assert torch.allclose(module(xl, *key).weight, expected(before[key], down, up, 0.5), atol=1e-5), key
    assert all(torch.equal(module(xl, *key).weight, w) for key, w in before.items())

    clip_l, clip_g = torch.randn(2, 32), torch.randn(2, 48)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xlemb.safetensors"))
    encoder = PromptEncoder.from_model(xl, embeddings=[load_embedding(tmp_path / "xlemb.safetensors")])
    seen = {1: [], 2: []}
    hooks = [token_inputs(xl.text_encoder, seen[1]), token_inputs(xl.text_encoder_2, seen[2])]
    try:
        encoder.encode("a xlemb")
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.allclose(seen[1][0][0, 2:4], clip_l, atol=1e-6)
    assert torch.allclose(seen[2][0][0, 2:4], clip_g, atol=1e-6)
