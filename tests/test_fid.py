"""FID in t2i's own shapes features: Fréchet distance math, the shipped feature net, `t2i evaluate fid`."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2i.evaluate.features import (FeatureNet, FeatureNetConfig, FeatureTrainConfig, IGNORE, head_accuracy,
                                   load_feature_net, render_labelled, save_feature_net, scene_labels,
                                   shipped_weights_dir, train_feature_net)
from t2i.evaluate.fid import fid_from_features, fid_score, frechet_distance, image_features

# measured on the shipped net (2000 held-out scenes, seed 999): every head >= 0.98; see BENCHMARKS.md
MIN_HEAD_ACCURACY = 0.9


def _random_cov(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


def _shapes(n, seed):
    from t2i.evaluate.recon import heldout_shapes

    return heldout_shapes(n, 64, seed).permute(0, 3, 1, 2).float() / 255


def _blur(images, sigma):
    radius = round(3 * sigma)
    coords = torch.arange(2 * radius + 1, dtype=torch.float32) - radius
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = (torch.outer(g, g) / g.sum() ** 2).expand(3, 1, 2 * radius + 1, 2 * radius + 1)
    return F.conv2d(F.pad(images, (radius,) * 4, mode="replicate"), kernel, groups=3)


def test_frechet_distance_zero_for_identical_symmetric_and_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = _random_cov(6, 1), _random_cov(6, 2)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    # diagonal Gaussians: |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    a, b = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_the_sqrtm_formula_of_the_reference_code():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    mu1, mu2, s1, s2 = rng.normal(size=8), rng.normal(size=8), _random_cov(8, 4), _random_cov(8, 5)
    covmean = sqrtm(s1 @ s2).real
    reference = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-7)
    # singular covariances (fewer samples than dimensions) stay finite and non-negative
    feats = rng.normal(size=(5, 8))
    assert 0 < fid_from_features(feats, feats + 0.5) < math.inf
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])


def test_scene_labels_follow_the_scene():
    from t2i.data.shapes import ShapesDataset

    heads = FeatureNetConfig().heads
    dataset = ShapesDataset(length=50, seed=0)
    scenes = [dataset.scene(i) for i in range(50)]
    single = next(s for s in scenes if s.relation is None)
    pair = next(s for s in scenes if s.relation is not None)
    labels = scene_labels(single, heads)
    assert heads["color"][labels["color"]] == single.objects[0].color
    assert heads["position"][labels["position"]] == single.position
    assert labels["relation"] == labels["color_b"] == IGNORE and heads["count"][labels["count"]] == "one"
    labels = scene_labels(pair, heads)
    assert heads["shape_b"][labels["shape_b"]] == pair.objects[1].shape
    assert heads["relation"][labels["relation"]] == pair.relation and labels["size"] == IGNORE


def test_training_is_deterministic_and_saves_a_strictly_loading_net(tmp_path):
    train = FeatureTrainConfig(train_size=48, heldout_size=24, steps=3, batch_size=16)
    net_config = FeatureNetConfig(widths=(8, 8, 8, 8), feature_dim=16, groups=4)
    nets = [train_feature_net(net_config, train, log=lambda _: None) for _ in range(2)]
    for p, q in zip(nets[0][0].parameters(), nets[1][0].parameters()):
        assert torch.equal(p, q)
    net, info = nets[0]
    assert set(info["heldout_accuracy"]) == set(net_config.heads) | {"all"}
    save_feature_net(net, tmp_path / "net", info)
    loaded = load_feature_net(tmp_path / "net")
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(loaded.features(x), net.features(x))
    # strict: a weight file that does not match its config is refused
    config = json.loads((tmp_path / "net" / "config.json").read_text())
    config["architecture"]["feature_dim"] = 17
    (tmp_path / "net" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="does not fit the feature net"):
        load_feature_net(tmp_path / "net")
    with pytest.raises(FileNotFoundError, match="train_fid_features"):
        load_feature_net(tmp_path / "missing")


def test_shipped_net_loads_strictly_and_classifies_heldout_shapes():
    assert (shipped_weights_dir() / "model.safetensors").stat().st_size < 2_000_000
    net = load_feature_net()
    images, labels = render_labelled(300, 999, net.config.heads)
    accuracy = head_accuracy(net, images, labels)
    low = {name: acc for name, acc in accuracy.items() if name != "all" and acc < MIN_HEAD_ACCURACY}
    assert not low, f"held-out accuracy below {MIN_HEAD_ACCURACY}: {low}"
    state = net.state_dict()
    state.pop("embed.bias")
    with pytest.raises(RuntimeError, match="Missing key"):
        FeatureNet(net.config).load_state_dict(state, strict=True)


def test_fid_of_real_sets_is_far_below_fid_of_degraded_images():
    from t2i.data.images import render_shapes
    from t2i.data.shapes import ShapesDataset

    # measured at N=256: real vs real 58; blur sigma 3: 104; noise std 0.3: 305; channels rotated: 209;
    # single-object scenes only: 258. The net is a classifier, so mild blur barely moves it (BENCHMARKS.md).
    real, other = _shapes(256, 999), _shapes(256, 1000)
    net = load_feature_net()
    floor = fid_score(real, other, net)
    assert fid_score(real, real, net) == pytest.approx(0, abs=1e-6)
    noise = (other + 0.3 * torch.randn(other.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    single = render_shapes(ShapesDataset(256, 1000, 64, p_two=0.0), workers=1).images
    degraded = {"noise": (noise, 3), "channels rotated": (other[:, [2, 0, 1]], 2.5),
                "no two-object scenes": (single.permute(0, 3, 1, 2).float() / 255, 3), "blur": (_blur(other, 3.0), 1.3)}
    for name, (images, factor) in degraded.items():
        score = fid_score(real, images, net)
        assert score > factor * floor, f"{name}: FID {score:.3f} vs real-vs-real {floor:.3f}"
    # any size works: 128x128 inputs are resized with antialias to nearly the same features
    up = F.interpolate(real[:8], scale_factor=2, mode="nearest")
    base = image_features(real[:8], net)
    assert image_features(up, net).shape == base.shape
    assert (image_features(up, net) - base).norm() < 0.2 * base.norm()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fid_score(real * 2 - 1, other)


def test_cli_fid_on_folders_and_shapes(tmp_path, capsys):
    from PIL import Image

    from t2i.interfaces.cli import main

    images = (_shapes(12, 5) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for folder, part in (("a", images[:6]), ("b", images[6:])):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(part):
            Image.fromarray(image).save(tmp_path / folder / f"{i}.png")
    assert main(["evaluate", "fid", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert float(captured.out.strip()) >= 0 and "6 images from" in captured.err
    assert main(["evaluate", "fid", "shapes", str(tmp_path / "a"), "--n", "6"]) == 0
    assert float(capsys.readouterr().out.strip()) > 0
    assert main(["evaluate", "fid", str(tmp_path / "a"), str(tmp_path / "a")]) == 0
    assert float(capsys.readouterr().out.strip()) == pytest.approx(0, abs=1e-3)
    assert main(["evaluate", "fid", "shapes:x", str(tmp_path / "a")]) == 2
    assert main(["evaluate", "fid", str(tmp_path / "nope"), str(tmp_path / "a")]) == 2
