"""`t2i convert` and `t2i merge` with tiny random models: round trips through the original
single-file layout and diffusers folders (read back by diffusers itself), merge arithmetic,
web-UI model hashes, and outputs that are never half-written or silently replaced."""
import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_ldm_config
from t2i.checkpoints.convert import text_name
from t2i.checkpoints.export import convert_model, save_single_file_with_configs
from t2i.checkpoints.merge import merge_models
from t2i.checkpoints.registry import load_model
from t2i.interfaces.cli import main
from t2i.metadata import parse_infotext
from t2i.models.ldm import LatentDiffusion
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img
from t2i.runtime import Runtime

CPU = Runtime.auto("full", "cpu")
PARTS = ("unet", "vae", "text_encoder")


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def same_weights(a, b, parts=PARTS):
    for part in parts:
        sa = {text_name(k): v for k, v in getattr(a, part).state_dict().items()}
        sb = {text_name(k): v for k, v in getattr(b, part).state_dict().items()}
        assert sa.keys() == sb.keys(), part
        bad = [k for k in sa if not torch.equal(sa[k].float(), sb[k].float())]
        assert not bad, f"{part}: {bad[:3]}"


def image(loaded, seed=3):
    result = txt2img(loaded, Txt2ImgParams(prompt="a red circle", steps=3, seed=seed, sampler="Euler"))
    return np.asarray(result.images[0]), parse_infotext(result.infotexts[0])


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """The tiny t2i model written as one original-layout file by the CLI."""
    path = tmp_path_factory.mktemp("convert") / "tiny-export.safetensors"
    assert main(["convert", str(tiny_model_dir), str(path), "--to", "single-file"]) == 0
    return path


# ----------------------------------------------------------------------------- convert


def test_t2i_model_round_trips_through_a_single_file(tiny_model_dir, exported):
    state = load_file(str(exported))
    assert {k.split(".")[0] for k in state} == {"model", "first_stage_model", "cond_stage_model"}
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in state  # the prefix
    with safe_open(str(exported), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["t2i_ldm_config"])["resolution"] == 32 and meta["modelspec.prediction_type"] == "epsilon"

    original, back = load_model(tiny_model_dir, CPU), load_model(exported, CPU)
    assert isinstance(back.model, LatentDiffusion)
    same_weights(original.model, back.model)
    (pixels_a, _), (pixels_b, info) = image(original), image(back)
    assert pixels_a.std() > 1 and np.array_equal(pixels_a, pixels_b)
    assert info["Model"] == "tiny-export" and info["Model hash"] == sha256(exported)[:10]


def test_single_file_to_diffusers_folder_loads_in_diffusers(tiny_model_dir, exported, tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "as-diffusers"
    result = convert_model(exported, out, "diffusers")
    assert result.kind == "t2i latent diffusion" and (out / "model_index.json").is_file()
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # what older transformers read
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    original = load_model(tiny_model_dir, CPU).model
    same_weights(original, pipe)
    again = load_model(out, CPU)  # and t2i reads it back as its own model
    assert isinstance(again.model, LatentDiffusion)
    same_weights(original, again.model)


def test_sd_single_file_to_diffusers_and_back(tmp_path):
    """A Stable Diffusion file (written without t2i's configs) -> diffusers folder -> single file
    with configs, which t2i then loads with no config folder at all."""
    from diffusers import StableDiffusionPipeline

    from t2i.checkpoints.convert import save_single_file
    from test_sd_checkpoints import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "configs")
    plain = tmp_path / "plain.safetensors"
    save_single_file(pipe, plain)
    assert main(["convert", str(plain), str(tmp_path / "folder"), "--to", "diffusers",
                 "--config-dir", str(tmp_path / "configs")]) == 0
    other = StableDiffusionPipeline.from_pretrained(str(tmp_path / "folder"), local_files_only=True)
    same_weights(pipe, other)
    result = convert_model(tmp_path / "folder", tmp_path / "again.safetensors", "single-file", half=True)
    assert result.kind == "SD 1.x" and result.dtype == torch.float16
    model = load_model(tmp_path / "again.safetensors", CPU).model
    assert model.config.family == "sd1" and model.scheduler_config()["beta_schedule"] == "scaled_linear"
    for part in PARTS:  # float16 storage: equal after rounding the originals the same way
        ref = {text_name(k): v for k, v in getattr(pipe, part).state_dict().items()}
        got = {text_name(k): v for k, v in getattr(model, part).state_dict().items()}
        assert all(torch.equal(ref[k].half().float(), got[k]) for k in ref), part


def test_sdxl_single_file_to_diffusers_and_back(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from test_sdxl_checkpoint import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline()
    pipe.save_pretrained(tmp_path / "xl")
    convert_model(tmp_path / "xl", tmp_path / "xl.safetensors", "single-file")
    with safe_open(str(tmp_path / "xl.safetensors"), "pt") as f:
        assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in f.keys()
    convert_model(tmp_path / "xl.safetensors", tmp_path / "xl-back", "diffusers")
    back = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "xl-back"), local_files_only=True)
    same_weights(pipe, back, PARTS + ("text_encoder_2",))
    assert json.loads((tmp_path / "xl-back" / "tokenizer_2" / "tokenizer_config.json").read_text())["pad_token"] == "!"


