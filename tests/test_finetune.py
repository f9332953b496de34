"""Fine-tuning end to end on tiny random models: every method through `t2i finetune` as a
subprocess, the files it writes read by t2i (`<lora:>`, embeddings, `<hypernet:>`, `--model`) and
by diffusers (load_lora_weights, load_textual_inversion) with the same images, exact resume,
gradient accumulation, checkpoints of the trained weights only, SDXL."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from t2i.data.shapes import ShapesDataset

STEPS = ["--steps", 4, "--batch-size", 4, "--sample-steps", 2, "--threads", 1]


def cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """Six captioned `shapes` pictures at 32 px, plus files the preflight must skip."""
    folder = tmp_path_factory.mktemp("pictures")
    dataset = ShapesDataset(6, seed=3, resolution=32)
    for i in range(6):
        sample = dataset[i]
        sample["image"].save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(sample["caption"])
    (folder / "empty.png").write_bytes(b"")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.mkfifo(folder / "pipe.png")
    return folder


@pytest.fixture(scope="module")
def plain_folder(shapes_folder, tmp_path_factory):
    """The same pictures without captions (for --caption)."""
    folder = tmp_path_factory.mktemp("plain")
    for i in range(6):
        (folder / f"p{i}.png").write_bytes((shapes_folder / f"p{i}.png").read_bytes())
    return folder


def diffusers_pipe(model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_image(pipe, prompt: str) -> np.ndarray:
    image = pipe(prompt, num_inference_steps=4, guidance_scale=7.0, generator=torch.Generator().manual_seed(1)).images[0]
    return np.asarray(image).astype(int)


def t2i_image(loaded, prompt: str) -> np.ndarray:
    import t2i

    return np.asarray(t2i.generate(prompt, model=loaded, seed=1, steps=4, sampler="DDIM", cfg_scale=7.0)[0]).astype(int)


def largest(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def test_lora_cli_skips_bad_files_and_loads_in_t2i_and_diffusers_alike(tiny_model_dir, shapes_folder, tmp_path):
    import t2i

    out = tmp_path / "out"
    run = cli("finetune", "lora", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", out, "--name", "shapes",
              "--rank", 2, "--conv-rank", 2, "--train-text-encoder", "--lr", 0.05, "--sample-every", 2, *STEPS)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(out / "shapes.safetensors")
    for bad, reason in (("empty.png", "0 bytes"), ("broken.png", "not an image"), ("pipe.png", "FIFO")):
        assert bad in run.stderr and reason in run.stderr  # listed before training, and the run went on
    assert "6 images will train, 3 files skipped" in (out / "preflight.txt").read_text()
    for name in ("loss.png", "samples/step-000002.png", "samples/step-000004.png", "config.yaml",
                 "diffusers/pytorch_lora_weights.safetensors"):
        assert (out / name).is_file(), name

    state = load_file(str(out / "shapes.safetensors"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in state)
    assert any("resnets" in k and k.endswith("lora_down.weight") and state[k].ndim == 4 for k in state)  # LoCon
    assert {float(v) for k, v in state.items() if k.endswith(".alpha")} == {2.0}
    checkpoint = torch.load(out / "finetune.ckpt", weights_only=True)
    trained = checkpoint["modules"]["net"]
    assert trained and all(".lora_A." in k or ".lora_B." in k for k in trained)  # only what trains
    unet_bytes = (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert (out / "finetune.ckpt").stat().st_size < unet_bytes

    loaded = t2i.load(tiny_model_dir, precision="full", lora_dirs=out)
    base, tuned = t2i_image(loaded, "a red circle"), t2i_image(loaded, "a red circle <lora:shapes:1>")
    assert largest(base, tuned) > 2  # the LoRA changes the picture...
    pipe = diffusers_pipe(tiny_model_dir)
    assert largest(base, diffusers_image(pipe, "a red circle")) <= 2
    pipe.load_lora_weights(str(out / "shapes.safetensors"))
    assert largest(tuned, diffusers_image(pipe, "a red circle")) <= 2  # ...and the same way in diffusers
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(out / "diffusers"))  # diffusers' own format
    assert largest(tuned, diffusers_image(pipe, "a red circle")) <= 2


def test_textual_inversion_with_default_caption_loads_in_t2i_and_diffusers(tiny_model_dir, plain_folder, tmp_path):
    import t2i

    out = tmp_path / "out"
    run = cli("finetune", "ti", "--model", tiny_model_dir, "--data", plain_folder, "--outdir", out, "--name", "zork",
              "--caption", "a zork shape", "--init-word", "red", "--vectors", 2, "--lr", 0.1, *STEPS)
    assert run.returncode == 0, run.stderr
    assert (out / "zork.safetensors").is_file()
    with safe_open(str(out / "zork.safetensors"), "pt") as f:
        assert list(f.keys()) == ["emb_params"] and f.get_tensor("emb_params").shape == (2, 32)
    assert list(load_file(str(out / "diffusers" / "learned_embeds.safetensors"))) == ["zork"]
    loaded = t2i.load(tiny_model_dir, precision="full", embedding_dirs=out)
    plain = t2i.load(tiny_model_dir, precision="full", embedding_dirs=tmp_path / "none")
    tuned = t2i_image(loaded, "a zork circle")
    assert largest(tuned, t2i_image(plain, "a zork circle")) > 2
    pipe = diffusers_pipe(tiny_model_dir)
    pipe.load_textual_inversion(str(out / "zork.safetensors"), token="zork")
    assert largest(tuned, diffusers_image(pipe, "a zork circle")) <= 2


def test_hypernetwork_cli_and_prompt_tag(tiny_model_dir, shapes_folder, tmp_path):
    import t2i

    out = tmp_path / "out"
    run = cli("finetune", "hypernetwork", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", out,
              "--name", "hn", "--lr", 0.01, "--sample-every", 0, *STEPS)
    assert run.returncode == 0, run.stderr
    data = torch.load(out / "hn.pt", weights_only=True)  # the web UI's layout: no code, plain containers
    assert [k for k in data if isinstance(k, int)] == [32]  # the attention level is 32 wide, and so is the text
    assert data["layer_structure"] == [1.0, 2.0, 1.0] and data["step"] == 4 and data["name"] == "hn"
    assert list(data[32][0]) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
    loaded = t2i.load(tiny_model_dir, precision="full", lora_dirs=out)
    before = {k: type(v).__name__ for k, v in loaded.model.unet.attn_processors.items()}
    base = t2i_image(loaded, "a red circle")
    assert largest(base, t2i_image(loaded, "a red circle <hypernet:hn:1>")) > 0
    assert largest(base, t2i_image(loaded, "a red circle <hypernet:hn:0>")) == 0
    assert {k: type(v).__name__ for k, v in loaded.model.unet.attn_processors.items()} == before


def test_dreambooth_and_full_write_model_folders(tiny_model_dir, shapes_folder, tmp_path):
    from t2i.checkpoints.registry import load_model
    from t2i.runtime import Runtime

    classes = tmp_path / "classes"
    args = ["--model", tiny_model_dir, "--data", shapes_folder, "--instance-prompt", "a sks shape",
            "--class-prompt", "a shape", "--class-images", 3, "--class-dir", classes, "--sample-every", 0, *STEPS]
    run = cli("finetune", "dreambooth", "--outdir", tmp_path / "db", *args)
    assert run.returncode == 0, run.stderr
    assert "making 3 class images" in run.stderr
    assert sorted(p.name for p in classes.glob("*.png")) == ["class-00000.png", "class-00001.png", "class-00002.png"]
    again = cli("finetune", "dreambooth", "--outdir", tmp_path / "db2", *args)
    assert again.returncode == 0 and "making" not in again.stderr  # the class images are reused

    run = cli("finetune", "full", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", tmp_path / "full",
              "--lr", 1e-3, "--ema-decay", 0.9, "--sample-every", 0, "--class-dir", classes, *STEPS)  # as they are
    assert run.returncode == 0, run.stderr
    base = load_model(tiny_model_dir, Runtime.auto("full", "cpu")).model
    for folder in (tmp_path / "db" / "model", tmp_path / "full" / "model"):
        tuned = load_model(folder, Runtime.auto("full", "cpu")).model
        changed = [k for k, v in tuned.unet.state_dict().items() if not torch.equal(v, base.unet.state_dict()[k])]
        assert changed, folder
        assert all(torch.equal(v, base.vae.state_dict()[k]) for k, v in tuned.vae.state_dict().items())
    config = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert config["ema_decay"] == 0.9 and config["method"] == "full"


def test_dreambooth_with_captions_trains_what_full_trains(tiny_model_dir, shapes_folder, tmp_path):
    """DreamBooth without an instance prompt is full fine-tuning with prior preservation, and on a
    small model both take the same defaults (EMA included: none is given here): BENCHMARKS reports
    DreamBooth's run by this identity."""
    from t2i.training.finetune import config_with
    from t2i.training.finetune.loop import finetune

    classes = tmp_path / "classes"
    classes.mkdir()
    for p in sorted(shapes_folder.glob("p[0-2].*")):
        (classes / p.name).write_bytes(p.read_bytes())
    weights = {}
    for method in ("dreambooth", "full"):
        cfg = config_with({"method": method, "model": str(tiny_model_dir), "data": str(shapes_folder),
                           "outdir": str(tmp_path / method), "steps": 3, "batch_size": 2, "lr": 1e-3,
                           "sample_every": 0, "log_every": 0, "train_text_encoder": True,
                           "class_dir": str(classes)}, {})
        folder = finetune(cfg)
        weights[method] = {part: load_file(str(next((folder / part).glob("*.safetensors"))))
                           for part in ("unet", "text_encoder")}
    for part, full in weights["full"].items():
        dreambooth = weights["dreambooth"][part]
        assert full.keys() == dreambooth.keys() and all(torch.equal(full[k], dreambooth[k]) for k in full), part


