"""t2i's CLIP: the model and its loss, the `clip` recipe (checkpoints, resume), the transformers
folder round trip, `t2i interrogate`, `t2i evaluate clip-score`, and the concept safety checker.
Tiny random CLIPs; the bundled CLIP's accuracy is tested in test_clip_bundled.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from t2i.checkpoints.clip_folder import load_clip_folder, save_clip_folder
from t2i.data.shapes import ShapesDataset
from t2i.errors import ModelLoadError, ParamError
from t2i.evaluate.clip_captions import pair_candidates, rank_shapes, single_candidates
from t2i.evaluate.shapes_checker import parse_prompt
from t2i.metadata import write_image
from t2i.models.clip import CLIPModelConfig, build_clip, contrastive_loss, pixel_values
from t2i.training.clip import CLIPTrainConfig, _scene_codes, train_clip, truth_matrix
from t2i.training.registry import load_training_config

ROOT = Path(__file__).resolve().parents[1]
TINY = CLIPModelConfig(resolution=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2, vision_mlp=32,
                       text_width=16, text_layers=1, text_heads=2, text_mlp=32, max_length=24, projection_dim=16)


def run_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], check=False, capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_clip_folder(build_clip(TINY), tmp_path_factory.mktemp("clip") / "tiny")


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory):
    """Three shapes images with their captions in the infotext, and one without."""
    folder = tmp_path_factory.mktemp("shapes_images")
    ds = ShapesDataset(3, 7, 64, p_two=0.5, p_short=0.0)
    paths = []
    for i in range(3):
        paths.append(write_image(ds[i]["image"], folder / f"{i}.png", ds[i]["caption"] + "\nSteps: 20, Sampler: Euler, Seed: 1"))
    ds[0]["image"].save(folder / "plain.png")
    return folder, paths


# ---------------------------------------------------------------------------------- the model
def test_forward_loss_and_gradients():
    torch.manual_seed(0)
    clip = build_clip(TINY)
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    ids = torch.randint(0, 49406, (4, 24))
    out = clip(input_ids=ids, pixel_values=pixel_values(images, 16))
    assert out.logits_per_image.shape == (4, 4)
    truth = torch.eye(4, dtype=torch.bool)
    loss = contrastive_loss(out.logits_per_image, truth)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert clip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert clip.text_model.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_soft_targets_count_compatible_captions():
    logits = torch.tensor([[0.0, 5.0], [0.0, 5.0]])  # image 0 looks like caption 1
    both = torch.tensor([[True, True], [False, True]])  # caption 1 is also true of image 0
    assert contrastive_loss(logits, both) < contrastive_loss(logits, torch.eye(2, dtype=torch.bool))


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of model.patch_size"):
        CLIPModelConfig(resolution=20, patch_size=8)
    with pytest.raises(ValueError, match="divisible"):
        CLIPModelConfig(text_width=30, text_heads=4)


def test_truth_of_short_captions():
    ds = ShapesDataset(400, 3, 16, p_two=0.3, p_short=0.5)
    codes = [_scene_codes(ds.scene(i)) for i in range(400)]
    scenes, claims = torch.tensor([c[0] for c in codes]), torch.tensor([c[1] for c in codes])
    truth = truth_matrix(scenes, claims)
    assert truth.diagonal().all()
    # a claim is true of another scene exactly when the stated words of its caption fit that scene
    for i, j in [(i, j) for i in range(60) for j in range(60) if i != j][:2000]:
        a, b = ds.scene(i), ds.scene(j)
        if truth[i, j]:
            assert (len(a.objects), a.objects[0].color, a.objects[0].shape) == \
                (len(b.objects), b.objects[0].color, b.objects[0].shape)
    assert truth.sum() > 400  # some short captions fit more than their own scene


def test_hard_negatives_are_false_for_their_image():
    from t2i.data.labels import ImageDataConfig
    from t2i.training.clip import shapes_hard_negatives, shapes_truth_codes

    cfg = ImageDataConfig(size=200, seed=4, p_two=0.3, p_short=0.3)
    captions, neg_claims = shapes_hard_negatives(cfg, 64, 2)
    scenes, _ = shapes_truth_codes(cfg, 64)
    assert len(captions) == 400 and neg_claims.shape == (400, 9)
    own = truth_matrix(scenes, neg_claims)[torch.arange(200)[:, None], torch.arange(400).view(200, 2)]
    assert not own.any()  # every variant is false of the image it was made from
    ds = ShapesDataset(200, 4, 64, p_two=0.3, p_short=0.3)
    assert all(captions[2 * i] != ds[i]["caption"] for i in range(5))


# ------------------------------------------------------------------------------ folder round trip
def test_folder_round_trip_and_damaged_folders(tiny_clip_dir, tmp_path):
    model, tokenizer_dir = load_clip_folder(tiny_clip_dir)
    assert tokenizer_dir is None  # the bundled tokenizer
    torch.manual_seed(0)
    reference = build_clip(TINY).eval()
    ids = torch.randint(0, 49406, (2, 24))
    assert torch.equal(model.get_text_features(input_ids=ids).pooler_output,
                       reference.get_text_features(input_ids=ids).pooler_output)
    from transformers import CLIPModel

    assert isinstance(CLIPModel.from_pretrained(tiny_clip_dir), CLIPModel)  # transformers opens it too
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_clip_folder(tmp_path)
    other = CLIPModelConfig(**{**TINY.__dict__, "projection_dim": 8})
    save_clip_folder(build_clip(other), tmp_path / "mixed")
    (tmp_path / "mixed" / "config.json").write_text((tiny_clip_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="shape"):
        load_clip_folder(tmp_path / "mixed")


# ---------------------------------------------------------------------------------- training
def test_recipe_trains_resumes_exactly_and_writes_a_folder(tmp_path):
    family, cfg, train_fn = load_training_config(ROOT / "configs" / "tiny-clip.yaml")
    assert (family, train_fn) == ("clip", train_clip) and isinstance(cfg, CLIPTrainConfig)
    train_clip(cfg, tmp_path / "a")
    straight = load_clip_folder(tmp_path / "a" / "clip")[0].state_dict()
    train_clip(cfg, tmp_path / "b", stop_after=3)
    assert not (tmp_path / "b" / "clip").exists()  # unfinished: only the checkpoint
    train_clip(cfg, tmp_path / "b", resume=True)
    resumed = load_clip_folder(tmp_path / "b" / "clip")[0].state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    ckpt = torch.load(tmp_path / "a" / "clip.ckpt", weights_only=True)
    assert ckpt["step"] == cfg.train.steps and len(ckpt["losses"]) == cfg.train.steps


def test_train_rejects_unknown_keys(tmp_path, capsys):
    from t2i.interfaces.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "tiny-clip.yaml").read_text().replace("text_mlp: 32", "text_mlp: 32, txt_mlp: 3"))
    assert main(["train", str(bad), "--outdir", str(tmp_path / "run")]) == 2
    assert "txt_mlp" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- ranking
def test_candidates_cover_the_grammar():
    singles, pairs = single_candidates(), pair_candidates()
    assert len(singles) == 8 * 3 * 3 * 5 * 7 and len(pairs) == 8 * 3 * 2 * 7 * 3 * 6


def test_rank_shapes_gives_grammatical_captions(tiny_clip_dir, shapes_images):
    from t2i.evaluate.clip_scorer import load_scorer

    scorer = load_scorer(tiny_clip_dir)
    images = [ShapesDataset(4, 1, 64)[i]["image"] for i in range(4)]
    for ranked in rank_shapes(scorer, images):
        spec = parse_prompt(ranked.caption)  # the checker's parser accepts it
        assert spec.background is not None
        assert all(0 <= p <= 1 for _, p in ranked.scores.values())


# ------------------------------------------------------------------------------------ the CLI
def test_interrogate_cli(tiny_clip_dir, shapes_images, tmp_path):
    folder, paths = shapes_images
    r = run_cli("interrogate", *paths, "--clip", tiny_clip_dir, "--scores")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().split("\n")
    assert len(lines) == 3
    for line, path in zip(lines, paths):
        shown, caption, scores = line.split("\t")
        assert shown == str(path)
        parse_prompt(caption)
        assert scores.startswith("objects=")
    vocab = tmp_path / "colours.top2.txt"
    vocab.write_text("a red thing\n\na blue thing\na green thing\n")
    r = run_cli("interrogate", paths[0], "--clip", tiny_clip_dir, "--vocabulary", vocab)
    assert r.returncode == 0, r.stderr
    terms = r.stdout.strip().split("\t")[1].split(", ")
    assert len(terms) == 2 and set(terms) <= {"a red thing", "a blue thing", "a green thing"}
    r = run_cli("interrogate", folder / "missing.png")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [(("--top", "2"), "--top applies"),
                                           (("--vocabulary", "none.txt"), "vocabulary file"),
                                           (("--clip", "."), "no config.json")])
def test_interrogate_errors(shapes_images, tmp_path, capsys, monkeypatch, args, message):
    """The CLI's error path in-process (the subprocess test above covers the front door)."""
    from t2i.interfaces.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["interrogate", str(shapes_images[1][0]), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_clip_score_cli(tiny_clip_dir, shapes_images, tmp_path):
    folder, paths = shapes_images
    r = run_cli("evaluate", "clip-score", folder, "--clip", tiny_clip_dir)
    assert r.returncode == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.strip().split("\n")]
    assert [row[0] for row in rows] == [str(p) for p in paths]
    values = [float(row[1]) for row in rows]
    assert all(0 <= v <= 100 for v in values)
    mean = float(re.search(r"mean (\d+\.\d+) over 3 images", r.stderr).group(1))
    assert abs(mean - sum(values) / 3) < 0.01
    assert "1 image(s) without a prompt skipped" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("evaluate", "clip-score", empty, "--clip", tiny_clip_dir)
    assert r.returncode == 2 and "no image" in r.stderr


