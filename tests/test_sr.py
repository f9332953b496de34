"""Super-resolution latent diffusion (t2i.models.sr), its recipe and `t2i upscale`: tiny models only."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from t2i.checkpoints.family_file import load_family_file, save_family_file
from t2i.models.ldm import VAEConfig
from t2i.models.sr import SRConfig, SuperResolution, upscale_tensor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_sr_config(**overrides) -> SRConfig:
    vae = VAEConfig(block_out_channels=(8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4)
    return SRConfig(**{"resolution": 32, "scale": 2, "vae": vae, "block_out_channels": (8, 16),
                       "attention": (False, True), "layers_per_block": 1, "attention_head_dim": 8,
                       "norm_num_groups": 4, "max_noise_level": 100, **overrides})


@pytest.fixture(scope="module")
def tiny_sr():
    torch.manual_seed(0)
    return SuperResolution(tiny_sr_config()).eval()


def _batch(model, n=2, generator=None):
    g = generator or torch.Generator().manual_seed(1)
    cfg = model.config
    latents = torch.randn(n, 4, cfg.resolution // 4, cfg.resolution // 4, generator=g)
    low = torch.rand(n, 3, cfg.resolution // cfg.scale, cfg.resolution // cfg.scale, generator=g) * 2 - 1
    t = torch.randint(0, 1000, (n,), generator=g)
    level = torch.randint(0, cfg.max_noise_level + 1, (n,), generator=g)
    return latents, low, t, torch.randn(latents.shape, generator=g), level, torch.randn(low.shape, generator=g)


def test_config_rejects_scale_that_does_not_divide_vae_factor():
    with pytest.raises(ValueError, match="must divide"):
        tiny_sr_config(scale=3)
    assert tiny_sr_config(scale=4).condition_channels == 3  # low-res already at latent resolution
    assert tiny_sr_config(scale=2).condition_channels == 12  # 2x2 space-to-depth


def test_loss_is_finite_and_trains_only_the_unet(tiny_sr):
    model = SuperResolution(tiny_sr_config()).train()
    loss = model(*_batch(model))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters())  # frozen first stage
    grads = [p.grad for p in model.unet.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_condition_depends_on_noise_level(tiny_sr):
    low = torch.rand(1, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(low)
    clean = tiny_sr.condition(low, torch.tensor([0]), noise)
    noisy = tiny_sr.condition(low, torch.tensor([100]), noise)
    assert clean.shape == (1, 12, 8, 8)
    assert torch.allclose(clean, torch.nn.functional.pixel_unshuffle(low, 2), atol=0.05)  # level 0: abar ~ 1
    assert (noisy - clean).abs().mean() > 0.05


def test_upscale_larger_than_trained_and_odd_size(tiny_sr):
    low = torch.rand(2, 3, 27, 21) * 2 - 1  # trained on 16x16 inputs; 27x21 needs padding
    out = upscale_tensor(tiny_sr, low, [3, 4], steps=2)
    assert out.shape == (2, 3, 54, 42) and torch.isfinite(out).all()
    assert out.min() >= -1 and out.max() <= 1
    single = upscale_tensor(tiny_sr, low[1:], [4], steps=2)
    torch.testing.assert_close(out[1:], single, atol=1e-5, rtol=0)  # image i == a run with seed i
    other = upscale_tensor(tiny_sr, low[1:], [5], steps=2, sampler="Euler a")
    assert not torch.allclose(single, other)
    with pytest.raises(ValueError, match="noise_level"):
        upscale_tensor(tiny_sr, low[:1], [0], steps=1, noise_level=101)


class OracleSR(SuperResolution):
    """Predicts exactly what training asks for, given the clean latents `x0`: eps or v."""
    x0: torch.Tensor

    def predict(self, z_t, t, cond, noise_level):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (z_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.config.schedule.prediction_type == "epsilon":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * self.x0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_training_target_and_sampler_agree_on_prediction_type(prediction_type):
    # issue 3: the loss always used the eps target while the sampler followed prediction_type
    from t2i.models.ldm import NoiseScheduleConfig

    torch.manual_seed(0)
    model = OracleSR(tiny_sr_config(schedule=NoiseScheduleConfig(prediction_type=prediction_type))).eval()
    latents, low, t, noise, level, low_noise = _batch(model)
    model.x0 = latents
    assert model(latents, low, t, noise, level, low_noise).item() < 1e-8  # the oracle is what training wants
    model.x0 = latents[:1]
    out = upscale_tensor(model, low[:1], [0], steps=5)  # the sampler reads the oracle's output back as x0
    expected = model.decode_latents(latents[:1]).clamp(-1, 1)
    assert (out - expected).abs().mean() < 0.005  # only the last step's abar_0 < 1 separates them


def test_sr_default_is_v_prediction_and_rejects_unknown_types():
    from t2i.models.ldm import NoiseScheduleConfig

    assert SRConfig().schedule.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        tiny_sr_config(schedule=NoiseScheduleConfig(prediction_type="sample"))


def test_save_load_round_trip_is_identical(tiny_sr, tmp_path):
    path = save_family_file(tiny_sr, tmp_path / "sr.safetensors")
    loaded = load_family_file(SuperResolution, path)
    low = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(upscale_tensor(loaded, low, [7], steps=2), upscale_tensor(tiny_sr, low, [7], steps=2),
                               atol=0, rtol=0)
    assert loaded.config == tiny_sr.config


def test_degrade_makes_low_res_and_blur_smooths():
    from t2i.training.sr import DegradeConfig, degrade, gaussian_blur

    x = torch.rand(3, 3, 32, 32) * 2 - 1
    low = degrade(x, 2, DegradeConfig(), torch.Generator().manual_seed(0))
    assert low.shape == (3, 3, 16, 16) and low.abs().max() <= 1
    area = degrade(x, 2, DegradeConfig(blur_sigma_max=0.0, p_bicubic=0.0), torch.Generator())
    torch.testing.assert_close(area, torch.nn.functional.avg_pool2d(x, 2))
    blurred = gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape and blurred.var() < x.var()


def test_batched_blur_gives_each_image_its_own_sigma():
    from t2i.training.sr import gaussian_blur

    x = torch.rand(3, 3, 20, 20) * 2 - 1
    mixed = gaussian_blur(x, torch.tensor([0.0, 0.7, 1.5]))
    torch.testing.assert_close(mixed[0], x[0])  # sigma < 0.1: untouched
    for i, sigma in ((1, 0.7), (2, 1.5)):
        alone = gaussian_blur(x[i:i + 1], sigma)
        # the batch uses the largest sigma's radius: a longer tail, nearly the same blur
        assert (mixed[i] - alone[0]).abs().max() < 0.02
    assert mixed[2].var() < mixed[1].var() < x[1].var()
    # a normalised kernel keeps a constant image constant, borders included (reflect padding)
    flat = torch.full((2, 3, 12, 12), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([0.5, 2.0])), flat)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """configs/tiny-sr.yaml (bundled VAE) for 8 steps: the run folder and its trainer losses."""
    from t2i.training.registry import load_training_config

    family, cfg, train = load_training_config(CONFIGS / "tiny-sr.yaml")
    assert family == "sr"
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=8, log_every=0))
    outdir = tmp_path_factory.mktemp("runs") / "tiny-sr"
    model = train(cfg, outdir)
    losses = torch.load(outdir / "sr.ckpt", weights_only=True)["losses"]
    return outdir, model, losses


def test_training_lowers_loss_and_writes_a_loadable_model(trained_run):
    from t2i.pipelines.upscale import load_sr_model

    outdir, model, losses = trained_run
    assert len(losses) == 8 and all(map(lambda v: v == v, losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert model.config.scaling_factor != 1.0  # set from the data's latents
    from_file = load_sr_model(outdir)
    low = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(upscale_tensor(from_file.model, low, [0], steps=2),
                               upscale_tensor(model, low, [0], steps=2), atol=0, rtol=0)
    (outdir / "model.safetensors").unlink()  # a run still training: its checkpoint's EMA weights
    from_ckpt = load_sr_model(outdir)
    torch.testing.assert_close(upscale_tensor(from_ckpt.model, low, [0], steps=2),
                               upscale_tensor(model, low, [0], steps=2), atol=0, rtol=0)
    save_family_file(model, outdir / "model.safetensors")


def test_upscale_cli_writes_png_with_parameters(trained_run, tmp_path):
    from t2i.metadata import parse_infotext, read_infotext

    outdir, _, _ = trained_run
    Image.new("RGB", (24, 20), (30, 90, 200)).save(tmp_path / "in.png")  # larger than the 16x16 trained input
    cmd = [sys.executable, "-m", "t2i.interfaces.cli", "upscale", str(tmp_path / "in.png"), "--model", str(outdir),
           "-o", str(tmp_path / "out"), "--steps", "2", "--seed", "3", "--sampler", "Euler a", "--noise-level", "10"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)  # generous: a loaded machine starves it
    assert done.returncode == 0, done.stderr
    out = Image.open(tmp_path / "out" / "in-x2.png")
    assert out.size == (48, 40)
    info = parse_infotext(read_infotext(out))
    assert (info["Seed"], info["Steps"], info["Sampler"], info["Noise level"]) == ("3", "2", "Euler a", "10")
    assert info["Model"] == outdir.name and info["Upscale scale"] == "2"


def test_classic_upscalers_without_a_model(tmp_path):
    from t2i.interfaces.cli import main
    from t2i.metadata import read_infotext

    Image.new("RGB", (5, 7), (10, 200, 30)).save(tmp_path / "a.png")
    assert main(["upscale", str(tmp_path / "a.png"), "--upscaler", "nearest", "--scale", "3",
                 "-o", str(tmp_path / "b.png")]) == 0
    out = Image.open(tmp_path / "b.png")
    assert out.size == (15, 21) and out.getpixel((14, 20)) == (10, 200, 30)
    assert "Upscaler: nearest" in read_infotext(out)


def test_upscale_errors_are_one_line_and_write_nothing(trained_run, tmp_path, capsys):
    from t2i.interfaces.cli import main

    outdir, _, _ = trained_run
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (16, 16)).save(good)
    bad.write_text("not an image")
    out = tmp_path / "out"
    cases = {
        "does not exist": [str(tmp_path / "missing.png"), "--model", str(outdir)],
        "cannot read image": [str(good), str(bad), "--model", str(outdir)],
        "upscales x2": [str(good), "--model", str(outdir), "--scale", "4"],
        "needs a super-resolution model": [str(good)],
        "takes no model": [str(good), "--model", str(outdir), "--upscaler", "lanczos"],
        "noise_level must be <=": [str(good), "--model", str(outdir), "--noise-level", "500"],
    }
    for message, args in cases.items():
        assert main(["upscale", *args, "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
