"""Strict, typed validation of training YAML configs and of the configs embedded in model files
(t2i.config): wrong types and out-of-bounds sizes fail with the field named, before anything is
built; a hostile embedded config costs neither time nor memory."""
import dataclasses
import glob
import json
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from t2i.checkpoints.family_file import load_family_file, read_metadata, save_family_file
from t2i.config import MAX_PARAMETERS, check_value, from_dict, to_dict
from t2i.errors import ConfigError, ModelConfigError, ParamError
from t2i.models.ar import ARConfig
from t2i.models.autoencoder import KLAutoencoderConfig
from t2i.models.clip import CLIPModelConfig
from t2i.models.ddpm import DDPMConfig, PixelDDPM
from t2i.models.gan import GAN, GANConfig
from t2i.models.ldm import LDMConfig, UNetConfig, VAEConfig
from t2i.models.sr import SRConfig
from t2i.models.text import TextEncoderConfig
from t2i.models.vae import ConvVAEConfig
from t2i.models.vqgan import VQGANConfig
from t2i.training.registry import RECIPES, load_training_config

TINY_DDPM = DDPMConfig(resolution=16, block_out_channels=(8, 16), attention=(False, True), attention_head_dim=8,
                       norm_num_groups=4, num_train_timesteps=100)


def _write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ------------------------------------------------------------------------------- training YAML
def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 reads 3e-3 as the string "3e-3"; it used to reach AdamW and crash there
    path = _write(tmp_path, """\
        family: gan
        train: {lr: 3e-3, lr_d: 1E-4, steps: 1e3}
        """)
    _, cfg, _ = load_training_config(path)
    assert cfg.train.lr == 0.003 and type(cfg.train.lr) is float
    assert cfg.train.lr_d == 1e-4 and cfg.train.steps == 1000 and type(cfg.train.steps) is int
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)  # what used to fail


@pytest.mark.parametrize("family, yaml_text, field, problem", [
    ("gan", "train: {steps: true}", "train.steps", "integer"),
    ("gan", "train: {batch_size: 2.5}", "train.batch_size", "integer"),
    ("gan", "train: {batch_size: '2.5'}", "train.batch_size", "integer"),
    ("gan", "train: {lr: .nan}", "train.lr", "finite"),
    ("gan", "train: {lr: .inf}", "train.lr", "finite"),
    ("gan", "train: {lr: fast}", "train.lr", "number"),
    ("gan", "train: {lr: 0}", "train.lr", "greater than 0"),
    ("gan", "train: {loss: softplus}", "train.loss", "'nonsaturating' or 'hinge'"),
    ("gan", "data: {classes: 'no'}", "data.classes", "boolean"),
    ("gan", "data: {folder: 3}", "data.folder", "string"),
    ("gan", "data: {p_two: 1.5}", "data.p_two", "less than or equal to 1"),
    ("ddpm", "model: {block_out_channels: [8, true]}", "model.block_out_channels[1]", "integer"),
    ("ddpm", "model: {block_out_channels: []}", "model.block_out_channels", "at least 1 item"),
    ("ddpm", "model: {conditioning: caption}", "model.conditioning", "'none', 'class' or 'text'"),
    ("ldm", "model: {unet: {layers_per_block: 100000}}", "model.unet.layers_per_block", "less than or equal to 16"),
    ("ldm", "model: {text: {num_heads: 0}}", "model.text.num_heads", "greater than or equal to 1"),
    ("vqgan", "optim: {betas: [0.5, 0.9, 0.99]}", "optim.betas", "at most 2 items"),
    ("vqgan", "optim: {betas: [0.5, high]}", "optim.betas[1]", "number"),
])
def test_bad_values_name_the_field_and_the_file(tmp_path, family, yaml_text, field, problem):
    path = _write(tmp_path, f"family: {family}\n{yaml_text}\n")
    with pytest.raises(ConfigError) as err:
        load_training_config(path)
    message = str(err.value)
    assert str(path) in message and f"{field}:" in message and problem in message, message
    assert "\n" not in message


def test_unknown_nested_key_names_its_path_and_the_allowed_keys(tmp_path):
    path = _write(tmp_path, "family: ldm\nmodel: {unet: {chanels: [1]}}\n")
    with pytest.raises(ConfigError, match=r"unknown keys model\.unet\.chanels; UNetConfig at model\.unet takes "
                                          r"block_out_channels, cross_attention, "):
        load_training_config(path)


def test_every_shipped_training_config_loads_and_round_trips():
    paths = sorted(glob.glob("configs/**/*.yaml", recursive=True))
    assert len(paths) >= 20
    for path in paths:
        _, cfg, _ = load_training_config(path)
        assert from_dict(type(cfg), to_dict(cfg)) == cfg, path


