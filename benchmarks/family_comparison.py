"""The model families on `shapes` 64x64 under one equal CPU training budget (issue 3).

Every family trains on the same data (10,000 single-object `shapes` scenes, configs/compare/*.yaml)
for the same number of CPU-minutes (`t2i train --budget-minutes`, process CPU time at 1 torch
thread, see t2i.training.budget), then samples `--n` images and is scored on:
- accuracy by the shapes checker (t2i.evaluate.shapes_checker) on colour and shape: of the
  requested class for the class-conditional GAN, DDPM, VQGAN+AR and class LDM (image i asks for
  class i mod 24), of the prompt's object for the text-conditional LDM (single-object captions);
  the unconditional VAE and LDM have none;
- FID against held-out real single-object images (`shapes` seed 999) with t2i.evaluate.fid
  (features of t2i's own `shapes` network, not Inception: comparable only within this table);
- sampling speed: images per CPU-second at 1 thread, after a warm-up batch (on an idle core
  this is images/s; CPU time keeps it fair when runs share the machine);
- parameters of what samples (GAN: the generator; AR: transformer + VQGAN; LDM: UNet + VAE +
  text encoder, or + the learned class tokens), training steps reached and CPU-minutes used.
VQGAN+AR are two runs: the VQGAN gets `--vqgan-share` of the budget, the transformer the rest
(its code encoding counts). The LDM splits its budget by `vae_budget_share` in its config.
`ldm-class` and `ldm-uncond` (issue 17: `model.conditioning: class | none`) are not in the default
set: they use the bundled model's VAE frozen (`vae_from: default`), so their whole budget goes to
latent caching and the UNet, and they are compared with `ldm` only with that difference stated.

    python benchmarks/family_comparison.py [--budget-minutes 10] [--jobs 2] [--n 500] [--outdir DIR]
    python benchmarks/family_comparison.py --tiny      # seconds-long configs: checks the script only
    python benchmarks/family_comparison.py --families ldm-class ldm-uncond --jobs 1 --n 300
    python benchmarks/family_comparison.py ... --reuse-runs   # score runs already trained into --outdir
    python benchmarks/family_comparison.py --device cuda --budget-clock wall --jobs 1   # on a GPU

On a GPU (`--device cuda`: training goes to the GPU by itself, sampling is moved there) the budget
should count wall minutes of a run that has the device to itself (`--budget-clock wall --jobs 1`);
speed is then images per wall second.

Each family runs in its own processes (training, then evaluation), up to `--jobs` at a time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FAMILIES = ("gan", "vae", "ddpm", "vqgan+ar", "ldm")
# ldm-class-ft: the class model started from the bundled text model's UNet (init_from: default)
FAMILIES = DEFAULT_FAMILIES + ("ldm-class", "ldm-uncond", "ldm-class-ft")
CONDITIONING = {"gan": "class", "vae": "none", "ddpm": "class", "vqgan+ar": "class", "ldm": "text",
                "ldm-class": "class", "ldm-uncond": "none", "ldm-class-ft": "class"}
REAL_SEED, IMAGE_SEED, PROMPT_SEED = 999, 1000, 4242
# sampling settings per family (full, tiny); the table prints them. Pixel DDPM: 25 DDIM steps, since
# at 50 its 500 samples alone would take ~50 CPU-minutes
DDPM_SAMPLING = {"full": dict(sampler="DDIM", steps=25, guidance_scale=2.0), "tiny": dict(sampler="DDIM", steps=5,
                                                                                            guidance_scale=2.0)}
LDM_SAMPLING = {"full": dict(sampler="DPM++ 2M", steps=20, cfg_scale=5.0), "tiny": dict(sampler="DPM++ 2M", steps=5,
                                                                                        cfg_scale=5.0)}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}); see {log}")


def _train(config: Path, outdir: Path, minutes: float, log: Path, clock: str, reuse: bool = False) -> dict:
    # reuse: a run this command trained before (its budget.json is written when training ends)
    if not (reuse and (outdir / "budget.json").is_file()):
        _run([sys.executable, "-m", "t2i.interfaces.cli", "train", str(config), "--outdir", str(outdir),
              "--budget-minutes", f"{minutes:.6g}", "--budget-clock", clock, "--threads", "1"], log)
    return json.loads((outdir / "budget.json").read_text())


def train_family(family: str, configs: Path, prefix: str, workdir: Path, minutes: float, vqgan_share: float,
                 clock: str = "cpu", reuse: bool = False) -> dict:
    """Train one family (both runs for vqgan+ar); returns {"run": folder to sample, "budgets": [...]}."""
    log = workdir / f"{family}.log"
    if family != "vqgan+ar":
        budget = _train(configs / f"{prefix}{family}.yaml", workdir / family, minutes, log, clock, reuse)
        return {"run": str(workdir / family), "budgets": [budget]}
    import yaml

    first = _train(configs / f"{prefix}vqgan.yaml", workdir / "vqgan", minutes * vqgan_share, log, clock, reuse)
    ar_config = yaml.safe_load((configs / f"{prefix}ar.yaml").read_text())
    ar_config["first_stage"] = str(workdir / "vqgan" / "vqgan.safetensors")
    path = workdir / "ar.yaml"
    path.write_text(yaml.safe_dump(ar_config, sort_keys=False))
    second = _train(path, workdir / "ar", minutes * (1 - vqgan_share), log, clock, reuse)
    return {"run": str(workdir / "ar"), "budgets": [first, second]}


# ------------------------------------------------------------------ evaluation (its own process)

def _class_prompts(class_names, n: int) -> list[str]:
    return [f"a {class_names[i % len(class_names)]}" for i in range(n)]


def _sample(family: str, run: Path, n: int, mode: str, device: str):
    """(draw(k) -> the first k images as PIL, checker prompts or None, parameter count, sampler text)."""
    if family == "ldm":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from prompt_accuracy import generate_many

        import t2i
        from t2i.data.labels import shapes_class
        from t2i.data.shapes import ShapesDataset

        loaded = t2i.load(run / "model", precision="full", device=device)
        model = loaded.model
        dataset = ShapesDataset(length=n, seed=PROMPT_SEED, p_two=0.0, p_short=0.3)
        captions = [dataset.scene(i).caption for i in range(n)]
        s = LDM_SAMPLING[mode]

        def draw(k):
            return generate_many(loaded, captions[:k], [IMAGE_SEED + i for i in range(k)], s["sampler"], s["steps"],
                                 s["cfg_scale"], batch_size=25)
        params = sum(p.numel() for m in (model.unet, model.vae, model.text_encoder) for p in m.parameters())
        return draw, [f"a {shapes_class(c)}" for c in captions], params, \
            f"{s['sampler']}, {s['steps']} steps, CFG {s['cfg_scale']:g}, batch 25"

    if family in ("ldm-class", "ldm-uncond", "ldm-class-ft"):
        return _sample_class_ldm(run, n, mode, device)
    from t2i.pipelines.families import load_family_model

    loaded = load_family_model(run, device=device)
    model = loaded.model
    if family == "gan":
        from t2i.models.gan import sample

        return (lambda k: sample(model, k, IMAGE_SEED, batch_size=64)), _class_prompts(model.config.class_names, n), \
            sum(p.numel() for p in model.generator.parameters()), "one generator pass, batch 64"
    if family == "vae":
        from t2i.models.vae import sample

        return (lambda k: sample(model, k, IMAGE_SEED, batch_size=64)), None, \
            sum(p.numel() for p in model.parameters()), "one decoder pass, batch 64"
    if family == "ddpm":
        from t2i.models.ddpm import sample

        s = DDPM_SAMPLING[mode]
        return (lambda k: sample(model, k, IMAGE_SEED, batch_size=50, **s)), \
            _class_prompts(model.config.class_names, n), sum(p.numel() for p in model.parameters()), \
            f"{s['sampler']}, {s['steps']} steps, guidance {s['guidance_scale']:g}, batch 50"
    from t2i.pipelines.ar_images import sample_ar

    vqgan = loaded.first_stage
    params = sum(p.numel() for m in (model, vqgan) for p in m.parameters())
    return (lambda k: sample_ar(model, vqgan, k, IMAGE_SEED, batch_size=50)), \
        _class_prompts(model.config.class_names, n), params, "all codes (top-k off, T 1), KV cache, batch 50"


def _sample_class_ldm(run: Path, n: int, mode: str, device: str):
    """Class LDM: image i asks for class i mod K; unconditional: no prompts, no guidance. Same
    sampler and steps as the text LDM (LDM_SAMPLING), through `t2i sample`'s sampling code."""
    from t2i.pipelines.ldm_classes import ldm_folder_of, load_class_ldm, sample_ldm

    model = load_class_ldm(ldm_folder_of(run)).to(device)
    names = model.config.class_names if model.config.conditioning == "class" else ()
    s = LDM_SAMPLING[mode]
    scale = s["cfg_scale"] if names else None

    def draw(k):
        return sample_ldm(model, k, IMAGE_SEED, sampler=s["sampler"], steps=s["steps"], guidance_scale=scale)
    params = sum(p.numel() for p in model.parameters())  # UNet + VAE + the learned tokens
    guide = f"CFG {scale:g}" if names else "no guidance"
    return draw, (_class_prompts(names, n) if names else None), params, \
        f"{s['sampler']}, {s['steps']} steps, {guide}, batch 16"


