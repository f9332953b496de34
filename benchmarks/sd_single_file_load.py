"""How long does t2i take to load an SD 1.5-sized single file, and how much memory does it use?

Writes a random-weight file in the original (web UI) layout at full SD 1.5 size (fp16, 2.1 GB,
the layout of `v1-5-pruned-emaonly.safetensors`, plus the extras real files carry: CLIP position
ids and the DDPM schedule buffers), then loads it through `t2i.checkpoints.registry.load_model`
(detection, the bundled sd15 config, strict weight placement, the web UI's sha256 model hash),
in a fresh process so that peak RSS is the loader's own. Generation timing is left out: one
512x512 20-step image takes minutes on a small shared CPU (see issue 5's numbers to report).

    python benchmarks/sd_single_file_load.py                 # writes /tmp/t2i-sd15-random.safetensors
    python benchmarks/sd_single_file_load.py --keep --threads 4
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch


def write_random_sd15(path: Path) -> int:
    """Full-size random SD 1.5 file, tensor by tensor (never the whole model in fp32)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2i.checkpoints.convert import export_targets, to_original
    from t2i.checkpoints.single_file import bundled_config_dir

    folder = bundled_config_dir("sd15")
    configs = {part: json.loads((folder / part / "config.json").read_text()) for part in ("unet", "vae", "text_encoder")}
    with init_empty_weights():
        modules = {"unet": UNet2DConditionModel.from_config(configs["unet"]),
                   "vae": AutoencoderKL.from_config(configs["vae"]),
                   "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))}
    targets = export_targets("sd1", configs["unet"], configs["vae"])
    shapes = to_original({name: (modules[name].state_dict(), targets[name]) for name in modules})  # meta tensors
    generator = torch.Generator().manual_seed(0)
    state = {key: (torch.randn(meta.shape, generator=generator) * 0.02).half() for key, meta in shapes.items()}
    state["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    save_file(state, str(path))
    return sum(t.numel() for t in state.values())


def load_in_child(path: Path, threads: int) -> dict:
    code = f"""
import json, resource, time, torch
torch.set_num_threads({threads})
from t2i.checkpoints.registry import load_model
from t2i.runtime import Runtime
start = time.perf_counter()
loaded = load_model({str(path)!r}, Runtime.auto("full", "cpu"))
seconds = time.perf_counter() - start
params = sum(p.numel() for p in loaded.model.parameters())
print(json.dumps({{"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                   "params": params, "hash": loaded.hash, "family": loaded.model.config.family,
                   "dtype": str(next(loaded.model.unet.parameters()).dtype)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=Path("/tmp/t2i-sd15-random.safetensors"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the file for another run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.path.exists():
        start = time.perf_counter()
        n = write_random_sd15(args.path)
        print(f"wrote {args.path} ({args.path.stat().st_size / 2**30:.2f} GiB, {n / 1e6:.0f}M values) "
              f"in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    result = load_in_child(args.path, args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} torch thread(s)")
    print("| file | load (s) | peak RSS (GiB) | parameters | dtype | hash |")
    print("|---|---|---|---|---|---|")
    print(f"| SD 1.5-sized, fp16, {args.path.stat().st_size / 2**30:.2f} GiB | {result['seconds']:.1f} | "
          f"{result['peak_rss_gb']:.2f} | {result['params'] / 1e6:.0f}M | {result['dtype']} | {result['hash']} |")
    if not args.keep:
        args.path.unlink()


if __name__ == "__main__":
    main()