def test_config_file_flags_override_and_user_errors(tiny_model_dir, shapes_folder, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "ti", "model": str(tiny_model_dir), "data": str(shapes_folder),
                                      "name": "circle", "ti": {"vectors": 1, "init_word": "blue"}, "steps": 50}))
    out = tmp_path / "out"
    run = cli("finetune", config, "--outdir", out, "--vectors", 3, *STEPS)
    assert run.returncode == 0, run.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["ti"] == {"vectors": 3, "init_word": "blue"} and saved["steps"] == 4
    again = cli("finetune", config, "--outdir", out, *STEPS)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    wrong = cli("finetune", "ti", "--data", shapes_folder, "--outdir", tmp_path / "x", "--rank", 4)
    assert wrong.returncode == 2 and "--rank is a lora option" in wrong.stderr
    prior = cli("finetune", "ti", "--data", shapes_folder, "--outdir", tmp_path / "x", "--class-prompt", "a circle")
    assert prior.returncode == 2 and "does not apply to ti" in prior.stderr
    typo = cli("finetune", "lorra", "--data", shapes_folder, "--outdir", tmp_path / "y")
    assert typo.returncode == 2 and "neither a method" in typo.stderr
    bad = cli("finetune", "lora", "--data", shapes_folder, "--outdir", tmp_path / "z", "--lr", "fast")
    assert bad.returncode == 2 and "lr" in bad.stderr and "Traceback" not in bad.stderr


