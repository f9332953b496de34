"""Retrieval-augmented diffusion (`model.conditioning: retrieval`, `t2i rdm build-db`): the database
and its search, training with each image's neighbours, prompt sampling through the CLI, bad input."""
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_trainer import tiny_train_config

from t2i.checkpoints.clip_folder import save_clip_folder
from t2i.checkpoints.retrieval_db import RetrievalDatabase, load_database, load_embedder, save_database
from t2i.config import ConfigError
from t2i.errors import ModelLoadError, ParamError
from t2i.models.clip import CLIPModelConfig, build_clip
from t2i.training.ldm import train_ldm
from t2i.training.ldm_retrieval import (
    DATABASE_IN_MODEL,
    data_source,
    training_neighbours,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
CLI = [sys.executable, "-m", "t2i.interfaces.cli"]


def _tiny_clip(folder, projection_dim=16, seed=0):
    torch.manual_seed(seed)
    cfg = CLIPModelConfig(resolution=16, patch_size=8, vision_width=16, vision_layers=1, vision_heads=2,
                          vision_mlp=32, text_width=16, text_layers=1, text_heads=2, text_mlp=32, max_length=24,
                          projection_dim=projection_dim)
    return save_clip_folder(build_clip(cfg), folder)


def _cli(*args, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], check=False, capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def rdm_run(tmp_path_factory):
    """A tiny CLIP, a database of the run's own 64 training images (built by the CLI) and a tiny
    retrieval LDM trained a few steps on them."""
    root = tmp_path_factory.mktemp("rdm")
    clip = _tiny_clip(root / "clip")
    db = root / "shapes.db.safetensors"
    out = _cli("rdm", "build-db", "--clip", clip, "--data", "shapes", "--size", 64, "--resolution", 32, "--out", db)
    assert out.returncode == 0, out.stderr
    assert "64 images, 16-wide" in out.stdout
    cfg = tiny_train_config(vae_steps=2, unet_steps=4)
    cfg.model = replace(cfg.model, conditioning="retrieval", retrieval_k=3)
    cfg.retrieval_database = str(db)
    train_ldm(cfg, root / "run")
    return root


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def _db(embeddings):
    n = len(embeddings)
    return RetrievalDatabase(_unit(torch.tensor(embeddings, dtype=torch.float32)), [f"c{i}" for i in range(n)],
                             [f"id{i}" for i in range(n)], "default", "test")


def test_search_returns_the_nearest_entries_best_first_and_can_leave_one_out(tmp_path):
    db = _db([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])
    query = torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.0, 2.0]])
    sims, idx = db.search(query, 3)
    assert idx.tolist() == [[0, 3, 4], [2, 4, 1]]
    assert torch.all(sims[:, :-1] >= sims[:, 1:])  # best first
    assert torch.allclose(sims[1, 0], torch.tensor(1.0))
    # leave out entry 0 for the first query and nothing (-1) for the second
    assert db.search(query, 2, exclude=torch.tensor([0, -1]))[1].tolist() == [[3, 4], [2, 4]]
    # float16 on disk keeps the order, captions and ids
    loaded = load_database(save_database(db, tmp_path / "db.safetensors"))
    assert loaded.search(query, 3)[1].tolist() == idx.tolist()
    assert loaded.captions == db.captions and loaded.ids == db.ids and loaded.dim == 3
    with pytest.raises(ParamError, match="5 images"):
        db.search(query, 5, exclude=torch.tensor([0, -1]))
    with pytest.raises(ModelLoadError, match="3-wide"):
        db.search(torch.ones(1, 4), 1)


def test_faiss_and_torch_search_find_the_same_neighbours():
    """faiss (installed by the test extra) and the torch fallback are both exact: same neighbours."""
    from t2i.checkpoints.retrieval_db import _topk, faiss_available

    assert faiss_available()
    generator = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(3000, 48, generator=generator), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(70, 48, generator=generator), dim=1)
    by_faiss = _topk(keys, queries, 5, use_faiss=True)
    by_torch = _topk(keys, queries, 5, use_faiss=False)
    assert torch.equal(by_faiss[1], by_torch[1])
    assert torch.allclose(by_faiss[0], by_torch[0], atol=1e-5)
    assert torch.all(by_faiss[0][:, :-1] >= by_faiss[0][:, 1:])


def test_built_database_finds_each_image_itself_and_training_leaves_it_out(rdm_run):
    db = load_database(rdm_run / "shapes.db.safetensors")
    assert len(db) == 64 and db.dim == 16 and db.ids[5] == "shapes:0:5"
    assert db.source == data_source(tiny_train_config().data, 32)
    assert torch.allclose(db.embeddings.norm(dim=1), torch.ones(64), atol=2e-3)  # L2-normalised
    from t2i.data.images import load_image_source

    images = load_image_source(tiny_train_config().data, 32).images
    embedder = load_embedder(rdm_run / "clip")
    sims, idx = db.search(embedder.embed_images(images[:8]), 1)
    assert idx[:, 0].tolist() == list(range(8)) and torch.all(sims > 0.99)
    # the run's own images (same source): its index is left out; another source: found by similarity
    for source in (db.source, "other images"):
        nbr = training_neighbours(db, images, source, 3, embedder)
        assert nbr.shape == (64, 3)
        assert not (nbr == torch.arange(64).view(-1, 1)).any()