def test_convert_never_replaces_or_half_writes(tiny_model_dir, exported, tmp_path, capsys):
    target = tmp_path / "keep.safetensors"
    target.write_bytes(b"precious")
    assert main(["convert", str(tiny_model_dir), str(target), "--to", "single-file"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert target.read_bytes() == b"precious"
    assert main(["convert", str(tiny_model_dir), str(tmp_path / "x.ckpt"), "--to", "single-file"]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "y.safetensors"), "--to", "single-file"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", str(exported), str(exported), "--to", "single-file", "--overwrite"]) == 2
    assert "one of the inputs" in capsys.readouterr().err
    assert main(["convert", str(tiny_model_dir), str(target), "--to", "single-file", "--overwrite"]) == 0
    assert load_file(str(target)) and not list(tmp_path.glob(".*tmp*"))  # replaced whole, no leftovers


# ----------------------------------------------------------------------------- merge


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three tiny t2i models of one architecture, as single files."""
    root = tmp_path_factory.mktemp("merge")
    paths = []
    for seed, name in ((1, "a"), (2, "b"), (3, "c")):
        torch.manual_seed(seed)
        path = root / f"{name}.safetensors"
        save_single_file_with_configs(LatentDiffusion(tiny_ldm_config()), path)
        paths.append(path)
    return paths


def test_weighted_sum_is_the_arithmetic(three, tmp_path):
    a, b, _ = three
    result = merge_models(a, b, method="weighted-sum", alpha=0.3, output=tmp_path / "ws.safetensors")
    merged, sa, sb = (load_file(str(p)) for p in (result.path, a, b))
    assert merged.keys() == sa.keys() and result.tensors == len(sa)
    for k in sa:
        expected = (1 - 0.3) * sa[k] + 0.3 * sb[k] if sa[k].is_floating_point() else sa[k]
        assert merged[k].dtype == sa[k].dtype and torch.allclose(merged[k], expected, atol=1e-6, rtol=1e-5), k
    assert any(not torch.equal(merged[k], sa[k]) for k in sa)


def test_add_difference_is_the_arithmetic_and_alpha_zero_is_a(three, tmp_path):
    a, b, c = three
    out = merge_models(a, b, c, method="add-difference", alpha=0.7, output=tmp_path / "ad.safetensors").path
    merged, sa, sb, sc = (load_file(str(p)) for p in (out, a, b, c))
    for k in sa:
        assert torch.allclose(merged[k], sa[k] + 0.7 * (sb[k] - sc[k]), atol=1e-6, rtol=1e-5), k
    for method, extra in (("weighted-sum", ()), ("add-difference", (c,))):
        zero = load_file(str(merge_models(a, b, *extra, method=method, alpha=0.0,
                                          output=tmp_path / f"zero-{method}.safetensors").path))
        assert all(torch.equal(zero[k], sa[k]) for k in sa), method


def test_mismatched_architectures_fail_before_writing(three, tmp_path):
    from t2i.models.text import TextEncoderConfig

    other = tiny_ldm_config()
    other.text = TextEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_length=32)
    odd = tmp_path / "odd.safetensors"
    save_single_file_with_configs(LatentDiffusion(other), odd)  # one more text encoder layer
    with pytest.raises(ValueError, match=r"not the same architecture: tensor 'cond_stage_model\..*layers\.1\..*' "
                                         r"is in B but not in A"):
        merge_models(three[0], odd, output=tmp_path / "bad.safetensors")
    wide = tiny_ldm_config()
    wide.unet.block_out_channels = (16, 48)
    save_single_file_with_configs(LatentDiffusion(wide), tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match=r"tensor 'model\.diffusion_model\..*' has shape \[\d+.*\] in A but"):
        merge_models(three[0], tmp_path / "wide.safetensors", output=tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(ValueError, match="add-difference needs three models"):
        merge_models(three[0], three[1], method="add-difference", output=tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="0 <= alpha <= 1"):
        merge_models(three[0], three[1], alpha=1.5, output=tmp_path / "bad.safetensors")


def test_merge_cli_prints_the_web_ui_hash_and_infotexts_show_it(three, tmp_path, capsys):
    a, b, _ = three
    out = tmp_path / "mix.safetensors"
    assert main(["merge", str(a), str(b), "--alpha", "0.25", "-o", str(out), "--name", "my mix", "--half"]) == 0
    captured = capsys.readouterr()
    digest = sha256(out)
    assert captured.out.strip() == str(out)
    assert f"Model hash: {digest[:10]}, Model: mix" in captured.err
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    recipe = json.loads(meta["sd_merge_recipe"])
    assert meta["modelspec.title"] == "my mix" and recipe["multiplier"] == 0.25
    assert recipe["primary_model_hash"] == sha256(a) and recipe["interp_method"] == "Weighted sum"
    loaded = load_model(out, CPU)  # A's embedded config rebuilds the merge
    pixels, info = image(loaded)
    assert pixels.std() > 1 and info["Model hash"] == digest[:10] and info["Model"] == "mix"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 2  # exists: refused
    assert "already exists" in capsys.readouterr().err and sha256(out) == digest