def test_user_errors_stop_before_anything_is_written(tiny_model_dir, shapes_folder, tmp_path):
    slash = cli("finetune", "lora", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", tmp_path / "a",
                "--name", "sub/n", *STEPS)  # once trained all its steps, then failed to write
    assert slash.returncode == 2 and "is a path" in slash.stderr and "Traceback" not in slash.stderr
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("mine")
    into_file = cli("finetune", "lora", "--data", shapes_folder, "--outdir", tmp_path / "file")
    assert into_file.returncode == 2 and "is a file, not a folder" in into_file.stderr
    assert (tmp_path / "file").read_text() == "mine"
    # once: trained on the CPU, wrote untrained weights, ignored the flag
    for flags, says in ((["--device", "cuda:99"], "--device cuda:99"), (["--device", "gpu0"], "not a torch device"),
                        (["--steps", 0], "greater than or equal to 1"), (["--flip-keeps-captions"], "add --flip")):
        wrong = cli("finetune", "lora", "--data", shapes_folder, "--outdir", tmp_path / "b", *flags)
        assert wrong.returncode == 2 and says in wrong.stderr and "Traceback" not in wrong.stderr, wrong.stderr
    assert not (tmp_path / "b").exists()

    out = tmp_path / "out"
    first = cli("finetune", "lora", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", out, "--rank", 2,
                "--sample-every", 0, *STEPS)
    assert first.returncode == 0, first.stderr
    config = (out / "config.yaml").read_text()
    other = cli("finetune", "hypernetwork", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", out,
                "--resume", "--sample-every", 0, *STEPS)
    assert other.returncode == 2 and "does not fit" in other.stderr and "Traceback" not in other.stderr
    assert (out / "config.yaml").read_text() == config  # the run's own config, to resume it with