@pytest.mark.parametrize("family", sorted(RECIPES))
def test_every_recipe_config_validates_its_defaults(family):
    config_cls, _ = RECIPES[family]()
    assert from_dict(config_cls, to_dict(config_cls()), where="defaults") == config_cls()


# -------------------------------------------------------------------- hostile values, every field
MODEL_CONFIGS = [LDMConfig(), DDPMConfig(), GANConfig(), ConvVAEConfig(), KLAutoencoderConfig(), VQGANConfig(),
                 ARConfig(), SRConfig()]
HOSTILE = [0, -1, 10**9, 2**70, 2.5, float("nan"), True, "x", "1e3", None, [], [0], [10**6] * 9, {}]


def _leaves(data, prefix=()):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,)


def _with(data, path, value):
    data = json.loads(json.dumps(data))
    inner = data
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return data


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda c: type(c).__name__)
def test_any_value_in_any_field_is_accepted_or_a_config_error(config):
    """No ZeroDivisionError, KeyError, IndexError, TypeError or OverflowError from a config,
    whatever a model file's metadata says; an accepted one has a sane size."""
    base = to_dict(config)
    tried = 0
    for path in _leaves(base):
        for value in HOSTILE:
            tried += 1
            try:
                built = from_dict(type(config), _with(base, path, value), where="file")
            except ConfigError as err:
                assert ".".join(path) in str(err) or "file: " in str(err)
                continue
            assert built.approx_params() <= MAX_PARAMETERS
    assert tried >= 4 * len(HOSTILE)


@pytest.mark.parametrize("config, fix, message", [
    (GANConfig(resolution=8, channels=8), {"norm_groups": 0}, "norm_groups: must be greater than or equal to 1"),
    (GANConfig(resolution=8, channels=8), {"norm_groups": 3}, "norm_groups=3 must divide every width"),
    (ARConfig(), {"n_head": 0}, "n_head: must be greater than or equal to 1"),
    (ARConfig(), {"code_shape": [16]}, "code_shape: has too few entries, got (16,)"),
    (TINY_DDPM, {"attention": [True]}, "one flag per entry"),
    (TINY_DDPM, {"attention_head_dim": 3}, "attention_head_dim 3 must divide"),
    (LDMConfig(), {"unet": {"cross_attention": [True]}}, "unet.cross_attention needs one flag per entry"),
    (LDMConfig(), {"unet": {"attention_heads": 3}}, "unet.attention_heads 3 must divide"),
    (LDMConfig(), {"text": {"hidden_size": 30}}, "text.hidden_size 30 must be divisible by text.num_heads 4"),
    (SRConfig(), {"scale": 0}, "scale: must be greater than or equal to 1"),
    (ConvVAEConfig(), {"channels": []}, "channels: must have at least 1 item"),
])
def test_configs_that_would_divide_by_zero_or_index_out_of_range_are_config_errors(config, fix, message):
    data = to_dict(config)
    for key, value in fix.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_dict(type(config), data, where="m.safetensors: config")


def test_absurd_total_size_is_refused_before_building():
    huge = {"block_out_channels": [8192] * 8, "cross_attention": [True] * 8, "layers_per_block": 16,
            "attention_heads": 8, "norm_num_groups": 32}
    with pytest.raises(ConfigError, match=r"billion parameters; t2i refuses more than 20 billion"):
        LDMConfig.from_dict({"unet": huge})


# ---------------------------------------------------------------------- estimates vs built models
SD15_LIKE = LDMConfig(resolution=512, vae=VAEConfig((128, 256, 512, 512), 2, 4, 32),
                      unet=UNetConfig((320, 640, 1280, 1280), (True, True, True, False), 2, 8, 32),
                      text=TextEncoderConfig(768, 12, 12, 3072, 77))


def _built_params(config) -> int:
    from t2i.models.ar import CodeTransformer
    from t2i.models.autoencoder import KLAutoencoder
    from t2i.models.ldm import build_conditioner, build_unet, build_vae
    from t2i.models.sr import SuperResolution
    from t2i.models.text import build_text_encoder
    from t2i.models.vae import ConvVAE
    from t2i.models.vqgan import VQGAN

    if isinstance(config, LDMConfig):
        modules = [build_unet(config), build_vae(config)]
        modules += [build_text_encoder(config.text)] if config.has_text_encoder else []
        modules += [build_conditioner(config)] if config.conditioning != "text" else []  # class/none/layout/retrieval tokens
    elif isinstance(config, CLIPModelConfig):
        from t2i.models.clip import build_clip

        modules = [build_clip(config)]
    else:
        cls = {DDPMConfig: PixelDDPM, GANConfig: GAN, ConvVAEConfig: ConvVAE, KLAutoencoderConfig: KLAutoencoder,
               VQGANConfig: VQGAN, ARConfig: CodeTransformer, SRConfig: SuperResolution}[type(config)]
        modules = [cls(config)]
    return sum(p.numel() for m in modules for p in m.parameters())