def evaluate(family: str, run: Path, n: int, mode: str, out: Path, device: str = "cpu") -> None:
    """Sample n images, time them, score them; writes out/result.json and out/samples.pt (uint8)."""
    import numpy as np
    import torch

    from t2i.evaluate.shapes_checker import check

    torch.set_num_threads(1)
    draw, prompts, params, sampler = _sample(family, run, n, mode, device)
    draw(2)  # warm-up: the first call of each shape builds kernels
    cpu0, wall0 = time.process_time(), time.perf_counter()
    images = draw(n)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    result = {"family": family, "n": n, "params": params, "sampler": sampler, "device": device,
              "images_per_cpu_s": n / cpu, "images_per_wall_s": n / wall}
    if prompts is not None:
        checks = [check(im, p) for im, p in zip(images, prompts)]
        result["color"] = sum(c.attributes["color"] for c in checks) / n
        result["shape"] = sum(c.attributes["shape"] for c in checks) / n
        result["accuracy"] = sum(c.attributes["color"] and c.attributes["shape"] for c in checks) / n
    out.mkdir(parents=True, exist_ok=True)
    pixels = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
    torch.save(pixels.contiguous(), out / "samples.pt")
    from t2i.outputs import make_grid

    make_grid(images[:48], cols=8).save(out / "samples.png")
    (out / "result.json").write_text(json.dumps(result, indent=2))