# ------------------------------------------------------------------------------- safety checker
def test_concept_checker_blocks_what_matches(tiny_clip_dir, tmp_path):
    from t2i.evaluate.clip_scorer import load_scorer
    from t2i.pipelines.clip_safety import ConceptSafetyChecker, save_concepts
    from t2i.pipelines.safety import load_safety_checker

    scorer = load_scorer(tiny_clip_dir)
    ds = ShapesDataset(4, 5, 64, p_two=0.0)
    images = [ds[i]["image"] for i in range(4)]
    emb = scorer.embed_images(images)
    # a concept made from image 0 whose threshold only image 0 passes
    sims = (emb @ emb[0]).tolist()
    threshold = (sims[0] + max(sims[1:])) / 2
    folder = tmp_path / "concepts"
    save_concepts(folder, ["image zero"], emb[:1], [threshold])
    for name in ("config.json", "model.safetensors"):  # the folder carries its CLIP
        (folder / name).write_bytes((tiny_clip_dir / name).read_bytes())
    checker = load_safety_checker(folder)  # --safety-checker picks the concept checker
    assert isinstance(checker, ConceptSafetyChecker)
    out, flags = checker.check(images)
    assert flags == [True, False, False, False]
    assert out[0].getextrema() == ((0, 0),) * 3 and out[1] is images[1]
    # a special-care match lowers every threshold by 0.01 (CompVis): image 1 just under becomes flagged
    save_concepts(folder, ["image one"], emb[1:2], [sims[1] * 0 + float(emb[1] @ emb[1]) + 0.005],
                  ["always"], emb[1:2], [-1.0])
    assert load_safety_checker(folder).check(images[1:2])[1] == [True]


def test_concept_file_errors(tiny_clip_dir, tmp_path):
    from t2i.pipelines.clip_safety import load_concept_checker, save_concepts

    with pytest.raises(ValueError, match="one embedding and one threshold"):
        save_concepts(tmp_path / "x", ["a", "b"], torch.randn(1, 16), [0.1])
    save_concepts(tmp_path / "wide", ["a"], torch.randn(1, 7), [0.1])
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "wide" / name).write_bytes((tiny_clip_dir / name).read_bytes())
    with pytest.raises(ModelLoadError, match="another CLIP"):
        load_concept_checker(tmp_path / "wide")


def test_vocabulary_file_rules(tmp_path):
    from t2i.pipelines.interrogate import read_vocabulary

    path = tmp_path / "artists.top3.txt"
    path.write_text("a\nb\n a \n\nc\nd\n")
    v = read_vocabulary(path)
    assert (v.name, v.terms, v.top) == ("artists", ["a", "b", "c", "d"], 3)
    assert read_vocabulary(path, top=1).top == 1
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ParamError, match="no terms"):
        read_vocabulary(tmp_path / "empty.txt")