def test_run_records_the_width_and_ships_its_database(rdm_run):
    from t2i.checkpoints.diffusers_folder import load_ldm_folder

    model = load_ldm_folder(rdm_run / "run" / "model")
    assert model.config.conditioning == "retrieval" and model.config.retrieval_dim == 16
    assert model.text_encoder is None and model.conditioner.proj.in_features == 16
    assert (rdm_run / "run" / "model" / DATABASE_IN_MODEL).is_file()
    from t2i.checkpoints.registry import load_model

    with pytest.raises(ModelLoadError, match="t2i sample"):
        load_model(rdm_run / "run" / "model")


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_cli_samples_from_a_prompt_by_retrieval(rdm_run, tmp_path):
    def sample(name, *extra):
        out = _cli("sample", rdm_run / "run", "--n", 2, "--steps", 2, "--seed", 3, "-o", tmp_path / name, *extra)
        assert out.returncode == 0, out.stderr
        return _pixels(tmp_path / name)

    red = sample("red.png", "--prompt", "a red circle")
    assert red.shape == (32, 64, 3)  # a grid of two 32 px images
    assert not np.array_equal(red, sample("text.png", "--prompt", "a red circle", "--retrieval", "text"))
    assert "Retrieval: text" in Image.open(tmp_path / "text.png").text.get("parameters", "")


def _flat(image):
    return torch.from_numpy(np.asarray(image, dtype=np.float32))


def test_prompt_picks_the_neighbours_and_seeds_repeat(rdm_run):
    from t2i.pipelines.families import load_family_model, sample_family

    loaded = load_family_model(rdm_run / "run")
    red = sample_family(loaded, 1, 3, prompt="a red circle", steps=2)[0]
    assert torch.equal(_flat(red), _flat(sample_family(loaded, 1, 3, prompt="a red circle", steps=2)[0]))
    own_db = rdm_run / "shapes.db.safetensors"  # the model's copy is the same database
    assert torch.equal(_flat(red), _flat(sample_family(loaded, 1, 3, prompt="a red circle", steps=2,
                                                       database=str(own_db))[0]))
    both = sample_family(loaded, 1, 3, prompt="a red circle", steps=2, retrieval="both")[0]
    assert not torch.equal(_flat(red), _flat(both))
    from t2i.pipelines.rdm import retrieval_embeddings

    retriever = loaded.model.retriever
    emb = retrieval_embeddings(retriever, ["a red circle"], "both", 3)
    assert emb.shape == (1, 3, 16)
    text = retriever.embedder.embed_texts(["a red circle"])
    assert torch.allclose(emb[0, 0], text[0])  # the text embedding itself, then its 2 nearest images
    assert torch.equal(emb[0, 1:], retriever.database.embeddings[retriever.database.search(text, 2)[1][0]])


def test_bad_input_is_one_clear_error(rdm_run, tmp_path):
    base = ["sample", rdm_run / "run", "--n", 1, "--steps", 1, "-o", tmp_path / "x.png", "--prompt", "a red circle"]
    missing = _cli(*base, "--database", tmp_path / "nope.safetensors")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "rdm build-db" in missing.stderr
    assert "Traceback" not in missing.stderr
    # a database of another CLIP's width
    other = RetrievalDatabase(_unit(torch.randn(10, 8)), ["c"] * 10, [str(i) for i in range(10)], "default", "x")
    wide = _cli(*base, "--database", save_database(other, tmp_path / "w8.safetensors"))
    assert wide.returncode == 2 and "8-wide" in wide.stderr and "16-wide" in wide.stderr
    assert "Traceback" not in wide.stderr
    from t2i.pipelines.families import load_family_model, sample_family
    from t2i.pipelines.rdm import build_database

    loaded = load_family_model(rdm_run / "run")
    not_db = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(not_db))
    with pytest.raises(ModelLoadError, match="not a t2i retrieval database"):
        sample_family(loaded, 1, 0, prompt="a red circle", steps=1, database=str(not_db))
    with pytest.raises(ParamError, match="--prompt"):
        sample_family(loaded, 1, 0, steps=1)
    with pytest.raises(ValueError, match="not a class"):
        sample_family(loaded, 1, 0, "red circle", steps=1)
    with pytest.raises(ParamError, match="neither"):
        build_database(rdm_run / "clip", str(tmp_path / "no-folder"), tmp_path / "d.safetensors")


def test_training_refuses_a_missing_or_mismatched_database_before_training(rdm_run, tmp_path):
    cfg = tiny_train_config(vae_steps=1, unet_steps=1)
    cfg.model = replace(cfg.model, conditioning="retrieval")
    with pytest.raises(ConfigError, match="retrieval_database"):
        train_ldm(cfg, tmp_path / "a")
    cfg.retrieval_database = str(tmp_path / "missing.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        train_ldm(cfg, tmp_path / "b")
    cfg.retrieval_database = str(rdm_run / "shapes.db.safetensors")
    cfg.model = replace(cfg.model, retrieval_dim=8)
    with pytest.raises(ConfigError, match="16-wide"):
        train_ldm(cfg, tmp_path / "c")
    assert not (tmp_path / "c" / "vae.ckpt").exists()  # nothing trained
    text = tiny_train_config(vae_steps=1, unet_steps=1)
    text.retrieval_database = cfg.retrieval_database
    with pytest.raises(ValueError, match="retrieval_database is for"):
        train_ldm(text, tmp_path / "d")
    # a CLIP of another width than the database's: training's query embeddings are refused
    db = load_database(cfg.retrieval_database)
    with pytest.raises(ModelLoadError, match="16-wide"):
        training_neighbours(db, torch.zeros(4, 32, 32, 3, dtype=torch.uint8), "other", 2,
                            load_embedder(_tiny_clip(tmp_path / "clip8", projection_dim=8)))
