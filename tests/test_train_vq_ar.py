"""The VQGAN and code-transformer recipes end to end on tiny configs: outputs, exact resume."""
import json

import pytest
import torch

from t2i.checkpoints.family_file import load_family_file
from t2i.models.ar import CodeTransformer, generate_images
from t2i.models.vqgan import VQGAN, DiscriminatorConfig, VQGANConfig, VQGANLossConfig
from t2i.training.ar import AROptimConfig, ARTrainConfig, train_ar
from t2i.training.ldm import DataConfig
from t2i.training.vqgan import VQGANOptimConfig, VQGANTrainConfig, train_vqgan


def tiny_vqgan_train(steps=6, disc_start=3):
    return VQGANTrainConfig(
        model=VQGANConfig(resolution=16, block_out_channels=(16, 16), code_dim=8, num_codes=16, norm_num_groups=8),
        disc=DiscriminatorConfig(channels=8, layers=2, norm_groups=4),
        loss=VQGANLossConfig(disc_start=disc_start),
        data=DataConfig(size=24, seed=0),
        optim=VQGANOptimConfig(steps=steps, batch_size=4, lr=2e-3, warmup_steps=1, log_every=0, checkpoint_every=2),
        report_images=16,
    )


def tiny_ar_train(first_stage, conditioning="text", steps=6):
    from t2i.models.ar import ARConfig

    return ARTrainConfig(
        first_stage=str(first_stage),
        model=ARConfig(conditioning=conditioning, text_max_length=20, text_embed_dim=8, n_embd=32, n_layer=1, n_head=2),
        data=DataConfig(size=24, seed=0),
        optim=AROptimConfig(steps=steps, batch_size=4, lr=3e-3, warmup_steps=1, log_every=0, checkpoint_every=2,
                            ema_decay=0.9, encode_batch_size=8),
    )


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    outdir = tmp_path_factory.mktemp("vqgan")
    train_vqgan(tiny_vqgan_train(), outdir)
    return outdir


def test_vqgan_recipe_writes_model_report_and_trains_the_discriminator(first_stage):
    state = torch.load(first_stage / "vqgan.ckpt", weights_only=True)
    assert state["step"] == 6 and len(state["losses"]) == 6
    assert len(state["history"]["d_loss"]) == 3  # the discriminator joined at step 3
    report = json.loads((first_stage / "vqgan_report.json").read_text())
    assert 0 < report["codebook_used"] <= 1 and 1 <= report["perplexity"] <= 16 and report["images"] == 16
    model = load_family_file(VQGAN, first_stage / "vqgan.safetensors")
    assert model.code_shape == (8, 8)


def test_vqgan_resume_is_exact(tmp_path, first_stage):
    cfg = tiny_vqgan_train()
    train_vqgan(cfg, tmp_path, stop_after=4)  # a crash after step 4 (the discriminator is on)
    resumed = train_vqgan(cfg, tmp_path, resume=True)
    straight = load_family_file(VQGAN, first_stage / "vqgan.safetensors")
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = torch.load(first_stage / "vqgan.ckpt", weights_only=True)["history"]
    lb = torch.load(tmp_path / "vqgan.ckpt", weights_only=True)["history"]
    assert la == lb


def test_ar_recipe_text_conditional_with_exact_resume(tmp_path, first_stage):
    cfg = tiny_ar_train(first_stage / "vqgan.safetensors")
    straight = train_ar(cfg, tmp_path / "a")
    train_ar(cfg, tmp_path / "b", stop_after=3)
    from t2i.pipelines.families import load_family_model, sample_family

    mid = load_family_model(tmp_path / "b")  # unfinished: the checkpoint's EMA weights, the config's first stage
    assert mid.family == "ar" and mid.path.name == "ar.ckpt"
    assert sample_family(mid, 1, 0, prompt="a red circle", top_k=4)[0].size == (16, 16)
    resumed = train_ar(cfg, tmp_path / "b", resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded = load_family_file(CodeTransformer, tmp_path / "a" / "ar.safetensors")
    assert loaded.config.num_codes == 16 and loaded.config.code_shape == (8, 8)
    vqgan = load_family_file(VQGAN, tmp_path / "a" / "vqgan.safetensors")  # the folder carries its first stage
    images = generate_images(loaded, vqgan, ["a red circle"], seeds=[0], top_k=4)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_ar_recipe_class_conditional_uses_single_object_scenes(tmp_path, first_stage):
    from t2i.data.shapes import ShapesDataset
    from t2i.training.ar import class_labels

    model = train_ar(tiny_ar_train(first_stage / "vqgan.safetensors", "class", steps=2), tmp_path)
    assert len(model.config.class_names) == 24 and model.config.class_names[0] == "red circle"
    scenes = [ShapesDataset(24, 0).scene(i) for i in range(24)]
    labels, names = class_labels(DataConfig(size=24, seed=0), [s.caption for s in scenes])
    assert any(label is None for label in labels) and any(label is not None for label in labels)
    for label, scene in zip(labels, scenes):
        if len(scene.objects) == 1:
            assert names[label] == f"{scene.objects[0].color} {scene.objects[0].shape}"
        else:
            assert label is None


def test_ar_recipe_refuses_mismatched_config(tmp_path, first_stage):
    cfg = tiny_ar_train(first_stage / "vqgan.safetensors")
    cfg.model.num_codes = 99
    with pytest.raises(ValueError, match="num_codes is 99"):
        train_ar(cfg, tmp_path)
    with pytest.raises(ValueError, match="first_stage is not set"):
        train_ar(ARTrainConfig(), tmp_path)


def test_registry_knows_the_families():
    from pathlib import Path

    from t2i.training.registry import load_training_config

    configs = Path(__file__).resolve().parent.parent / "configs"
    family, cfg, _ = load_training_config(configs / "shapes-vqgan.yaml")
    assert family == "vqgan" and cfg.model.code_shape == (16, 16) and cfg.loss.perceptual_weight == 0
    family, cfg, _ = load_training_config(configs / "shapes-ar.yaml")
    assert family == "ar" and cfg.model.conditioning == "text"
