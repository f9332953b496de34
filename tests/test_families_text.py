"""Text-conditional pixel DDPM, sampling larger than trained, and `t2i sample` for VQGAN + AR."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i.checkpoints.family_file import load_family_file, save_family_file
from t2i.models.ddpm import DDPMConfig, PixelDDPM
from t2i.models.ddpm import sample as ddpm_sample
from t2i.models.text import TextEncoderConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_text_ddpm():
    return DDPMConfig(resolution=16, block_out_channels=(8, 16), attention=(False, True), attention_head_dim=8,
                      norm_num_groups=4, num_train_timesteps=100, conditioning="text",
                      text=TextEncoderConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                             max_length=16))


def pixels(images):
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


# -------------------------------------------------------------------------------- text DDPM model
@pytest.fixture(scope="module")
def text_ddpm():
    torch.manual_seed(0)
    return PixelDDPM(tiny_text_ddpm()).eval()


def test_text_ddpm_shapes_values_and_gradients():
    torch.manual_seed(0)
    model = PixelDDPM(tiny_text_ddpm())
    ids = model.token_ids(["a red circle", "a blue square on a white background", ""])
    assert ids.shape == (3, 16)
    x0 = torch.rand(3, 3, 16, 16) * 2 - 1
    t, noise = torch.tensor([0, 50, 99]), torch.randn(3, 3, 16, 16)
    eps = model.predict_eps(model.q_sample(x0, t, noise), t, model.encode_text(ids))
    assert eps.shape == x0.shape and torch.isfinite(eps).all()
    loss = model(x0, t, noise, ids)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the caption reaches the UNet: the text encoder and the cross-attention learn from the loss
    assert sum(g.abs().sum() for n, g in grads.items() if n.startswith("text_encoder.")) > 0
    assert sum(g.abs().sum() for n, g in grads.items() if "attn2" in n) > 0


def test_text_ddpm_config_errors():
    with pytest.raises(ValueError, match="data.classes: false"):
        dataclasses.replace(tiny_text_ddpm(), class_names=("red circle",))
    with pytest.raises(ValueError, match="conditioning must be one of"):
        dataclasses.replace(tiny_text_ddpm(), conditioning="caption")
    with pytest.raises(ValueError, match="data.classes: true"):
        PixelDDPM(dataclasses.replace(tiny_text_ddpm(), conditioning="class"))


def test_text_ddpm_save_load_round_trip(text_ddpm, tmp_path):
    loaded = load_family_file(PixelDDPM, save_family_file(text_ddpm, tmp_path / "m.safetensors"))
    assert loaded.config == text_ddpm.config and loaded.config.conditioning == "text"
    a, b = text_ddpm.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("text_encoder.") for k in a)
    kw = dict(prompt="a red circle", steps=2, guidance_scale=2.0)
    assert (pixels(ddpm_sample(loaded, 1, 0, **kw)) == pixels(ddpm_sample(text_ddpm, 1, 0, **kw))).all()


def test_text_sampling_uses_the_prompt_and_guidance(text_ddpm):
    def run(n=1, seed=0, **kw):
        return pixels(ddpm_sample(text_ddpm, n, seed, steps=3, **kw))

    red = run(prompt="a red circle")
    assert (red != run(prompt="a blue square")).any()
    guided = run(prompt="a red circle", guidance_scale=4.0)
    assert (guided != red).any()
    assert (guided != run(prompt="a red circle", guidance_scale=4.0, negative_prompt="a blue square")).any()
    assert (run(prompt="a red circle", guidance_scale=4.0) == guided).all()  # deterministic
    # image i of a batch equals a single run with seed + i, one prompt per image or one for all
    batch = run(3, 5, prompt=["a red circle", "a blue square", "a green triangle"], guidance_scale=2.0)
    assert (batch[1] == run(1, 6, prompt="a blue square", guidance_scale=2.0)[0]).all()
    assert (run(2, 5, prompt="", sampler="DDPM") == run(2, 5, sampler="DDPM")).all()  # "" is unconditional
    with pytest.raises(ValueError, match="give a prompt, not a class"):
        ddpm_sample(text_ddpm, 1, 0, "red circle", steps=2)
    with pytest.raises(ValueError, match="list of 2"):
        ddpm_sample(text_ddpm, 2, 0, prompt=["a", "b", "c"], steps=2)
    class_model = PixelDDPM(dataclasses.replace(tiny_text_ddpm(), conditioning="none", class_names=("a", "b")))
    assert class_model.config.conditioning == "class"
    with pytest.raises(ValueError, match="not a prompt"):
        ddpm_sample(class_model, 1, 0, prompt="a red circle", steps=2)


# -------------------------------------------------------------------------------- text DDPM recipe
@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The tiny text config trained 30 steps by the ddpm recipe."""
    from t2i.training.registry import load_training_config

    family, cfg, train = load_training_config(CONFIGS / "tiny-ddpm-text.yaml")
    assert family == "ddpm" and cfg.model.conditioning == "text"
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=30, log_every=0))
    outdir = tmp_path_factory.mktemp("ddpm-text")
    train(cfg, outdir)
    return outdir


