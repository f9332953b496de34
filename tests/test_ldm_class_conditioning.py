"""Class-conditional and unconditional latent diffusion (`model.conditioning: class | none`)."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_ldm_config
from test_trainer import tiny_train_config
from t2i.checkpoints.diffusers_folder import T2I_CONFIG, load_ldm_folder
from t2i.config import ConfigError
from t2i.data.labels import SHAPES_CLASSES
from t2i.errors import ModelConfigError, ModelLoadError
from t2i.models.ldm import LDMConfig
from t2i.pipelines.families import load_family_model, sample_family
from t2i.training.ldm import train_ldm


def _train(tmp_path_factory, kind):
    cfg = tiny_train_config(vae_steps=2, unet_steps=4)
    cfg.model = replace(cfg.model, conditioning=kind)
    outdir = tmp_path_factory.mktemp(f"ldm-{kind}")
    train_ldm(cfg, outdir)
    return outdir


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    return _train(tmp_path_factory, "class")


@pytest.fixture(scope="module")
def none_run(tmp_path_factory):
    return _train(tmp_path_factory, "none")


def _pixels(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32))


def test_config_default_is_text_and_unknown_kinds_are_config_errors():
    assert LDMConfig().conditioning == "text"
    assert LDMConfig.from_dict({"resolution": 32}).conditioning == "text"  # old configs load unchanged
    with pytest.raises(ConfigError, match="conditioning"):
        LDMConfig.from_dict({"conditioning": "labels"})
    with pytest.raises(ConfigError, match="class_names"):
        LDMConfig.from_dict({"conditioning": "text", "class_names": ["red circle"]})


def test_class_run_records_its_classes_and_has_no_text_encoder(class_run):
    saved = json.loads((class_run / "model" / T2I_CONFIG).read_text())["config"]
    assert saved["conditioning"] == "class" and tuple(saved["class_names"]) == SHAPES_CLASSES
    assert not (class_run / "model" / "text_encoder").exists()
    model = load_ldm_folder(class_run / "model")
    assert model.text_encoder is None and model.conditioner.embedding.num_embeddings == len(SHAPES_CLASSES) + 1
    index = json.loads((class_run / "model" / "model_index.json").read_text())
    assert index["text_encoder"] == [None, None]


def test_class_model_conditions_on_the_class(class_run):
    loaded = load_family_model(class_run)
    assert loaded.family == "ldm" and loaded.name == class_run.name
    red = sample_family(loaded, 1, 7, "red circle", steps=3)[0]
    red_again = sample_family(loaded, 1, 7, "red circle", steps=3)[0]
    blue = sample_family(loaded, 1, 7, "blue square", steps=3)[0]
    assert red.size == (32, 32)
    assert torch.equal(_pixels(red), _pixels(red_again))  # same seed and class: the same image
    assert not torch.equal(_pixels(red), _pixels(blue))  # same seed, another class: another image
    cycled = sample_family(loaded, 3, 7, steps=2, guidance_scale=1.0)  # no class: class i mod K
    assert len(cycled) == 3
    with pytest.raises(ValueError, match="red circle"):  # the error lists the valid names
        sample_family(loaded, 1, 0, "purple dot", steps=2)


def test_unconditional_model_samples_and_refuses_classes(none_run):
    loaded = load_family_model(none_run / "model")
    images = sample_family(loaded, 2, 0, steps=2, width=48)
    assert [im.size for im in images] == [(48, 32)] * 2
    assert not torch.equal(_pixels(images[0]), _pixels(images[1]))  # seed + i
    with pytest.raises(ValueError, match="unconditional"):
        sample_family(loaded, 1, 0, "red circle", steps=2)
    with pytest.raises(ValueError, match="unconditional"):
        sample_family(loaded, 1, 0, guidance_scale=3.0, steps=2)


def test_loading_is_strict_about_the_conditioning_kind(class_run, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(class_run / "model", folder)
    meta = json.loads((folder / T2I_CONFIG).read_text())
    meta["config"]["conditioning"] = "none"  # class names on an unconditional model
    (folder / T2I_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ModelConfigError, match="class_names"):
        load_ldm_folder(folder)
    meta["config"]["class_names"] = meta["config"]["class_names"][:5]  # fewer classes than the table holds
    meta["config"]["conditioning"] = "class"
    (folder / T2I_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError):
        load_ldm_folder(folder)


def test_generate_and_sample_point_to_each_other(class_run, tmp_path):
    from t2i.checkpoints.registry import load_model

    with pytest.raises(ModelLoadError, match="t2i sample"):
        load_model(class_run / "model")
    text = tiny_ldm_config()
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    save_ldm_folder(LatentDiffusion(text), tmp_path / "text")
    with pytest.raises(ModelLoadError, match="t2i generate"):
        load_family_model(tmp_path / "text")


def test_cli_sample_class_and_wrong_class(class_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "t2i.interfaces.cli", "sample", str(class_run), "--n", "2", "--steps", "2",
           "--threads", "1"]
    out = subprocess.run([*cli, "--class", "red circle", "-o", str(tmp_path / "grid.png")], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (64, 32) and "red circle" in grid.info["parameters"]
    out = subprocess.run([*cli, "--class", "purple dot", "-o", str(tmp_path / "bad.png")], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown class 'purple dot'" in out.stderr and "yellow triangle" in out.stderr
    assert not (tmp_path / "bad.png").exists()


def test_folder_classes_are_the_sub_directories(tmp_path):
    for k, (name, colour) in enumerate([("cats", (200, 30, 30)), ("dogs", (30, 30, 200))] * 2):
        (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), colour).save(tmp_path / "data" / name / f"{k}.png")
    cfg = tiny_train_config(vae_steps=1, unet_steps=1)
    cfg.model = replace(cfg.model, conditioning="class")
    cfg.data = replace(cfg.data, name="folder", folder=str(tmp_path / "data"))
    model = train_ldm(cfg, tmp_path / "run")
    assert model.config.class_names == ("cats", "dogs")
    images = sample_family(load_family_model(tmp_path / "run"), 1, 0, "dogs", steps=1)
    assert images[0].size == (32, 32)
    cfg.model = replace(cfg.model, conditioning="layout", class_names=())
    with pytest.raises(ValueError, match="no boxes"):
        train_ldm(cfg, tmp_path / "layout")