# ------------------------------------------------------------------ orchestration

def real_images(n: int, resolution: int):
    """Held-out real single-object scenes (seed 999: no training run uses it), float (N, 3, H, W) in [0, 1]."""
    from t2i.data.images import render_shapes
    from t2i.data.shapes import ShapesDataset

    source = render_shapes(ShapesDataset(n, REAL_SEED, resolution, p_two=0.0, p_short=0.3))
    return source.images.permute(0, 3, 1, 2).float() / 255


def run_family(family: str, args, workdir: Path) -> dict:
    prefix = "tiny-" if args.tiny else ""
    trained = train_family(family, args.configs, prefix, workdir, args.budget_minutes, args.vqgan_share,
                           args.budget_clock, args.reuse_runs)
    out = workdir / "eval"
    _run([sys.executable, str(Path(__file__).resolve()), "--evaluate", family, trained["run"], "--n", str(args.n),
          "--eval-out", str(out), "--device", args.device] + (["--tiny"] if args.tiny else []),
         workdir / f"{family}.log")
    result = json.loads((out / "result.json").read_text())
    result["budgets"] = trained["budgets"]
    return result


def _fid_or_reason(fid, real, family_dir: Path):
    import torch

    fake = torch.load(family_dir / "eval" / "samples.pt", weights_only=True).float() / 255
    try:
        return fid(real, fake)
    except Exception as err:  # noqa: BLE001  (a missing feature network must not lose the other columns)
        return f"n/a ({type(err).__name__}: {err})"


def _steps(budgets: list[dict]) -> str:
    return ", ".join(f"{s['name']} {s['step']}/{s['steps']}" for b in budgets for s in b["stages"])