def test_text_recipe_lowers_the_loss_and_writes_a_text_model(text_run):
    losses = torch.load(text_run / "ddpm.ckpt", weights_only=True)["losses"]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    model = load_family_file(PixelDDPM, text_run / "model.safetensors")
    assert model.config.conditioning == "text" and model.config.class_names == ()
    assert "conditioning: text" in (text_run / "config.yaml").read_text()


def test_text_recipe_refuses_class_labels(tmp_path):
    from t2i.training.registry import load_training_config

    _, cfg, train = load_training_config(CONFIGS / "tiny-ddpm-text.yaml")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, classes=True))
    with pytest.raises(ValueError, match="data.classes: false"):
        train(cfg, tmp_path)
    _, shipped, _ = load_training_config(CONFIGS / "shapes-ddpm-text.yaml")
    assert shipped.model.conditioning == "text" and shipped.model.text.hidden_size == 64


def test_cli_samples_the_text_model_larger_than_trained(text_run, tmp_path, capsys):
    from t2i.interfaces.cli import main
    from t2i.pipelines.families import load_family_model, sample_family

    out = tmp_path / "grid.png"
    assert main(["sample", str(text_run), "--n", "2", "--prompt", "a red circle", "--guidance-scale", "3",
                 "--steps", "2", "--width", "24", "--height", "32", "-o", str(out)]) == 0, capsys.readouterr().err
    with Image.open(out) as grid:
        assert grid.size == (48, 32) and "a red circle" in grid.info["parameters"]
    # trained at 16, sampled at 24x32: finite eps-model output of that shape at every step
    loaded = load_family_model(text_run)
    final = []
    images = sample_family(loaded, 2, 0, width=24, height=32, prompt="a blue square", steps=3, sampler="DDPM",
                           guidance_scale=2.0)
    ddpm_sample(loaded.model, 1, 0, prompt="a blue square", steps=3, width=24, height=32,
                callback=lambda i, total, x: final.append(x))
    assert [im.size for im in images] == [(24, 32)] * 2 and pixels(images).std() > 0
    assert final[-1].shape == (1, 3, 32, 24) and all(torch.isfinite(x).all() for x in final)
    assert main(["sample", str(text_run), "--class", "red circle", "-o", str(out)]) == 2
    assert "give a prompt, not a class" in capsys.readouterr().err
    assert main(["sample", str(text_run), "--top-k", "3", "-o", str(out)]) == 2
    assert "only apply to ar models" in capsys.readouterr().err


def test_ldm_generates_larger_than_trained(tiny_loaded):
    from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

    for width, height in ((64, 48), (34, 32)):  # 2x the trained 32; a latent width (17) the UNet halves unevenly
        result = txt2img(tiny_loaded, Txt2ImgParams(prompt="a red circle", seed=1, steps=2, width=width, height=height))
        assert result.images[0].size == (width, height) and pixels(result.images).std() > 0


