"""The CPU-time training budget: it stops tiny runs early and they still export a model that samples."""
import json
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_ldm_config
from t2i.training.budget import CPUBudget, train_on_budget

BIG = 100_000  # more steps than a 0.02-minute budget can reach


def test_budget_views_share_one_clock_and_one_report():
    budget = CPUBudget(1.0)
    first = budget.until(0.25)
    assert first.start == budget.start and first.minutes * first.share == 0.25
    assert not budget.exhausted() and not first.exhausted()
    assert not first.end_stage("a", 10, 10)  # finished, not stopped
    assert [s["name"] for s in budget.summary()["stages"]] == ["a"]
    spent = CPUBudget(1.0, start=budget.start - 61)  # as if 61 CPU-seconds were used already
    assert spent.exhausted() and spent.until(0.5).exhausted()
    assert spent.end_stage("b", 3, 10)
    with pytest.raises(ValueError, match="positive"):
        CPUBudget(0)
    with pytest.raises(ValueError, match="share"):
        budget.until(1.5)


def test_wall_clock_budget_counts_elapsed_time_not_cpu_time():
    import time

    wall = CPUBudget(0.5 / 60, clock="wall")  # half a second of wall time
    cpu = CPUBudget(0.5 / 60)
    time.sleep(0.6)  # sleeping uses wall time, almost no CPU time
    assert wall.exhausted() and wall.until(0.5).clock == "wall"
    assert not cpu.exhausted()
    assert wall.summary()["clock"] == "wall"
    with pytest.raises(ValueError, match="clock"):
        CPUBudget(1.0, clock="gpu")


def test_budget_stops_a_ddpm_run_early_with_a_model_that_samples(tmp_path):
    from t2i.data.labels import ImageDataConfig
    from t2i.models.ddpm import DDPMConfig
    from t2i.pipelines.families import load_family_model, sample_family
    from t2i.training.ddpm import DDPMOptimConfig, DDPMTrainConfig, train_ddpm

    cfg = DDPMTrainConfig(
        model=DDPMConfig(resolution=16, block_out_channels=(8, 16), attention=(False, True), attention_head_dim=8,
                         norm_num_groups=4, num_train_timesteps=100, beta_schedule="linear"),
        data=ImageDataConfig(size=32, classes=True),
        train=DDPMOptimConfig(steps=BIG, batch_size=4, warmup_steps=1, ema_decay=0.9, log_every=0, checkpoint_every=0))
    train_on_budget(train_ddpm, cfg, tmp_path, minutes=0.02)
    report = json.loads((tmp_path / "budget.json").read_text())
    (stage,) = report["stages"]
    assert stage["name"] == "ddpm" and stage["stopped_on_budget"] and stage["step"] < BIG
    assert report["used_minutes"] >= 0.02
    loaded = load_family_model(tmp_path)  # model.safetensors, not the checkpoint
    assert loaded.path.name == "model.safetensors"
    images = sample_family(loaded, 2, 0, class_name="red circle", steps=2)
    assert [im.size for im in images] == [(16, 16)] * 2


def test_budget_splits_ldm_stages_and_exports_the_folder(tmp_path):
    from t2i.checkpoints.registry import load_model
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img
    from t2i.runtime import Runtime
    from t2i.training.ldm import DataConfig, LDMTrainConfig, UNetStageConfig, VAEStageConfig, train_ldm

    stage = dict(steps=BIG, batch_size=2, warmup_steps=1, log_every=0, checkpoint_every=0)
    cfg = LDMTrainConfig(model=tiny_ldm_config(), data=DataConfig(size=8), vae=VAEStageConfig(crop=16, **stage),
                         unet=UNetStageConfig(ema_decay=0.9, **stage), sample_prompts=("a red circle",),
                         vae_budget_share=0.3)
    budget = CPUBudget(0.02)
    train_ldm(cfg, tmp_path, budget=budget)
    stages = budget.summary()["stages"]
    assert [s["name"] for s in stages] == ["vae", "unet"]
    assert all(s["stopped_on_budget"] and s["step"] < BIG for s in stages)
    assert budget.exhausted()
    loaded = load_model(tmp_path / "model", Runtime.auto("full", "cpu"))
    result = txt2img(loaded, Txt2ImgParams(prompt="a red circle", steps=2, width=32, height=32, seed=1))
    assert result.images[0].size == (32, 32)
    # resuming keeps stage 1 as it was (its latents are cached) and continues the UNet
    vae_step = stages[0]["step"]
    train_ldm(cfg, tmp_path, resume=True, stop_after={"unet": 1})
    import torch

    assert torch.load(tmp_path / "vae.ckpt", weights_only=True)["step"] == vae_step
    assert torch.load(tmp_path / "unet.ckpt", weights_only=True)["step"] == stages[1]["step"] + 1


def test_cli_budget_minutes_on_a_gan(tmp_path):
    config = {"family": "gan",
              "model": {"resolution": 16, "z_dim": 16, "channels": 8, "max_channels": 16, "norm_groups": 4,
                        "class_embed_dim": 8},
              "data": {"name": "shapes", "size": 32, "p_two": 0.0, "classes": True},
              "train": {"steps": BIG, "batch_size": 4, "ema_decay": 0.9, "log_every": 0, "checkpoint_every": 0}}
    path = tmp_path / "gan.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "train", str(path), "--outdir", str(out),
                           "--budget-minutes", "0.01", "--threads", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "stopped on the training budget at step" in done.stderr
    assert done.stdout.strip().endswith("model.safetensors")
    (stage,) = json.loads((out / "budget.json").read_text())["stages"]
    assert stage["name"] == "gan" and stage["stopped_on_budget"] and stage["step"] < BIG
    bad = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "train", str(path), "--outdir",
                          str(tmp_path / "bad"), "--budget-minutes", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "positive" in bad.stderr and "Traceback" not in bad.stderr


def test_learning_rate_decays_over_the_budget_not_only_over_the_steps():
    from t2i.training.trainer import OptimConfig, lr_at

    cfg = OptimConfig(steps=10_000, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    early = lr_at(cfg, 100)  # by steps alone, barely decayed
    assert early > 0.99e-3
    assert lr_at(cfg, 100, time_progress=1.0) == pytest.approx(1e-4)  # budget spent: the floor
    assert lr_at(cfg, 100, time_progress=0.5) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way down the cosine
    assert lr_at(cfg, 5, time_progress=1.0) == pytest.approx(1e-3 * 6 / 10)  # warm-up is by steps


def test_budget_progress_runs_from_zero_to_one_over_what_is_left():
    budget = CPUBudget(1e-6)  # spent almost at once
    progress = budget.progress_from_now()
    sum(i * i for i in range(200_000))  # burn a little CPU
    assert progress() == 1.0
    assert CPUBudget(60).progress_from_now()() < 0.01
