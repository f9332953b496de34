"""Autoencoder zoo: PSNR/SSIM/feature distance, the KL autoencoder recipe, `t2i evaluate recon`."""
import math
from pathlib import Path

import pytest
import torch

from t2i.checkpoints.family_file import load_family_file
from t2i.evaluate.recon import RandomFeatures, psnr, ssim

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _images(b=2, size=24, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_psnr_identical_is_inf_and_known_noise_matches_formula():
    x = _images()
    assert torch.isinf(psnr(x, x)).all()
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    y = x + 0.1 * sign  # every pixel off by exactly 0.1: MSE = 0.01
    expected = 10 * math.log10(1 / 0.01)
    assert torch.allclose(psnr(x, y), torch.full((2,), expected), atol=1e-3)
    assert torch.allclose(psnr(x * 255, y * 255, data_range=255.0), torch.full((2,), expected), atol=1e-3)


def test_ssim_is_one_for_identical_and_decreases_with_noise():
    x = _images()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    scores = [ssim(x, (x + s * noise).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2]
    # a constant shift in brightness hurts SSIM less than structure-destroying noise of the same MSE
    shifted = ssim(x * 0.8 + 0.1, x).mean().item()
    assert shifted > scores[2]
    with pytest.raises(ValueError, match="at least 11"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_random_features_are_fixed_and_distance_grows_with_noise():
    x = _images() * 2 - 1
    a, b = RandomFeatures(), RandomFeatures()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.allclose(a.distance(x, x), torch.zeros(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    near, far = a.distance(x, x + 0.05 * noise).mean(), a.distance(x, x + 0.5 * noise).mean()
    assert 0 < near < far


def test_kl_recipe_trains_saves_and_evaluate_recon_prints_rows(tmp_path, capsys):
    from t2i.interfaces.cli import main
    from t2i.models.autoencoder import KLAutoencoder

    kl = tmp_path / "ae-kl"
    assert main(["train", str(CONFIGS / "tiny-ae-kl.yaml"), "--outdir", str(kl)]) == 0
    model = load_family_file(KLAutoencoder, kl / "autoencoder.safetensors")
    assert model.config.downsample_factor == 2
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert model.reconstruct(x).shape == x.shape
    capsys.readouterr()

    code = main(["evaluate", "recon", str(kl), "--n", "4", "--resolution", "16", "--batch-size", "2"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["model", "kind", "factor", "params", "PSNR", "SSIM", "feat-dist", "rFID"]
    row = out[1].split()
    assert row[:3] == ["ae-kl", "kl", "2"]
    psnr_value, ssim_value, feat, rfid = map(float, row[4:8])
    assert math.isfinite(psnr_value) and -1 <= ssim_value <= 1 and feat >= 0 and rfid >= 0


def test_evaluate_recon_reads_vqgan_runs_and_refuses_others(tmp_path, capsys):
    from t2i.interfaces.cli import main

    vq = tmp_path / "ae-vq"
    assert main(["train", str(CONFIGS / "tiny-ae-vq.yaml"), "--outdir", str(vq)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "recon", str(vq), "--n", "2", "--resolution", "16"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:3] == ["ae-vq", "vq", "2"]

    assert main(["evaluate", "recon", str(tmp_path / "missing"), "--n", "2"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "recon", str(vq), "--n", "2", "--resolution", "12"]) == 2  # shapes needs multiples of 8


def test_evaluate_recon_reads_the_default_model_and_ldm_folders(tiny_model_dir, capsys):
    from t2i.interfaces.cli import main

    assert main(["evaluate", "recon", "default", str(tiny_model_dir), "--n", "2", "--resolution", "16"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[:3] for r in rows] == [["default", "kl", "4"], [tiny_model_dir.name, "kl", "2"]]
    assert float(rows[0][4]) > float(rows[1][4])  # the trained default VAE beats a random one


def test_zoo_configs_build_models_of_their_factor():
    from t2i.training.registry import load_training_config

    for kind, family in (("kl", "autoencoder"), ("vq", "vqgan")):
        for factor in (4, 8):
            found, cfg, _ = load_training_config(CONFIGS / f"ae-{kind}-f{factor}.yaml")
            assert found == family and cfg.model.downsample_factor == factor
            assert cfg.model.resolution == 64
