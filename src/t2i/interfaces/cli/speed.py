"""CLI flags for the opt-in accelerators of t2i.speedups, shared by the generating commands.

The automatic fast path (precision, memory layout) needs no flag: `--precision full` turns it
off. DeepCache is a generation parameter (`--deepcache-interval`, from Txt2ImgParams).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

VAE_DECODERS = ("full", "tiny")


def add_speed_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("speed and memory (opt-in)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet (minutes of compiling on first use of each size; needs a C++ "
                            "compiler on a CPU)")
    group.add_argument("--vae-decoder", nargs="+", metavar=("KIND", "FILE"), default=None,
                       help="'full' (default) or 'tiny FILE': decode with a TAESD-format tiny decoder (a file such "
                            "as taesd_decoder.safetensors, or a diffusers AutoencoderTiny folder): faster, approximate")
    # --attention-slicing, --vae-tiling, --offload: auto/on/off memory options (models.py)
    from t2i.interfaces.cli.models import add_memory_arguments

    add_memory_arguments(group)


def _tiny_decoder_path(values: list[str] | None) -> Path | None:
    if not values or values == ["full"]:
        return None
    if values[0] == "tiny" and len(values) == 2:
        return Path(values[1])
    raise ValueError(f"--vae-decoder takes 'full' or 'tiny FILE', got {' '.join(values)!r}")


def apply_speed_options(loaded, args) -> None:
    """Switch on the accelerators the flags ask for; report each on stderr."""
    from t2i.speedups import compile_unet, use_tiny_decoder

    tiny = _tiny_decoder_path(getattr(args, "vae_decoder", None))
    if tiny is not None:
        use_tiny_decoder(loaded, tiny)
        print(f"VAE decoder: tiny ({tiny})", file=sys.stderr)
    # attention slicing and VAE tiling: cli_models.apply_memory_from_args (auto/on/off, in the summary line)
    if getattr(args, "compile", False):
        print("compiling the UNet (torch.compile) ...", file=sys.stderr)
        seconds = compile_unet(loaded)
        print(f"UNet compiled: {seconds:.1f} s for the compile and one step at the default size; other sizes "
              f"compile again on first use", file=sys.stderr)
