"""Flags for extra networks on the generating commands (`t2i generate`, `img2img`, `inpaint`,
`outpaint`): a separate VAE and the folders searched for `<lora:name:weight>` tags and
textual-inversion embedding names (t2i.extra_networks)."""
from __future__ import annotations

from pathlib import Path

from t2i.extra_networks import DEFAULT_EMBEDDING_DIRS, DEFAULT_LORA_DIRS


def add_extra_network_arguments(p) -> None:
    p.add_argument("--vae", type=Path, help="a separate VAE file (.safetensors, .pt, .ckpt) or diffusers VAE folder "
                   "to use instead of the model's own VAE")
    p.add_argument("--lora-dir", type=Path, action="append", dest="lora_dirs", metavar="DIR",
                   help="folder with LoRA files for <lora:name:weight> prompt tags; repeat for several "
                        f"(default: {' and '.join(DEFAULT_LORA_DIRS)})")
    p.add_argument("--embeddings-dir", type=Path, action="append", dest="embedding_dirs", metavar="DIR",
                   help="folder with textual-inversion embeddings, used by writing their file name in the prompt; "
                        f"repeat for several (default: {' and '.join(DEFAULT_EMBEDDING_DIRS)})")


def configure_from_args(loaded, args) -> None:
    """Apply the flags to a freshly loaded model (loads the --vae file)."""
    from t2i.extra_networks.library import configure_extra_networks

    configure_extra_networks(loaded, vae=getattr(args, "vae", None), lora_dirs=getattr(args, "lora_dirs", None),
                             embedding_dirs=getattr(args, "embedding_dirs", None))
