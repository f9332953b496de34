"""Layout-to-image: a latent diffusion model conditioned on (class, box) tokens (`conditioning: layout`)."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from test_trainer import tiny_train_config
from t2i.checkpoints.diffusers_folder import T2I_CONFIG
from t2i.checkpoints.registry import load_model
from t2i.data.shapes import ShapesDataset
from t2i.models.ldm_conditioning import LayoutChannels, LayoutTokens, box_features, layout_map, null_objects
from t2i.pipelines.generation_params import Txt2ImgParams
from t2i.pipelines.layout import layout_rows, parse_layout
from t2i.pipelines.params import ParamError
from t2i.pipelines.txt2img import txt2img
from t2i.runtime import Runtime
from t2i.training.ldm_conditions import scene_objects

LAYOUT = "red circle@0.1,0.1,0.4,0.4; blue square@0.6,0.5,0.9,0.8"


@pytest.fixture(scope="module")
def layout_run(tmp_path_factory):
    from t2i.training.ldm import train_ldm

    cfg = tiny_train_config(vae_steps=2, unet_steps=4)
    cfg.model = replace(cfg.model, conditioning="layout")
    cfg.data = replace(cfg.data, p_two=0.5)
    outdir = tmp_path_factory.mktemp("ldm-layout")
    train_ldm(cfg, outdir)
    return outdir


@pytest.fixture(scope="module")
def layout_map_run(tmp_path_factory):
    """A tiny layout model that also takes its boxes as UNet input channels (`layout_map`)."""
    from t2i.training.ldm import train_ldm

    cfg = tiny_train_config(vae_steps=2, unet_steps=4)
    cfg.model = replace(cfg.model, conditioning="layout", layout_map=True)
    cfg.data = replace(cfg.data, p_two=0.5)
    outdir = tmp_path_factory.mktemp("ldm-layout-map")
    train_ldm(cfg, outdir)
    return outdir


def test_parse_layout_and_its_errors_name_the_part():
    objects = parse_layout(LAYOUT + ";")
    assert [o.name for o in objects] == ["red circle", "blue square"]
    assert objects[1].box == (0.6, 0.5, 0.9, 0.8)
    for bad, part in [("red circle 0.1,0.1,0.4,0.4", "red circle 0.1"), ("red circle@0.1,0.1,0.4", "3"),
                      ("red circle@0.1,a,0.4,0.5", "'0.1,a,0.4,0.5'"), ("red circle@0.5,0.1,0.4,0.4", "x0 < x1"),
                      ("red circle@0.1,0.1,1.4,0.4", "from 0 to 1"), ("@0.1,0.1,0.4,0.4", "class name"),
                      (" ; ", "no objects")]:
        with pytest.raises(ParamError, match=part):
            parse_layout(bad)
    with pytest.raises(ParamError, match="unknown class.*green square"):
        layout_rows(parse_layout("pink circle@0,0,1,1"), ("red circle", "green square"), 2)
    with pytest.raises(ParamError, match="at most 1 objects"):
        layout_rows(parse_layout(LAYOUT), ("red circle", "blue square"), 1)


def test_layout_tokens_keep_empty_slots_and_see_the_box():
    torch.manual_seed(0)
    tokens = LayoutTokens(num_classes=3, dim=8, max_objects=2)
    objects = null_objects(2, 2)
    objects[0, 0] = torch.tensor([1, 0.1, 0.1, 0.4, 0.4])
    objects[1, 0] = torch.tensor([1, 0.5, 0.5, 0.8, 0.8])
    out = tokens(objects)
    assert out.shape == (2, 2, 8)
    assert torch.equal(out[0, 1], tokens.empty.detach()) and torch.equal(out[1, 1], tokens.empty.detach())
    assert not torch.allclose(out[0, 0], out[1, 0])  # same class, another box
    assert box_features(torch.rand(5, 4)).shape == (5, 4 + 8 * 8)


def test_scene_objects_are_the_shapes_boxes():
    scene = next(s for s in (ShapesDataset(50, 0, 64, p_two=1.0).scene(i) for i in range(50)))
    rows = scene_objects(scene, 2)
    a = scene.objects[0]
    assert rows[0, 1:].tolist() == pytest.approx([a.cx - a.side / 2, a.cy - a.side / 2, a.cx + a.side / 2,
                                                  a.cy + a.side / 2])
    assert (rows[:, 0] >= 0).all()  # two objects: both slots used
    single = ShapesDataset(50, 0, 64, p_two=0.0).scene(0)
    assert scene_objects(single, 2)[1, 0] == -1


def _loaded(layout_run):
    return load_model(layout_run / "model", Runtime.auto("full", "cpu"))


def test_layout_model_saves_its_kind_and_generates_by_layout(layout_run):
    saved = json.loads((layout_run / "model" / T2I_CONFIG).read_text())["config"]
    assert saved["conditioning"] == "layout" and saved["max_objects"] == 2 and len(saved["class_names"]) == 24
    loaded = _loaded(layout_run)
    base = dict(prompt="on a white background", steps=2, seed=3, sampler="Euler", cfg_scale=3.0)
    one = txt2img(loaded, Txt2ImgParams(**base, layout=LAYOUT))
    again = txt2img(loaded, Txt2ImgParams(**base, layout=LAYOUT))
    other = txt2img(loaded, Txt2ImgParams(**base, layout="green triangle@0.5,0.5,0.9,0.9"))
    pixels = [np.asarray(r.images[0], dtype=np.float32) for r in (one, again, other)]
    assert one.images[0].size == (32, 32)
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    assert "Layout: " in one.infotexts[0] and "blue square@0.6" in one.infotexts[0]
    with pytest.raises(ParamError, match="unknown class"):
        txt2img(loaded, Txt2ImgParams(**base, layout="pink dot@0,0,1,1"))


def test_layout_on_a_text_model_is_a_param_error(tiny_model_dir):
    loaded = load_model(tiny_model_dir, Runtime.auto("full", "cpu"))
    with pytest.raises(ParamError, match="layout-to-image model"):
        txt2img(loaded, Txt2ImgParams(prompt="a red circle", steps=1, layout=LAYOUT))


def test_cli_generate_with_a_layout(layout_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "t2i.interfaces.cli", "generate", "on a white background", "--model",
           str(layout_run / "model"), "--steps", "2", "--seed", "1", "--threads", "1", "--outdir", str(tmp_path / "out")]
    out = subprocess.run([*cli, "--layout", LAYOUT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == 1
    with Image.open(pngs[0]) as image:
        assert "red circle@0.1,0.1,0.4,0.4" in image.info["parameters"]
    out = subprocess.run([*cli, "--layout", "red circle@0.1,0.1,0.4"], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "layout part 'red circle@0.1,0.1,0.4'" in out.stderr and "4 numbers" in out.stderr


def test_layout_map_is_each_classes_box_coverage_per_cell():
    objects = null_objects(2, 2)
    objects[0, 0] = torch.tensor([1, 0.0, 0.0, 0.5, 0.5])  # class 1: the top-left quarter, exactly 2x2 cells
    objects[0, 1] = torch.tensor([0, 0.625, 0.5, 1.0, 0.875])  # class 0: cell edges at 1/4 steps, half cells
    objects[1, 0] = torch.tensor([2, 0.1, 0.1, 0.2, 0.2])  # a box inside one cell
    grid = layout_map(objects, num_classes=3, height=4, width=4)
    assert grid.shape == (2, 3, 4, 4)
    expected = torch.zeros(4, 4)
    expected[:2, :2] = 1
    assert torch.equal(grid[0, 1], expected)
    assert grid[0, 0, 2].tolist() == pytest.approx([0, 0, 0.5, 1])  # x 0.625..1 over the cells of row 2
    assert grid[0, 0, 3].tolist() == pytest.approx([0, 0, 0.25, 0.5])  # row 3 half covered (y to 0.875)
    assert grid[0, 2].sum() == 0 and grid[1, :2].sum() == 0  # no boxes of those classes; empty slots add nothing
    assert grid[1, 2, 0, 0] == pytest.approx(0.16)  # (0.1 * 4) ** 2 of the cell
    assert grid[1, 2].sum() == pytest.approx(0.16)


class _RecordingUNet(torch.nn.Module):
    config = {"in_channels": 6}

    def forward(self, x, t, encoder_hidden_states):
        self.seen = x
        return x


def test_layout_channels_give_the_uncond_half_an_empty_map():
    objects = null_objects(1, 2)
    objects[0, 0] = torch.tensor([1, 0.0, 0.0, 0.5, 0.5])
    unet = _RecordingUNet()
    wrapped = LayoutChannels(unet, objects, num_classes=2, batch_size=3)
    x = torch.randn(6, 4, 4, 4)  # guided: [uncond, cond] of 3 images each
    wrapped(x, torch.tensor(5), encoder_hidden_states=torch.zeros(6, 1, 8))
    assert unet.seen.shape == (6, 6, 4, 4) and torch.equal(unet.seen[:, :4], x)
    assert unet.seen[:3, 4:].sum() == 0  # uncond: no layout
    assert torch.equal(unet.seen[3:, 5], layout_map(objects, 2, 4, 4)[0, 1].expand(3, -1, -1))
    wrapped(x[:3], torch.tensor(5), encoder_hidden_states=torch.zeros(3, 1, 8))  # unguided: cond only
    assert unet.seen.shape == (3, 6, 4, 4) and unet.seen[:, 5].sum() == 3 * 4
    with pytest.raises(ValueError, match="batch of 4"):
        wrapped(x[:4], torch.tensor(5), encoder_hidden_states=torch.zeros(4, 1, 8))


def test_layout_map_model_trains_loads_strictly_and_its_boxes_steer_it(layout_map_run):
    saved = json.loads((layout_map_run / "model" / T2I_CONFIG).read_text())["config"]
    assert saved["layout_map"] is True
    unet_config = json.loads((layout_map_run / "model" / "unet" / "config.json").read_text())
    assert unet_config["in_channels"] == 4 + 24  # latents + one map channel per class
    loaded = load_model(layout_map_run / "model", Runtime.auto("full", "cpu"))
    base = dict(prompt="on a white background", steps=2, seed=3, sampler="Euler", cfg_scale=3.0)
    one = txt2img(loaded, Txt2ImgParams(**base, layout=LAYOUT, batch_size=2))
    moved = txt2img(loaded, Txt2ImgParams(**base, layout="red circle@0.5,0.5,0.9,0.9; blue square@0.6,0.5,0.9,0.8",
                                          batch_size=2))
    unguided = txt2img(loaded, Txt2ImgParams(**{**base, "cfg_scale": 1.0}, layout=LAYOUT))
    assert len(one.images) == 2 and unguided.images[0].size == (32, 32)
    assert not np.array_equal(np.asarray(one.images[0]), np.asarray(moved.images[0]))  # only a box moved


def test_layout_map_model_refuses_what_would_drop_its_layout(layout_map_run):
    from t2i.pipelines.generation_params import Img2ImgParams
    from t2i.pipelines.img2img import img2img

    loaded = load_model(layout_map_run / "model", Runtime.auto("full", "cpu"))
    base = dict(prompt="on a white background", steps=2, seed=3, layout=LAYOUT)
    with pytest.raises(ParamError, match="hires fix"):
        txt2img(loaded, Txt2ImgParams(**base, enable_hr=True, hr_scale=2.0))
    with pytest.raises(ParamError, match="DeepCache"):
        txt2img(loaded, Txt2ImgParams(**base, deepcache_interval=2))
    with pytest.raises(ParamError, match="txt2img only"):
        img2img(loaded, Img2ImgParams(prompt="on a white background", steps=2), Image.new("RGB", (32, 32)))


def test_layout_map_needs_a_layout_model():
    from t2i.models.ldm import LDMConfig

    with pytest.raises(ValueError, match="layout_map is for layout models"):
        LDMConfig(layout_map=True)


def _layout_map_model(config):
    from t2i.data.labels import SHAPES_CLASSES
    from t2i.models.ldm import LatentDiffusion

    return LatentDiffusion(replace(config, conditioning="layout", layout_map=True, class_names=SHAPES_CLASSES))


def test_init_from_starts_a_layout_map_model_as_the_source_model(tiny_model_dir):
    """init_from: the source's UNet and text encoder, the map's input channels at zero, so with an
    empty layout the new model predicts exactly what the source does."""
    from conftest import tiny_ldm_config
    from t2i.checkpoints.diffusers_folder import load_ldm_folder
    from t2i.training.ldm_init import init_from_model

    torch.manual_seed(1)
    model = _layout_map_model(tiny_ldm_config())
    init_from_model(model, str(tiny_model_dir))
    source = load_ldm_folder(tiny_model_dir)
    conv = model.unet.conv_in.weight
    assert torch.equal(conv[:, :4], source.unet.conv_in.weight) and conv[:, 4:].abs().sum() == 0
    theirs = source.unet.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.unet.state_dict().items() if k != "conv_in.weight")
    assert all(torch.equal(v, source.text_encoder.state_dict()[k]) for k, v in model.text_encoder.state_dict().items())
    x, t, context = torch.randn(2, 4, 4, 4), torch.tensor(500), torch.randn(2, 5, 32)
    with torch.no_grad():
        empty = model.layout_unet(null_objects(1, 2), 2)(x, t, encoder_hidden_states=context).sample
        assert torch.allclose(empty, source.unet(x, t, encoder_hidden_states=context).sample, atol=1e-6)
        placed = null_objects(1, 2)
        placed[0, 0] = torch.tensor([0, 0.0, 0.0, 0.5, 0.5])
        out = model.layout_unet(placed, 2)(x, t, encoder_hidden_states=context).sample
        assert torch.equal(out, empty)  # zero weights: the map has no effect until training moves them


def test_init_from_a_model_of_another_shape_is_a_load_error(tiny_model_dir):
    from conftest import tiny_ldm_config
    from t2i.errors import ModelLoadError
    from t2i.models.ldm import UNetConfig
    from t2i.training.ldm_init import init_from_model

    other = replace(tiny_ldm_config(), unet=UNetConfig(block_out_channels=(8, 16), cross_attention=(False, True),
                                                       norm_num_groups=8))
    with pytest.raises(ModelLoadError, match="init_from needs the same unet config"):
        init_from_model(_layout_map_model(other), str(tiny_model_dir))
    with pytest.raises(ModelLoadError, match="does not exist"):
        init_from_model(_layout_map_model(tiny_ldm_config()), str(tiny_model_dir / "nowhere"))


def test_a_run_started_from_a_model_keeps_its_latent_scaling(tiny_model_dir, tmp_path):
    from t2i.training.ldm import export_from_checkpoints, train_ldm

    source = json.loads((tiny_model_dir / T2I_CONFIG).read_text())["config"]["scaling_factor"]
    cfg = tiny_train_config(vae_steps=2, unet_steps=2)
    cfg.model = replace(cfg.model, conditioning="layout", layout_map=True)
    cfg.vae_from = cfg.init_from = str(tiny_model_dir)
    train_ldm(cfg, tmp_path)
    saved = json.loads((tmp_path / "model" / T2I_CONFIG).read_text())["config"]
    assert saved["scaling_factor"] == source
    export_from_checkpoints(cfg, tmp_path, tmp_path / "exported")  # a folder from the checkpoints: the same scaling
    assert json.loads((tmp_path / "exported" / T2I_CONFIG).read_text())["config"]["scaling_factor"] == source