def trained_lora(path):
    return load_file(str(path))


def test_resume_is_exact_and_accumulation_matches_a_larger_batch(tiny_model_dir, shapes_folder, tmp_path):
    from t2i.training.finetune import config_with
    from t2i.training.finetune.loop import finetune

    def config(outdir, **options):
        base = {"method": "lora", "model": str(tiny_model_dir), "data": str(shapes_folder), "outdir": str(outdir),
                "name": "n", "steps": 6, "batch_size": 4, "lr": 0.02, "rank": 2, "sample_every": 0, "log_every": 0}
        return config_with(base, options)

    whole = trained_lora(finetune(config(tmp_path / "whole")))
    assert finetune(config(tmp_path / "parts"), stop_after=3) is None  # a crash after 3 steps
    resumed = trained_lora(finetune(config(tmp_path / "parts"), resume=True))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    accumulated = trained_lora(finetune(config(tmp_path / "accum", batch_size=2, grad_accum=2)))
    assert max((whole[k] - accumulated[k]).abs().max().item() for k in whole) < 1e-4
    other_seed = trained_lora(finetune(config(tmp_path / "seed", seed=1)))
    assert max((whole[k] - other_seed[k]).abs().max().item() for k in whole) > 1e-3


def test_sdxl_lora_and_two_encoder_embedding(tmp_path):
    import t2i
    from test_sdxl_checkpoint import tiny_sdxl_pipeline

    tiny_sdxl_pipeline().save_pretrained(tmp_path / "xl")
    folder = tmp_path / "pictures"
    folder.mkdir()
    dataset = ShapesDataset(4, seed=5, resolution=32)
    for i in range(4):
        dataset[i]["image"].save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text("zork " + dataset[i]["caption"])
    common = dict(model=tmp_path / "xl", data=folder, steps=2, batch_size=2, sample_every=0)
    lora = t2i.finetune("lora", outdir=tmp_path / "lora", name="xl-lora", rank=2, lr=0.05, train_text_encoder=True,
                        **common)
    state = load_file(str(lora))
    assert any(k.startswith("lora_te1_") for k in state) and any(k.startswith("lora_te2_") for k in state)
    embedding = t2i.finetune("ti", outdir=tmp_path / "ti", name="zork", vectors=2, **common)
    vectors = load_file(str(embedding))
    assert vectors["clip_l"].shape == (2, 32) and vectors["clip_g"].shape == (2, 48)
    loaded = t2i.load(tmp_path / "xl", precision="full", lora_dirs=tmp_path / "lora", embedding_dirs=tmp_path / "ti")
    base = np.asarray(t2i.generate("a zork circle", model=loaded, seed=1, steps=2)[0]).astype(int)
    tuned = np.asarray(t2i.generate("a zork circle <lora:xl-lora:1>", model=loaded, seed=1, steps=2)[0]).astype(int)
    assert largest(base, tuned) > 0


