"""GAN, VAE and pixel-space DDPM: tiny models from configs, their recipes, sampling and the CLI."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.family_file import load_family_file, save_family_file
from t2i.data.labels import ImageDataConfig
from t2i.models.ddpm import DDPMConfig, PixelDDPM, cosine_betas, linear_betas, make_sampler
from t2i.models.ddpm import sample as ddpm_sample
from t2i.models.gan import GAN, GANConfig, d_loss, g_loss, r1_penalty
from t2i.models.gan import sample as gan_sample
from t2i.models.vae import ConvVAE, ConvVAEConfig, elbo_loss, interpolate
from t2i.models.vae import sample as vae_sample

CLASSES = ("red circle", "blue square", "green triangle")


def tiny_gan(classes=()):
    return GANConfig(resolution=16, z_dim=16, channels=8, max_channels=16, norm_groups=4,
                     class_names=classes, class_embed_dim=8)


def tiny_vae():
    return ConvVAEConfig(resolution=16, channels=(8, 16), latent_dim=8, norm_groups=4)


def tiny_ddpm(classes=(), schedule="linear"):
    return DDPMConfig(resolution=16, block_out_channels=(8, 16), attention=(False, True), attention_head_dim=8,
                      norm_num_groups=4, num_train_timesteps=100, beta_schedule=schedule, class_names=classes)


def tiny_data(classes=False, size=48):
    return ImageDataConfig(name="shapes", size=size, seed=0, p_two=0.0, classes=classes)


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def assert_grads(modules):
    params = [p for m in modules for p in m.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(p.grad.abs().sum().item() for p in params) > 0


# -------------------------------------------------------------------------------- models
@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_gan_shapes_values_and_gradients(kind):
    torch.manual_seed(0)
    gan = GAN(tiny_gan(CLASSES))
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    fake = gan.generator(z, y)
    assert fake.shape == (4, 3, 16, 16) and fake.abs().max() <= 1
    real = torch.rand(4, 3, 16, 16).mul(2).sub(1).requires_grad_(True)
    real_logits = gan.discriminator(real, y)
    assert real_logits.shape == (4,)
    r1 = r1_penalty(real_logits, real)
    assert r1.item() > 0
    loss = d_loss(real_logits, gan.discriminator(fake, y), kind) + r1 + g_loss(gan.discriminator(fake, y), kind)
    assert torch.isfinite(loss)
    loss.backward()
    assert_grads([gan.generator, gan.discriminator])
    with pytest.raises(ValueError, match="class-conditional"):
        gan.generator(z)
    with pytest.raises(ValueError, match="unknown GAN loss"):
        d_loss(real_logits, real_logits, "wasserstein")


def test_vae_shapes_values_and_gradients():
    torch.manual_seed(0)
    vae = ConvVAE(tiny_vae())
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    recon, mu, logvar = vae(x, torch.randn(4, 8))
    assert recon.shape == x.shape and mu.shape == logvar.shape == (4, 8)
    loss, rec, kl = elbo_loss(x, recon, mu, logvar, kl_weight=0.5)
    assert torch.isfinite(loss) and kl.item() > 0
    assert torch.allclose(loss, rec + 0.5 * kl)
    loss.backward()
    assert_grads([vae])
    with pytest.raises(ValueError, match="encodes"):
        vae.encode(torch.zeros(1, 3, 32, 32))


def test_ddpm_shapes_values_and_gradients():
    torch.manual_seed(0)
    ddpm = PixelDDPM(tiny_ddpm(CLASSES))
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    t, noise = torch.tensor([0, 50, 99]), torch.randn(3, 3, 16, 16)
    assert ddpm.predict_eps(ddpm.q_sample(x0, t, noise), t, torch.tensor([0, 1, 3])).shape == x0.shape
    loss = ddpm(x0, t, noise, torch.tensor([0, 1, 3]))  # 3 = the "no class" label
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert_grads([ddpm])


# -------------------------------------------------------------------------------- schedules
def test_linear_schedule_matches_its_formula_and_decreases():
    ddpm = PixelDDPM(tiny_ddpm(schedule="linear"))
    betas = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    assert torch.allclose(ddpm.betas, betas)
    expected = torch.cumprod(1 - betas, 0)
    assert torch.allclose(ddpm.alphas_cumprod.double(), expected, rtol=1e-5)
    assert (ddpm.alphas_cumprod.diff() < 0).all()
    assert linear_betas(1000)[[0, -1]].tolist() == pytest.approx([1e-4, 0.02])


def test_cosine_schedule_matches_its_formula_and_diffusers():
    from diffusers import DDPMScheduler

    T, s = 100, 0.008
    ddpm = PixelDDPM(tiny_ddpm(schedule="cosine"))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = ddpm.alphas_cumprod.double()
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T - 1)], dtype=torch.float64)
    assert torch.allclose(abar[:-1], expected, rtol=1e-4, atol=1e-7)  # the last beta is clipped to 0.999
    assert (abar.diff() < 0).all() and abar[-1] < 1e-4
    reference = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2").betas.double()
    assert torch.allclose(cosine_betas(T), reference, atol=1e-6)
    # the schedulers sampling uses read the same alphas_cumprod as training
    assert torch.allclose(make_sampler(ddpm, "DDIM").alphas_cumprod, ddpm.alphas_cumprod)
    assert torch.allclose(make_sampler(ddpm, "DDPM").alphas_cumprod, ddpm.alphas_cumprod)


def test_closed_form_forward_noising_matches_the_step_by_step_chain():
    ddpm = PixelDDPM(tiny_ddpm(schedule="linear"))
    gen = torch.Generator().manual_seed(0)
    x = torch.full((40_000,), 0.8, dtype=torch.float64)
    t = 59
    for beta in ddpm.betas[: t + 1]:  # q(x_t | x_{t-1}) = N(sqrt(1 - beta) x_{t-1}, beta I)
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    closed_mean = ddpm.q_sample(torch.full((1, 1, 1, 1), 0.8), torch.tensor([t]), torch.zeros(1, 1, 1, 1)).item()
    closed_std = (1 - ddpm.alphas_cumprod[t]).sqrt().item()
    assert x.mean().item() == pytest.approx(closed_mean, abs=0.01)
    assert x.std().item() == pytest.approx(closed_std, abs=0.01)


# -------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def cond_ddpm():
    torch.manual_seed(0)
    return PixelDDPM(tiny_ddpm(CLASSES)).eval()


def test_ddim_eta0_is_deterministic_and_batch_invariant(cond_ddpm):
    a = pixels(ddpm_sample(cond_ddpm, 3, 5, "red circle", steps=4))
    assert (a == pixels(ddpm_sample(cond_ddpm, 3, 5, "red circle", steps=4))).all()
    assert (a[2] == pixels(ddpm_sample(cond_ddpm, 1, 7, "red circle", steps=4))[0]).all()
    assert (a[0] != a[1]).any()
    noisy = pixels(ddpm_sample(cond_ddpm, 1, 5, "red circle", steps=4, eta=1.0))
    assert (noisy[0] != a[0]).any()  # eta = 1 adds fresh noise at every step


def test_ddpm_ancestral_sampling_is_batch_invariant(cond_ddpm):
    batch = pixels(ddpm_sample(cond_ddpm, 2, 3, "blue square", sampler="DDPM", steps=5))
    single = pixels(ddpm_sample(cond_ddpm, 1, 4, "blue square", sampler="DDPM", steps=5))
    assert (batch[1] == single[0]).all()


def test_class_conditional_sampling_uses_the_label(cond_ddpm):
    red = pixels(ddpm_sample(cond_ddpm, 1, 0, "red circle", steps=3))
    blue = pixels(ddpm_sample(cond_ddpm, 1, 0, "blue square", steps=3))
    guided = pixels(ddpm_sample(cond_ddpm, 1, 0, "red circle", steps=3, guidance_scale=3.0))
    assert (red != blue).any() and (red != guided).any()
    with pytest.raises(ValueError, match="red circle, blue square"):
        ddpm_sample(cond_ddpm, 1, 0, "purple circle", steps=2)
    torch.manual_seed(0)
    gan = GAN(tiny_gan(CLASSES))
    assert (pixels(gan_sample(gan, 1, 0, "red circle")) != pixels(gan_sample(gan, 1, 0, "blue square"))).any()
    cycled = gan_sample(gan, 4, 0)  # no class given: image i gets class i mod 3
    assert (pixels(cycled)[3] == pixels(gan_sample(gan, 1, 3, "red circle"))[0]).all()


def test_ddpm_samples_larger_than_trained(cond_ddpm):
    images = ddpm_sample(cond_ddpm, 2, 0, "red circle", steps=3, width=32, height=24)
    assert [im.size for im in images] == [(32, 24), (32, 24)]
    assert pixels(images).std() > 0
    with pytest.raises(ValueError, match="multiples of 2"):
        ddpm_sample(cond_ddpm, 1, 0, steps=2, width=17)
    with pytest.raises(ValueError, match="trained size"):
        gan_sample(GAN(tiny_gan()), 1, 0, width=32)


def test_vae_samples_and_interpolates():
    torch.manual_seed(0)
    vae = ConvVAE(tiny_vae()).eval()
    assert (pixels(vae_sample(vae, 3, 2))[1] == pixels(vae_sample(vae, 1, 3))[0]).all()
    a, b = Image.new("RGB", (40, 30), (230, 25, 25)), Image.new("RGB", (16, 16), (30, 80, 230))
    frames = interpolate(vae, a, b, 5)
    assert len(frames) == 5 and frames[0].size == (16, 16)
    ends = interpolate(vae, a, b, 2)
    assert (pixels(frames)[[0, -1]] == pixels(ends)).all()  # the ends are the two reconstructions
    assert (pixels(frames)[2] != pixels(frames)[0]).any()


# -------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("build", [lambda: GAN(tiny_gan(CLASSES)), lambda: ConvVAE(tiny_vae()),
                                   lambda: PixelDDPM(tiny_ddpm(CLASSES, "cosine"))], ids=["gan", "vae", "ddpm"])
def test_save_load_round_trip_is_exact_and_strict(build, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = build()
    path = save_family_file(model, tmp_path / "m.safetensors")
    loaded = load_family_file(type(model), path)
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a tensor missing: strict loading refuses with the file's name
    tensors = load_file(str(path))
    tensors.pop(next(iter(tensors)))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=metadata)
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        load_family_file(type(model), tmp_path / "broken.safetensors")
    # a config key the dataclass does not know is an error, not ignored
    bad = dict(metadata, t2i_config=json.dumps({**json.loads(metadata["t2i_config"]), "typo": 1}))
    save_file(load_file(str(path)), str(tmp_path / "typo.safetensors"), metadata=bad)
    with pytest.raises(ValueError, match="typo"):
        load_family_file(type(model), tmp_path / "typo.safetensors")


def test_loading_a_file_of_another_family_fails(tmp_path):
    path = save_family_file(ConvVAE(tiny_vae()), tmp_path / "vae.safetensors")
    with pytest.raises(ModelLoadError, match="'vae' model, not a 'gan'"):
        load_family_file(GAN, path)


# -------------------------------------------------------------------------------- labels
def test_class_labels_from_shapes_captions_and_folders(tmp_path):
    from t2i.data.labels import SHAPES_CLASSES, folder_classes, load_labelled_images, shapes_class

    assert shapes_class("a small red circle in the top left on a black background") == "red circle"
    assert shapes_class("an orange triangle") == "orange triangle"
    assert shapes_class("a red circle above a blue square on a white background") is None
    data = load_labelled_images(ImageDataConfig(size=40, p_two=0.5, classes=True), 16)
    assert 0 < len(data.labels) < 40 and len(data.images) == len(data.labels)  # pairs left out
    assert data.class_names == SHAPES_CLASSES and len(SHAPES_CLASSES) == 24
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 20), (255, 0, 0) if name == "cats" else (0, 0, 255)).save(tmp_path / name / "a.png")
    data = load_labelled_images(ImageDataConfig(name="folder", folder=str(tmp_path), classes=True), 16)
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 1]
    assert data.images[1, 0, 0].tolist() == [0, 0, 255]
    Image.new("RGB", (20, 20)).save(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="sub-directory per class"):
        folder_classes(tmp_path)


# -------------------------------------------------------------------------------- training
def _train(family, tmp_path, steps, **kw):
    from t2i.training.ddpm import DDPMOptimConfig, DDPMTrainConfig, train_ddpm
    from t2i.training.gan import GANOptimConfig, GANTrainConfig, train_gan
    from t2i.training.vae import VAEOptimConfig, VAETrainConfig, train_vae

    common = dict(steps=steps, batch_size=8, log_every=0, checkpoint_every=3)
    if family == "gan":
        cfg = GANTrainConfig(model=tiny_gan(), data=tiny_data(classes=True),
                             train=GANOptimConfig(**common, lr=1e-3, lr_d=1e-3, r1_gamma=1.0, ema_decay=0.9))
        return cfg, train_gan
    if family == "vae":
        cfg = VAETrainConfig(model=tiny_vae(), data=tiny_data(),
                             train=VAEOptimConfig(**common, lr=1e-2, warmup_steps=1, ema_decay=0.9))
        return cfg, train_vae
    cfg = DDPMTrainConfig(model=tiny_ddpm(), data=tiny_data(classes=True),
                          train=DDPMOptimConfig(**common, lr=3e-3, warmup_steps=1, ema_decay=0.9))
    return cfg, train_ddpm


@pytest.mark.parametrize("family,steps", [("vae", 60), ("ddpm", 30)])
def test_training_lowers_the_loss(family, steps, tmp_path):
    cfg, train = _train(family, tmp_path, steps)
    model = train(cfg, tmp_path)
    losses = torch.load(tmp_path / f"{family}.ckpt", weights_only=True)["losses"]
    assert len(losses) == steps and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert (tmp_path / "model.safetensors").is_file()
    if family == "ddpm":  # the class list came from the data
        assert len(model.config.class_names) == 24
        assert load_family_file(type(model), tmp_path / "model.safetensors").config.class_names == model.config.class_names


def test_gan_training_lowers_the_discriminator_loss(tmp_path):
    cfg, train = _train("gan", tmp_path, 25)
    train(cfg, tmp_path)
    state = torch.load(tmp_path / "gan.ckpt", weights_only=True)
    d, g = state["d_losses"], state["losses"]
    assert len(d) == len(g) == 25 and all(math.isfinite(v) for v in d + g)
    assert sum(d[-5:]) / 5 < sum(d[:5]) / 5  # the discriminator learns to tell shapes from noise


@pytest.mark.parametrize("family", ["gan", "ddpm"])
def test_resume_equals_no_interruption(family, tmp_path):
    from t2i.pipelines.families import load_family_model, sample_family

    cfg, train = _train(family, tmp_path, 7)
    straight = train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b", stop_after=4)  # "crash" after step 4 (checkpoint at 3 and on exit)
    mid = load_family_model(tmp_path / "b")  # a run still going: its checkpoint's EMA weights
    assert mid.family == family and mid.path.name == f"{family}.ckpt"
    assert len(sample_family(mid, 2, 0, **({"steps": 2} if family == "ddpm" else {}))) == 2
    resumed = train(cfg, tmp_path / "b", resume=True)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la = torch.load(tmp_path / "a" / f"{family}.ckpt", weights_only=True)["losses"]
    lb = torch.load(tmp_path / "b" / f"{family}.ckpt", weights_only=True)["losses"]
    assert la == lb and len(la) == 7


@pytest.mark.parametrize("family", ["gan", "vae", "ddpm"])
def test_shipped_configs_parse(family):
    from pathlib import Path

    from t2i.training.registry import load_training_config

    root = Path(__file__).resolve().parents[1] / "configs"
    for path in (root / f"shapes-{family}.yaml", root / f"tiny-{family}.yaml"):
        found, cfg, _ = load_training_config(path)
        assert found == family and cfg.model.resolution in (16, 64)


# -------------------------------------------------------------------------------- CLI
def test_cli_sample_subprocess(tmp_path):
    torch.manual_seed(0)
    path = save_family_file(PixelDDPM(tiny_ddpm(CLASSES)), tmp_path / "ddpm.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "t2i.interfaces.cli", "sample", str(path), "--n", "4", "--seed", "0",
           "--steps", "2", "--threads", "1"]
    out = subprocess.run([*cli, "--class", "blue square", "--width", "24", "-o", str(tmp_path / "grid.png")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (48, 32)  # 2x2 grid of 24x16 images
        assert "blue square" in grid.info["parameters"] and "Seed: 0" in grid.info["parameters"]


def test_cli_interpolate_and_sample_errors(tmp_path, capsys):
    from t2i.interfaces.cli import main

    torch.manual_seed(0)
    vae = save_family_file(ConvVAE(tiny_vae()), tmp_path / "vae.safetensors")
    Image.new("RGB", (16, 16), (230, 25, 25)).save(tmp_path / "a.png")
    Image.new("RGB", (16, 16), (30, 80, 230)).save(tmp_path / "b.png")
    assert main(["interpolate", str(vae), str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--n", "6",
                 "-o", str(tmp_path / "strip.png")]) == 0
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.size == (96, 16)
    assert main(["sample", str(vae), "--steps", "3", "-o", str(tmp_path / "x.png")]) == 2
    assert "only apply to ddpm" in capsys.readouterr().err
    ddpm = save_family_file(PixelDDPM(tiny_ddpm(CLASSES)), tmp_path / "ddpm.safetensors")
    assert main(["sample", str(ddpm), "--class", "purple dot", "-o", str(tmp_path / "x.png")]) == 2
    assert "unknown class 'purple dot'" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["sample", str(vae), "--n", "2", "-o", str(tmp_path / "v.png")]) == 0


def test_cli_train_writes_a_model_file(tmp_path, capsys):
    from pathlib import Path

    from t2i.interfaces.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-gan.yaml"
    assert main(["train", str(config), "--outdir", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip().endswith("model.safetensors")
    assert load_family_file(GAN, tmp_path / "run" / "model.safetensors").config.class_names[0] == "red circle"
    assert "family: gan" in (tmp_path / "run" / "config.yaml").read_text()  # the run can be retrained as is