def _shipped_model_configs():
    for path in sorted(glob.glob("configs/*.yaml")):
        _, cfg, _ = load_training_config(path)
        model = getattr(cfg, "model", None)
        if isinstance(model, ARConfig):  # the recipe fills these from the first stage and the data
            model = dataclasses.replace(model, num_codes=512, code_shape=(16, 16),
                                        class_names=("a", "b") if model.conditioning == "class" else ())
        if isinstance(model, LDMConfig) and model.conditioning in ("class", "layout"):  # the recipe fills the classes
            model = dataclasses.replace(model, class_names=tuple(f"c{k}" for k in range(24)))
        if isinstance(model, LDMConfig) and model.conditioning == "retrieval":  # the recipe: the database's width
            model = dataclasses.replace(model, retrieval_dim=48)
        if model is not None:
            yield path, model


def test_parameter_estimates_match_built_models():
    cases = list(_shipped_model_configs()) + [("SD 1.5-sized", SD15_LIKE)]
    assert len(cases) >= 15
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        for name, config in cases:
            ratio = config.approx_params() / _built_params(config)
            assert 0.9 < ratio < 1.1, (name, ratio)


# -------------------------------------------------------------------------- embedded configs
@pytest.fixture(scope="module")
def ddpm_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_family_file(PixelDDPM(TINY_DDPM), tmp_path_factory.mktemp("ddpm") / "m.safetensors")


def _rewrite_config(source, target, change):
    metadata = read_metadata(source)
    config = json.loads(metadata["t2i_config"])
    change(config)
    save_file(load_file(str(source)), str(target), metadata={**metadata, "t2i_config": json.dumps(config)})
    return target


def test_embedded_layers_per_block_100000_is_a_model_config_error(ddpm_file, tmp_path):
    bad = _rewrite_config(ddpm_file, tmp_path / "deep.safetensors", lambda c: c.update(layers_per_block=100_000))
    with pytest.raises(ModelConfigError, match=r"deep\.safetensors: config: layers_per_block: must be less than "
                                               r"or equal to 16, got 100000"):
        load_family_file(PixelDDPM, bad)


def test_embedded_config_larger_than_its_file_is_refused(ddpm_file, tmp_path):
    # every size within bounds, but ~270 million parameters promised by a 1 MB file
    wide = _rewrite_config(ddpm_file, tmp_path / "wide.safetensors",
                           lambda c: c.update(block_out_channels=[2048, 2048], norm_num_groups=32))
    with pytest.raises(ModelConfigError, match=r"wide\.safetensors: the embedded config describes a model of about "
                                               r"[\d,]+ parameters but the file stores [\d,]+ values"):
        load_family_file(PixelDDPM, wide)


def test_embedded_zero_groups_is_a_model_config_error_not_zero_division(tmp_path):
    path = save_family_file(GAN(GANConfig(resolution=8, channels=8, max_channels=16)), tmp_path / "gan.safetensors")
    bad = _rewrite_config(path, tmp_path / "zero.safetensors", lambda c: c.update(norm_groups=0))
    with pytest.raises(ModelConfigError, match="norm_groups: must be greater than or equal to 1"):
        load_family_file(GAN, bad)