def table(results: dict[str, dict], fids: dict, clock: str = "cpu", device: str = "cpu") -> str:
    used_unit = "CPU-min used" if clock == "cpu" else "wall min used"
    speed = "sampling img/s (1 thread)" if device == "cpu" else f"sampling img/s ({device}, wall)"
    speed_key = "images_per_cpu_s" if device == "cpu" else "images_per_wall_s"
    rows = [f"| family | conditioning | params (M) | training steps reached (of config) | {used_unit} | "
            f"colour+shape acc | colour | shape | FID (shapes features) | {speed} | sampler |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, r in results.items():
        if "error" in r:
            rows.append(f"| {family} | {CONDITIONING[family]} | failed: {r['error']} |" + " |" * 8)
            continue
        pct = (lambda key: f"{r[key]:.1%}" if key in r else "-")  # noqa: E731
        fid = fids.get(family, "n/a")
        used = sum(b["used_minutes"] for b in r["budgets"])
        rows.append(f"| {family} | {CONDITIONING[family]} | {r['params'] / 1e6:.2f} | {_steps(r['budgets'])} | "
                    f"{used:.2f} | {pct('accuracy')} | {pct('color')} | {pct('shape')} | "
                    f"{fid if isinstance(fid, str) else f'{fid:.2f}'} | {r[speed_key]:.2f} | {r['sampler']} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-minutes", type=float, default=None, help="minutes per family (default 10; tiny 0.05)")
    p.add_argument("--budget-clock", choices=("cpu", "wall"), default="cpu",
                   help="what the minutes count: process CPU time (default) or wall time (a GPU, --jobs 1)")
    p.add_argument("--device", default="cpu", help="where sampling runs (cpu, cuda); training uses a GPU if present")
    p.add_argument("--jobs", type=int, default=2, help="families trained and evaluated at once (1 thread each)")
    p.add_argument("--n", type=int, default=None, help="images sampled per family (default 500; tiny 24)")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(DEFAULT_FAMILIES),
                   help="default: the issue-3 five; ldm-class and ldm-uncond on request")
    p.add_argument("--vqgan-share", type=float, default=0.4, help="share of the vqgan+ar budget for the VQGAN")
    p.add_argument("--configs", type=Path, default=ROOT / "configs" / "compare")
    p.add_argument("--outdir", type=Path, default=Path("/tmp/t2i-family-comparison"))
    p.add_argument("--reuse-runs", action="store_true",
                   help="skip training a run whose folder in --outdir already has budget.json; score it")
    p.add_argument("--tiny", action="store_true", help="seconds-long tiny configs (configs/compare/tiny-*.yaml)")
    p.add_argument("--evaluate", nargs=2, metavar=("FAMILY", "RUN"), help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--eval-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.budget_minutes = args.budget_minutes or (0.05 if args.tiny else 10.0)
    args.n = args.n or (24 if args.tiny else 500)
    if not 0 < args.vqgan_share < 1:
        p.error("--vqgan-share must be between 0 and 1")
    return args


def main(argv=None, fid=None) -> str:
    """Run the comparison; `fid(real, fake) -> float` defaults to t2i.evaluate.fid.fid_score."""
    args = parse_args(argv)
    if args.evaluate:
        evaluate(args.evaluate[0], Path(args.evaluate[1]), args.n, "tiny" if args.tiny else "full", args.eval_out,
                 args.device)
        return ""
    if fid is None:
        from t2i.evaluate.fid import fid_score as fid
    args.outdir.mkdir(parents=True, exist_ok=True)
    unit = "CPU-minutes" if args.budget_clock == "cpu" else "wall minutes"
    print(f"{len(args.families)} families, {args.budget_minutes:g} {unit} each, {args.jobs} at a time, "
          f"1 torch thread each, n={args.n}; runs and logs in {args.outdir}", file=sys.stderr)

    def one(family):
        workdir = args.outdir / family.replace("+", "-")
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        try:
            result = run_family(family, args, workdir)
        except Exception as err:  # noqa: BLE001  (one family failing must not lose the others' rows)
            result = {"error": str(err)}
        print(f"  {family}: done in {time.perf_counter() - start:.0f} s wall", file=sys.stderr)
        return family, result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(pool.map(one, args.families))
    import torch

    torch.set_num_threads(1)
    resolution = 32 if args.tiny else 64
    real = real_images(args.n, resolution)
    fids = {f: _fid_or_reason(fid, real, args.outdir / f.replace("+", "-")) for f, r in results.items()
            if "error" not in r}
    text = table(results, fids, args.budget_clock, args.device)
    (args.outdir / "results.json").write_text(json.dumps({"results": results, "fid": fids}, indent=2, default=str))
    print(text)
    return text


if __name__ == "__main__":
    main()
