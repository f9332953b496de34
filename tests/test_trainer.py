import torch

from conftest import tiny_ldm_config
from t2i.training.ldm import DataConfig, LDMTrainConfig, UNetStageConfig, VAEStageConfig, train_ldm


def tiny_train_config(vae_steps=6, unet_steps=6, lr=1e-3):
    return LDMTrainConfig(
        model=tiny_ldm_config(),
        data=DataConfig(size=64, seed=0),
        vae=VAEStageConfig(steps=vae_steps, batch_size=8, crop=16, lr=lr, warmup_steps=1, log_every=0, checkpoint_every=2),
        unet=UNetStageConfig(steps=unet_steps, batch_size=8, lr=lr, warmup_steps=1, ema_decay=0.9, log_every=0,
                             checkpoint_every=2, encode_batch_size=32),
    )


def test_training_lowers_the_losses(tmp_path):
    cfg = tiny_train_config(vae_steps=40, unet_steps=40, lr=3e-3)
    train_ldm(cfg, tmp_path)
    vae = torch.load(tmp_path / "vae.ckpt", weights_only=True)["losses"]
    unet = torch.load(tmp_path / "unet.ckpt", weights_only=True)["losses"]
    assert sum(vae[-5:]) / 5 < 0.8 * sum(vae[:5]) / 5
    assert sum(unet[-10:]) / 10 < sum(unet[:10]) / 10
    assert (tmp_path / "model" / "model_index.json").is_file()


def test_resume_gives_the_same_weights_and_losses_as_no_interruption(tmp_path):
    cfg = tiny_train_config()
    straight = train_ldm(cfg, tmp_path / "a")
    # crash in the middle of each stage, then resume
    train_ldm(cfg, tmp_path / "b", stop_after={"vae": 3})
    train_ldm(cfg, tmp_path / "b", resume=True, stop_after={"unet": 4})
    resumed = train_ldm(cfg, tmp_path / "b", resume=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for stage in ("vae", "unet"):
        la = torch.load(tmp_path / "a" / f"{stage}.ckpt", weights_only=True)["losses"]
        lb = torch.load(tmp_path / "b" / f"{stage}.ckpt", weights_only=True)["losses"]
        assert la == lb


def test_same_seed_same_weights(tmp_path):
    cfg = tiny_train_config(vae_steps=2, unet_steps=2)
    a = train_ldm(cfg, tmp_path / "a")
    b = train_ldm(cfg, tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values()))


def test_checkpoint_embeds_config_and_failed_write_keeps_the_old_one(tmp_path, monkeypatch):
    from t2i.training import trainer

    cfg = tiny_train_config(vae_steps=2, unet_steps=2)
    train_ldm(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "unet.ckpt", weights_only=True)
    assert ckpt["config"]["model"]["resolution"] == 32 and ckpt["t2i_version"]
    before = (tmp_path / "unet.ckpt").read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(trainer.torch, "save", broken_save)
    try:
        trainer.save_atomic({"x": 1}, tmp_path / "unet.ckpt")
    except OSError:
        pass
    assert (tmp_path / "unet.ckpt").read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_periodic_sample_grids(tmp_path):
    from PIL import Image

    cfg = tiny_train_config(vae_steps=2, unet_steps=4)
    cfg.unet.sample_every = 2
    cfg.sample_prompts = ("a red circle", "a blue square")
    cfg.sample_steps = 2
    train_ldm(cfg, tmp_path)
    grids = sorted((tmp_path / "samples").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-000002.png", "step-000004.png"]
    assert Image.open(grids[0]).size == (4 * 32, 2 * 32)


def test_public_train_function_survives_importing_the_training_package(tmp_path):
    import t2i
    import t2i.training.ldm  # noqa: F401  (a subpackage import must not shadow t2i.train)

    assert callable(t2i.train)


def test_ema_decay_warms_up_so_short_runs_average_trained_weights():
    from t2i.training.trainer import EMA

    param = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([param], decay=0.999)
    assert ema.decay_at(0) == 0.1 and ema.decay_at(10_000) == 0.999
    assert [ema.decay_at(s) for s in (0, 10, 100)] == sorted(ema.decay_at(s) for s in (0, 10, 100))
    with torch.no_grad():
        param.fill_(1.0)  # the weights moved away from their initial 0
    for step in range(200):
        ema.update([param], step)
    # a fixed 0.999 would still hold exp(-0.2) ~ 82% of the initial weights after 200 steps
    assert ema.shadow[0].min().item() > 0.99