def test_hostile_file_fails_fast_with_little_memory(ddpm_file, tmp_path):
    """In a fresh process: the refusal costs well under 500 MB over the imports (the old loader
    built 100,000 resnet layers and passed 2.7 GB)."""
    bad = _rewrite_config(ddpm_file, tmp_path / "deep.safetensors", lambda c: c.update(layers_per_block=100_000))
    script = textwrap.dedent(f"""
        import resource, sys
        from t2i.checkpoints.family_file import load_family_file
        from t2i.errors import ModelConfigError
        from t2i.models.ddpm import PixelDDPM
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_family_file(PixelDDPM, {str(bad)!r})
        except ModelConfigError:
            print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 500


def test_embedded_ldm_configs_in_single_files_and_folders(tmp_path):
    from t2i.checkpoints.embedded import LDM_CONFIG_KEY, load_embedded_single_file

    config = to_dict(LDMConfig())
    config["unet"]["layers_per_block"] = 100_000
    path = tmp_path / "ldm.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={LDM_CONFIG_KEY: json.dumps(config)})
    with pytest.raises(ModelConfigError, match=r"ldm\.safetensors: t2i_ldm_config: unet\.layers_per_block: must be"):
        load_embedded_single_file(path)
    config["unet"]["layers_per_block"] = 1
    config["vae"]["norm_num_groups"] = 0
    save_file({"x": torch.zeros(1)}, str(path), metadata={LDM_CONFIG_KEY: json.dumps(config)})
    with pytest.raises(ModelConfigError, match=r"vae\.norm_num_groups: must be greater than or equal to 1"):
        load_embedded_single_file(path)


def test_embedded_stable_diffusion_component_configs_are_bounded(tmp_path):
    from t2i.checkpoints.component_limits import check_component_config
    from t2i.checkpoints.embedded import SD_CONFIGS_KEY, load_embedded_single_file
    from t2i.checkpoints.single_file import bundled_config_dir, read_configs

    shipped = read_configs(bundled_config_dir("sdxl"))  # real configs pass (read_configs checks them)
    check_component_config("unet", shipped.unet, "sdxl unet")
    configs = {"sd": {"clip_skip": 1}, "unet": {**shipped.unet, "layers_per_block": 100_000}, "vae": shipped.vae,
               "text_encoder": shipped.text_encoder, "scheduler": shipped.scheduler}
    path = tmp_path / "sd.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={SD_CONFIGS_KEY: json.dumps(configs)})
    with pytest.raises(ModelConfigError, match=r"sd\.safetensors: t2i_sd_configs: unet: layers_per_block: must be "
                                               r"less than or equal to 16, got 100000"):
        load_embedded_single_file(path)
    configs["unet"]["layers_per_block"] = 2
    configs["text_encoder"]["num_hidden_layers"] = "many"
    save_file({"x": torch.zeros(1)}, str(path), metadata={SD_CONFIGS_KEY: json.dumps(configs)})
    with pytest.raises(ModelConfigError, match=r"text_encoder: num_hidden_layers: must be a valid integer"):
        load_embedded_single_file(path)
    configs["text_encoder"]["num_hidden_layers"] = 12
    configs["sd"]["clip_skip"] = "2; rm -rf"
    save_file({"x": torch.zeros(1)}, str(path), metadata={SD_CONFIGS_KEY: json.dumps(configs)})
    with pytest.raises(ModelConfigError, match=r"sd\.clip_skip: must be a valid integer"):
        load_embedded_single_file(path)


def test_ldm_folder_config_is_validated(tiny_model_dir, tmp_path):
    import shutil

    from t2i.checkpoints.diffusers_folder import load_ldm_folder

    folder = shutil.copytree(tiny_model_dir, tmp_path / "m")
    meta = json.loads((folder / "t2i_config.json").read_text())
    meta["config"]["unet"]["block_out_channels"] = [4096, 4096]
    meta["config"]["unet"]["norm_num_groups"] = 32
    (folder / "t2i_config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelConfigError, match=r"t2i_config\.json describes a model of about [\d,]+ parameters but "
                                               r"the weight files store"):
        load_ldm_folder(folder)
    meta["config"]["resolution"] = True
    (folder / "t2i_config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelConfigError, match=r"t2i_config\.json: resolution: must be a valid integer, got True"):
        load_ldm_folder(folder)


# ----------------------------------------------------------------------------- one value, one hint
def test_check_value_for_other_callers():
    from typing import Annotated

    from t2i.config import between

    steps = Annotated[int, between(1, 150)]
    assert check_value(20, steps, "steps", ParamError) == 20
    assert check_value("2e1", steps, "steps", ParamError) == 20
    with pytest.raises(ParamError, match="steps: must be a valid integer, got True"):
        check_value(True, steps, "steps", ParamError)
    with pytest.raises(ParamError, match="cfg_scale: must be a finite number"):
        check_value(math.nan, float, "cfg_scale", ParamError)
    with pytest.raises(ParamError, match="tiling: must be a valid boolean, got 'no'"):
        check_value("no", bool, "tiling", ParamError)


# ------------------------------------------------------------------------------------ the CLI
def test_train_with_a_bad_config_prints_one_error_line_and_exits_2(tmp_path):
    path = _write(tmp_path, "family: gan\ntrain: {batch_size: 2.5}\n", name="bad.yaml")
    command = [sys.executable, "-m", "t2i.interfaces.cli", "train", str(path), "--outdir", str(tmp_path / "x")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2i train: error: "), out.stderr
    assert "bad.yaml: train.batch_size: must be a valid integer, got 2.5" in lines[0]
    assert not (tmp_path / "x").exists()