def test_training_options_run_on_a_v_prediction_model(shapes_folder, tmp_path):
    """bf16 autocast, gradient checkpointing, noise offset, flips, square crops, a cosine schedule
    with warm-up and min-SNR on a v-prediction model: the run finishes and learns something. In its
    own process: accelerate keeps one mixed-precision setting per process."""
    from dataclasses import replace

    from conftest import tiny_ldm_config
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    config = tiny_ldm_config()
    config = replace(config, schedule=replace(config.schedule, prediction_type="v_prediction"))
    torch.manual_seed(0)
    save_ldm_folder(LatentDiffusion(config), tmp_path / "v")
    out = tmp_path / "out"
    run = cli("finetune", "lora", "--model", tmp_path / "v", "--data", shapes_folder, "--outdir", out, "--name", "out",
              "--steps", 4, "--batch-size", 2, "--mixed-precision", "bf16", "--gradient-checkpointing",
              "--noise-offset", 0.1, "--flip", "--no-buckets", "--lr-schedule", "cosine", "--warmup-steps", 2, "--min-snr-gamma", 5,
              "--rank", 2, "--lr", 0.01, "--sample-every", 0, "--threads", 1)
    assert run.returncode == 0, run.stderr
    losses = torch.load(out / "finetune.ckpt", weights_only=True)["losses"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert any(v.abs().max() > 0 for k, v in load_file(str(out / "out.safetensors")).items()
               if k.endswith("lora_up.weight"))
    cached = torch.load(next((out / "cache").glob("latents-*.pt")), weights_only=True)
    assert "mean_flip" in cached and cached["mean"][0].shape == (4, 16, 16)  # square 32 px, VAE factor 2


def test_lora_from_an_embedding_trains_on_its_vectors(tiny_model_dir, plain_folder, tmp_path):
    """Pivotal tuning: --init-embedding's vectors stand for NAME in the training captions (the cached
    text states equal the prompt encoder's with the embedding), frozen; the LoRA file names it."""
    from safetensors.torch import save_file

    from t2i.checkpoints.registry import load_model
    from t2i.data.cache import load_cache
    from t2i.diffusion.conditioning import PromptEncoder
    from t2i.extra_networks.embeddings import load_embedding
    from t2i.runtime import Runtime
    from t2i.training.finetune import config_with
    from t2i.training.finetune.loop import finetune

    torch.manual_seed(5)
    embedding = tmp_path / "zork.safetensors"
    save_file({"emb_params": torch.randn(2, 32)}, str(embedding))
    out = tmp_path / "out"
    args = ("finetune", "lora", "--model", tiny_model_dir, "--data", plain_folder, "--name", "zork",
            "--caption", "a zork shape", "--rank", 2, "--lr", 0.05)
    run = cli(*args, "--outdir", out, "--init-embedding", embedding, *STEPS)
    assert run.returncode == 0, run.stderr
    with safe_open(str(out / "zork.safetensors"), "pt") as f:
        assert f.metadata()["t2i_init_embedding"] == "zork.safetensors"
    model = load_model(tiny_model_dir, Runtime.auto("full", "cpu")).model
    cached = load_cache(out / "cache" / "text.pt", check=lambda v: True)["context"]
    with torch.no_grad():
        wanted = PromptEncoder.from_model(model, embeddings=[load_embedding(embedding)]).encode("a zork shape")
        plain = PromptEncoder.from_model(model).encode("a zork shape")
    assert torch.allclose(cached[0], wanted[0], atol=1e-5) and not torch.allclose(cached[0], plain[0], atol=1e-3)
    trained = torch.load(out / "finetune.ckpt", weights_only=True)["modules"]["net"]
    assert trained and all(".lora_A." in k or ".lora_B." in k for k in trained)  # the vectors stay frozen

    def lora(outdir, **options):
        base = {"method": "lora", "model": str(tiny_model_dir), "data": str(plain_folder), "outdir": str(outdir),
                "name": "zork", "caption": "a zork shape", "steps": 3, "batch_size": 2, "lr": 0.05, "rank": 2,
                "sample_every": 0, "log_every": 0}
        return load_file(str(finetune(config_with(base, options))))

    with_vectors, without = lora(tmp_path / "a", init_embedding=str(embedding)), lora(tmp_path / "b")
    assert max((with_vectors[k] - without[k]).abs().max().item() for k in without) > 1e-4

    missing = cli(*args, "--outdir", tmp_path / "m", "--init-embedding", tmp_path / "nope.safetensors", *STEPS)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    with pytest.raises(ValueError, match="no caption mentions"):
        lora(tmp_path / "c", init_embedding=str(embedding), caption="a plain shape")
    save_file({"emb_params": torch.randn(2, 48)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ValueError, match="made for another model"):
        lora(tmp_path / "d", init_embedding=str(tmp_path / "wide.safetensors"))


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tiny_model_dir, shapes_folder, tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    args = ["finetune", "lora", "--model", tiny_model_dir, "--data", shapes_folder, "--outdir", out, "--rank", 2,
            "--steps", 100000, "--checkpoint-every", 2, "--sample-every", 0, "--batch-size", 2, "--threads", 1]
    proc = subprocess.Popen([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as at a terminal
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "finetune.ckpt").is_file() and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "finetune.ckpt").is_file(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "run the same command with --resume" in err
    assert torch.load(out / "finetune.ckpt", weights_only=True)["modules"]["net"]  # whole, loadable