# -------------------------------------------------------------------------------- VQGAN + AR
@pytest.fixture(scope="module")
def ar_folder(tmp_path_factory):
    """An AR "run folder": a class-conditional transformer and its VQGAN (8x8 px -> 4x4 codes)."""
    from t2i.models.ar import ARConfig, CodeTransformer
    from t2i.models.vqgan import VQGAN, VQGANConfig

    folder = tmp_path_factory.mktemp("ar-run")
    torch.manual_seed(0)
    save_family_file(VQGAN(VQGANConfig(resolution=8, block_out_channels=(16, 16), code_dim=8, num_codes=32,
                                       norm_num_groups=8)).eval(), folder / "vqgan.safetensors")
    save_family_file(CodeTransformer(ARConfig(num_codes=32, code_shape=(4, 4), conditioning="class",
                                              class_names=("red circle", "blue square"), n_embd=32, n_layer=1,
                                              n_head=2)).eval(), folder / "ar.safetensors")
    return folder


def test_cli_samples_ar_greedy_deterministically(ar_folder, tmp_path, capsys):
    from t2i.interfaces.cli import main

    def grid(name, *flags):
        assert main(["sample", str(ar_folder), "--n", "2", "-o", str(tmp_path / name), *flags]) == 0, \
            capsys.readouterr().err
        with Image.open(tmp_path / name) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16), im.info["parameters"]

    a, info = grid("a.png", "--top-k", "1", "--seed", "0", "--class", "red circle")
    b, _ = grid("b.png", "--top-k", "1", "--seed", "7", "--class", "red circle", "--no-cache")
    assert a.shape == (8, 16, 3) and (a == b).all()  # greedy: the seed and the cache change nothing
    assert "Top-k: 1" in info and "Family: ar" in info
    c, _ = grid("c.png", "--top-p", "0.9", "--temperature", "1.5", "--seed", "0")  # classes cycle
    d, _ = grid("d.png", "--top-p", "0.9", "--temperature", "1.5", "--seed", "1")
    assert (c != d).any()
    assert main(["sample", str(ar_folder / "ar.safetensors"), "--prompt", "a red circle", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "takes no prompt" in capsys.readouterr().err
    assert main(["sample", str(ar_folder), "--steps", "3", "-o", str(tmp_path / "x.png")]) == 2
    assert "only apply to ddpm/ldm models" in capsys.readouterr().err


def test_vqgan_alone_points_to_the_ar_model(ar_folder, tmp_path, capsys):
    from t2i.interfaces.cli import main

    assert main(["sample", str(ar_folder / "vqgan.safetensors"), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "is a VQGAN" in err and "t2i sample runs/shapes-ar" in err and "Traceback" not in err
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "ar.safetensors").write_bytes((ar_folder / "ar.safetensors").read_bytes())
    assert main(["sample", str(lonely / "ar.safetensors"), "-o", str(tmp_path / "x.png")]) == 2
    assert "--first-stage" in capsys.readouterr().err
    assert main(["sample", str(lonely / "ar.safetensors"), "--first-stage", str(ar_folder / "vqgan.safetensors"),
                 "--n", "1", "-o", str(tmp_path / "x.png")]) == 0


def test_ar_completion_keeps_the_top_half_codes(ar_folder, tmp_path, capsys):
    from t2i.interfaces.cli import main
    from t2i.models.common import from_pil_images
    from t2i.pipelines.ar_images import complete_ar
    from t2i.pipelines.families import load_family_model

    loaded = load_family_model(ar_folder)
    assert loaded.family == "ar" and loaded.name == ar_folder.name
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    given = loaded.first_stage.encode_codes(from_pil_images([photo], 8))  # (1, 4, 4)
    images, codes = complete_ar(loaded.model, loaded.first_stage, photo, 3, 0, "blue square", top_p=0.95)
    assert codes.shape == (3, 4, 4) and len(images) == 3 and images[0].size == (8, 8)
    assert torch.equal(codes[:, :2], given[:, :2].expand(3, 2, 4))  # the top half, exactly
    assert not all(torch.equal(codes[i, 2:], given[0, 2:]) for i in range(3))
    photo.save(tmp_path / "photo.png")
    assert main(["sample", str(ar_folder), "--complete", str(tmp_path / "photo.png"), "--n", "2",
                 "-o", str(tmp_path / "done.png")]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "done.png") as grid:
        assert grid.size == (16, 8) and "Completed: photo.png" in grid.info["parameters"]
