"""The loader fuzz corpus: t2i's weight-file entry points, a small valid seed file for each, and a
runner that feeds them mutated safetensors files (fuzz_mutations), malicious pickles
(fuzz_pickles) and damaged training checkpoints, recording for every case whether it loaded,
failed with a t2i error, or escaped as another exception (a traceback for the user); and whether
any payload ran (its marker file appeared).

Used by tests/test_fuzz_loaders.py (CI size, in a subprocess under an address-space limit) and
benchmarks/fuzz_loaders.py (10^4 cases). Run directly, it prints a JSON summary:

    python tests/fuzz_corpus.py --safetensors 2000 --seed 0 --limit-gb 4
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_mutations import mutations  # noqa: E402
from fuzz_pickles import malicious_pickles  # noqa: E402

from t2i.errors import T2IError  # noqa: E402


@dataclass
class Target:
    """One entry point: `load(path)` reads a file of `suffix` the way t2i's front doors do."""

    name: str
    suffix: str
    seed: bytes  # a valid file for this loader
    load: Callable[[Path], object]
    share: float = 1.0  # its share of the mutated cases (the slow loaders, that build whole models, get less)
    at: Path | None = None  # where the file must lie (inside a model folder); default: a scratch file


def _st(tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- entry points


def _tiny_sd(root: Path):
    """A tiny SD 1.x pipeline: its diffusers folder (the configs) and its original-layout file."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2i.checkpoints.convert import save_single_file
    from t2i.models.text import load_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)
    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=4, sample_size=16)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=16))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_tokenizer(max_length=77), unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(root / "sd-configs")
    save_single_file(pipe, root / "sd.safetensors")
    return root / "sd-configs", (root / "sd.safetensors").read_bytes(), vae


def _t2i_folder(root: Path) -> Path:
    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.models.ldm import LatentDiffusion

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import tiny_ldm_config

    torch.manual_seed(0)
    save_ldm_folder(LatentDiffusion(tiny_ldm_config(16)), root / "t2i-model")
    return root / "t2i-model"


def _family_file() -> bytes:
    from t2i.checkpoints.family_file import FAMILY_KEY, CONFIG_KEY, VERSION_KEY
    from t2i.models.vae import ConvVAE, ConvVAEConfig

    torch.manual_seed(0)
    config = ConvVAEConfig(resolution=16, channels=(8, 8), latent_dim=4, norm_groups=4)
    model = ConvVAE(config)
    return _st(model.state_dict(), {FAMILY_KEY: "vae", CONFIG_KEY: json.dumps(asdict(config)), VERSION_KEY: "0.1.0"})


def _lora() -> bytes:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    base = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return _st({f"{base}.lora_down.weight": r(2, 8), f"{base}.lora_up.weight": r(8, 2), f"{base}.alpha": torch.tensor(2.0),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_a": r(16, 2),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w1_b": r(2, 16),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w2_a": r(16, 2),
                "lora_te_text_model_encoder_layers_0_mlp_fc1.hada_w2_b": r(2, 16),
                "lora_unet_mid_block_resnets_0_conv1.lokr_w1": r(2, 2),
                "lora_unet_mid_block_resnets_0_conv1.lokr_w2": r(4, 4, 3, 3).half(),
                "unet.down_blocks.0.attentions.0.proj_out.lora_A.weight": r(2, 8),
                "unet.down_blocks.0.attentions.0.proj_out.lora_B.weight": r(8, 2)},
               {"ss_network_dim": "2", "lora_adapter_metadata": json.dumps(
                   {"unet.lora_alpha": 2, "unet.alpha_pattern": {"attentions.0.proj_out": 1.5}})})


def _tiny_decoder() -> bytes:
    from t2i.checkpoints.tiny_vae import build_tiny_decoder

    torch.manual_seed(0)
    decoder = build_tiny_decoder(4, num_blocks=(1, 1), block_out_channels=(8, 8))
    return _st({k: v for k, v in decoder.state_dict().items()})


def _feature_net(root: Path) -> Path:
    from t2i.evaluate.features import FeatureNet, FeatureNetConfig, save_feature_net

    torch.manual_seed(0)
    return save_feature_net(FeatureNet(FeatureNetConfig(widths=(8, 8), feature_dim=8, groups=4)), root / "features")


def safetensors_targets(root: Path) -> list[Target]:
    """The entry points that read safetensors files, each with a valid seed."""
    from t2i.checkpoints.registry import load_model
    from t2i.checkpoints.safe_load import load_state_dict_file
    from t2i.checkpoints.single_file import load_single_file
    from t2i.checkpoints.tiny_vae import load_tiny_decoder
    from t2i.evaluate.features import load_feature_net
    from t2i.extra_networks.embeddings import load_embedding
    from t2i.extra_networks.lora import read_lora
    from t2i.extra_networks.vae import vae_state_dict
    from t2i.pipelines.families import load_family_model
    from t2i.runtime import Runtime

    root.mkdir(parents=True, exist_ok=True)
    sd_configs, sd_file, sd_vae = _tiny_sd(root)
    model_dir, features_dir = _t2i_folder(root), _feature_net(root)
    unet_file = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    feature_file = features_dir / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    mixed = {"f32": torch.randn(4, 4, generator=g), "f16": torch.randn(6, generator=g).half(),
             "bf16": torch.randn(2, 3, generator=g).bfloat16(), "i64": torch.arange(5), "u8": torch.arange(7).byte(),
             "bool": torch.tensor([True, False]), "scalar": torch.tensor(1.5)}
    for name, tensor in (("e8m0", torch.ones(4, dtype=torch.float8_e8m0fnu)), ("c64", torch.randn(3, dtype=torch.complex64))):
        try:  # dtypes of newer safetensors versions (0.6+), in the seed where the installed one has them
            _st({name: tensor})
            mixed[name] = tensor
        except Exception:  # noqa: BLE001 - an older safetensors: its KeyError or SafetensorError
            pass
    cpu = Runtime.auto("full", "cpu")
    return [
        Target("core", ".safetensors", _st(mixed, {"format": "pt"}), load_state_dict_file, 4.0),
        Target("sd-single-file", ".safetensors", sd_file, lambda p: load_single_file(p, config_dir=sd_configs), 0.5),
        Target("t2i-model-folder", ".safetensors", unet_file.read_bytes(), lambda p: load_model(model_dir, cpu), 0.25,
               at=unet_file),
        Target("family-file", ".safetensors", _family_file(), load_family_model),
        Target("vae", ".safetensors", _st(sd_vae.state_dict()), lambda p: vae_state_dict(sd_vae, p)),
        Target("lora", ".safetensors", _lora(), read_lora),
        Target("embedding", ".safetensors", _st({"clip_l": torch.randn(2, 16), "clip_g": torch.randn(2, 32)}),
               load_embedding),
        Target("tiny-decoder", ".safetensors", _tiny_decoder(),
               lambda p: load_tiny_decoder(p, latent_channels=4, scale_factor=2)),
        Target("feature-net", ".safetensors", feature_file.read_bytes(), lambda p: load_feature_net(features_dir),
               at=feature_file),
    ]


# ----------------------------------------------------------------------------- pickles and resume


def _trainer(root: Path):
    """A tiny Trainer (Linear + EMA) and its checkpoint after one step (Adam state included)."""
    from t2i.training.trainer import OptimConfig, Trainer

    (root / "run").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    trainer = Trainer("vae", {"vae": module}, OptimConfig(steps=2, ema_decay=0.9), root / "run", 0, {"family": "x"})
    module(torch.randn(2, 4)).sum().backward()
    trainer.optimizer.step()
    trainer.step, trainer.losses = 1, [0.5]
    return trainer, _torch_bytes(trainer.state_dict())


def _family_run(root: Path) -> tuple[Path, bytes]:
    """A VAE run folder whose only model is its training checkpoint `vae.ckpt`."""
    from t2i.models.vae import ConvVAE, ConvVAEConfig

    torch.manual_seed(0)
    config = ConvVAEConfig(resolution=16, channels=(8, 8), latent_dim=4, norm_groups=4)
    model = ConvVAE(config)
    state = {"kind": "t2i-train-vae", "config": {"family": "vae", "model": asdict(config)}, "step": 3, "losses": [0.1],
             "modules": {"vae": model.state_dict()}, "ema": {"decay": 0.9, "shadow": [p.detach() for p in model.parameters()]}}
    folder = root / "vae-run"
    folder.mkdir(parents=True, exist_ok=True)
    return folder, _torch_bytes(state)


def _ldm_run(root: Path):
    """(LDMTrainConfig, run folder with vae.ckpt, unet.ckpt and latents.pt) for export_from_checkpoints."""
    from conftest import tiny_ldm_config
    from t2i.models.ldm import LatentDiffusion
    from t2i.training.ldm import LDMTrainConfig

    cfg = LDMTrainConfig(model=tiny_ldm_config(16))
    torch.manual_seed(0)
    model = LatentDiffusion(cfg.model)
    folder = root / "ldm-run"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vae.ckpt").write_bytes(_torch_bytes({"modules": {"vae": model.vae.state_dict()}, "step": 1}))
    unet = {"modules": {"unet": model.unet.state_dict(), "text_encoder": model.text_encoder.state_dict()}, "ema": None}
    (folder / "unet.ckpt").write_bytes(_torch_bytes(unet))
    (folder / "latents.pt").write_bytes(_torch_bytes(torch.randn(4, 4, 2, 2)))
    return cfg, folder


def pickle_targets(root: Path, st_targets: list[Target]) -> list[Target]:
    """The entry points that accept pickles (`.ckpt`, `.pt`, ...): the file loaders of
    `st_targets` that take them, and training resume and checkpoint readers."""
    from t2i.pipelines.families import load_family_model
    from t2i.training.ldm import export_from_checkpoints

    trainer, trainer_seed = _trainer(root)
    run, run_seed = _family_run(root)
    ldm_cfg, ldm_run = _ldm_run(root)
    by_name = {t.name: t for t in st_targets}
    targets = [Target(f"{name}{suffix}", suffix, b"", by_name[name].load)
               for name, suffix in (("core", ".ckpt"), ("core", ".safetensors"),
                                    ("sd-single-file", ".ckpt"), ("vae", ".pt"), ("lora", ".pt"),
                                    ("embedding", ".pt"), ("tiny-decoder", ".pth"))]
    return targets + [
        Target("trainer-resume", ".ckpt", trainer_seed, lambda p: trainer.load(), at=trainer.checkpoint_path),
        Target("family-run-checkpoint", ".ckpt", run_seed, lambda p: load_family_model(run), at=run / "vae.ckpt"),
        Target("ldm-export-vae-ckpt", ".ckpt", (ldm_run / "vae.ckpt").read_bytes(),
               lambda p: export_from_checkpoints(ldm_cfg, ldm_run, root / "ldm-export"), 0.3, at=ldm_run / "vae.ckpt"),
        Target("ldm-export-latents", ".pt", (ldm_run / "latents.pt").read_bytes(),
               lambda p: export_from_checkpoints(ldm_cfg, ldm_run, root / "ldm-export"), at=ldm_run / "latents.pt"),
    ]


def checkpoint_mutations(seed: bytes, count: int, rng_seed: int):
    """Damaged training checkpoints: the zip's bytes flipped or cut, and well-formed pickles whose
    content is wrong (keys missing, wrong types, shapes that do not fit, steps that make no sense)."""
    import random

    rng = random.Random(rng_seed)
    state = torch.load(io.BytesIO(seed), weights_only=True)

    def edited(change) -> bytes:
        copy = torch.load(io.BytesIO(seed), weights_only=True)
        change(copy)
        return _torch_bytes(copy)

    def first_tensor(d):
        return next(k for k, v in d.items() if isinstance(v, torch.Tensor))

    edits = {
        "drop-key": lambda s: s.pop(rng.choice(list(s))),
        "step-type": lambda s: s.__setitem__("step", rng.choice(["3", -1, 1.5, None, torch.tensor(3), 2**70])),
        "losses-type": lambda s: s.__setitem__("losses", rng.choice([["x"], [None], "abc", 5, [torch.ones(2)]])),
        "module-shape": lambda s: [m.__setitem__(first_tensor(m), torch.zeros(7, 7)) for m in s["modules"].values()],
        "module-dtype": lambda s: [m.__setitem__(first_tensor(m), m[first_tensor(m)].to(torch.int16))
                                   for m in s["modules"].values()],
        "modules-type": lambda s: s.__setitem__("modules", rng.choice([[], "vae", {"vae": "x"}, {}, {"other": {}}])),
        "optimizer-moments": lambda s: [st.__setitem__("exp_avg", torch.zeros(3)) for st in s["optimizer"]["state"].values()]
        if "optimizer" in s and s["optimizer"].get("state") else None,
        "optimizer-type": lambda s: s.__setitem__("optimizer", rng.choice([{}, [], {"state": {}, "param_groups": []}])),
        "ema-length": lambda s: s.__setitem__("ema", {"decay": 0.9, "shadow": rng.choice([[], [torch.ones(1)] * 9])}),
        "ema-type": lambda s: s.__setitem__("ema", rng.choice([{"shadow": 5}, {"decay": "x", "shadow": []}, [1], "e"])),
        "config-type": lambda s: s.__setitem__("config", rng.choice([None, [], {"family": 3}, {"model": "x"}])),
        "whole-object": None,
    }
    names = list(edits) + ["bit-flip"] * 4 + ["truncate"] * 2
    for _ in range(count):
        kind = rng.choice(names)
        if kind == "bit-flip":
            data = bytearray(seed)
            for _ in range(rng.choice([1, 4, 16])):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
            yield kind, bytes(data)
        elif kind == "truncate":
            yield kind, seed[:rng.randrange(len(seed))]
        elif kind == "whole-object":
            yield kind, _torch_bytes(rng.choice([[state], "text", torch.ones(3), None, 5, {"modules": None}]))
        else:
            yield kind, edited(edits[kind])


# ----------------------------------------------------------------------------- the runner


@dataclass
class Tally:
    cases: int = 0
    accepted: int = 0  # loaded: a valid file, or damage the loader could not (and need not) notice
    clean: int = 0  # a t2i error (ModelLoadError, ...) with a message
    tracebacks: list = field(default_factory=list)  # anything else: (target, kind, error)
    executions: list = field(default_factory=list)  # a payload ran: (target, kind)
    max_seconds: float = 0.0  # wall clock: inflated when other work shares the machine
    slowest: str = ""
    max_cpu_seconds: float = 0.0  # this process's CPU time: what a case costs, whatever else runs
    slowest_cpu: str = ""
    by_target: dict = field(default_factory=dict)


def run_case(tally: Tally, target: Target, kind: str, data: bytes, scratch: Path, marker: Path) -> None:
    path = target.at or scratch / f"case{target.suffix}"
    path.write_bytes(data)
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        target.load(path)
        outcome = "accepted"
    except T2IError:
        outcome = "clean"
    except BaseException as err:  # noqa: BLE001 - what a user would see as a traceback
        if isinstance(err, KeyboardInterrupt):
            raise
        outcome = "traceback"
        where = traceback.extract_tb(err.__traceback__)[-1]
        tally.tracebacks.append((target.name, kind, f"{type(err).__name__}: {str(err)[:200]} "
                                                    f"({Path(where.filename).name}:{where.lineno})"))
    seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    tally.cases += 1
    if outcome != "traceback":
        setattr(tally, outcome, getattr(tally, outcome) + 1)
    counts = tally.by_target.setdefault(target.name, {"cases": 0, "accepted": 0, "clean": 0, "traceback": 0,
                                                      "seconds": 0.0, "cpu_seconds": 0.0})
    counts["cases"] += 1
    counts[outcome] += 1
    counts["seconds"] = round(counts["seconds"] + seconds, 3)
    counts["cpu_seconds"] = round(counts["cpu_seconds"] + cpu, 3)
    if seconds > tally.max_seconds:
        tally.max_seconds, tally.slowest = seconds, f"{target.name}/{kind}"
    if cpu > tally.max_cpu_seconds:
        tally.max_cpu_seconds, tally.slowest_cpu = cpu, f"{target.name}/{kind}"
    if marker.exists():
        tally.executions.append((target.name, kind))
        marker.unlink()


def run_corpus(root: Path, n_safetensors: int, n_checkpoints: int, seed: int = 0) -> dict:
    """Every case through its loader; the summary as a dictionary (see Tally)."""
    root.mkdir(parents=True, exist_ok=True)
    scratch, marker = root / "scratch", root / "pwned-marker"
    scratch.mkdir(exist_ok=True)
    setup = time.perf_counter()
    st_targets = safetensors_targets(root / "seeds")
    pk_targets = pickle_targets(root / "seeds", st_targets)
    setup = time.perf_counter() - setup
    for target in st_targets + pk_targets:  # the seeds themselves must load, or the fuzzing proves nothing
        if target.seed:
            (target.at or scratch / f"seed{target.suffix}").write_bytes(target.seed)
            target.load(target.at or scratch / f"seed{target.suffix}")
    tally, start = Tally(), time.perf_counter()
    total_share = sum(t.share for t in st_targets)
    for i, target in enumerate(st_targets):
        count = round(n_safetensors * target.share / total_share)
        for kind, data in mutations(target.seed, count, seed * 1000 + i):
            run_case(tally, target, kind, data, scratch, marker)
        if target.at is not None:
            target.at.write_bytes(target.seed)  # leave the folder valid for the next target
    st_cases = tally.cases
    corpus = malicious_pickles(marker)
    for target in pk_targets:
        for kind, data in corpus.items():
            run_case(tally, target, kind, data, scratch, marker)
        if target.at is not None:
            target.at.write_bytes(target.seed)
    pickle_cases = tally.cases - st_cases
    resume = [t for t in pk_targets if t.seed and t.suffix == ".ckpt"]
    resume_share = sum(t.share for t in resume)
    for i, target in enumerate(resume):
        count = round(n_checkpoints * target.share / resume_share)
        for kind, data in checkpoint_mutations(target.seed, count, seed * 1000 + 500 + i):
            run_case(tally, target, kind, data, scratch, marker)
        target.at.write_bytes(target.seed)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cases": tally.cases, "safetensors_cases": st_cases, "pickle_cases": pickle_cases,
            "pickle_kinds": len(corpus), "checkpoint_cases": tally.cases - st_cases - pickle_cases,
            "accepted": tally.accepted, "clean_errors": tally.clean, "tracebacks": tally.tracebacks,
            "executions": tally.executions, "max_seconds": round(tally.max_seconds, 3), "slowest": tally.slowest,
            "max_cpu_seconds": round(tally.max_cpu_seconds, 3), "slowest_cpu": tally.slowest_cpu,
            "seconds": round(time.perf_counter() - start, 1), "setup_seconds": round(setup, 1),
            "max_rss_mb": usage.ru_maxrss // 1024, "by_target": tally.by_target}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--safetensors", type=int, default=2000, help="mutated safetensors cases, over all targets")
    parser.add_argument("--checkpoints", type=int, default=150, help="damaged training checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-gb", type=float, default=0, help="address-space limit (RLIMIT_AS) for the run")
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.limit_gb:
        limit = int(args.limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    summary = run_corpus(args.workdir, args.safetensors, args.checkpoints, args.seed)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
