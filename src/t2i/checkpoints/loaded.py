"""A loaded model as the pipelines get it, and the web UI's file hash that names it in infotexts.

Below every loader (registry: t2i folders and the dispatch; single_file: Stable Diffusion files
and diffusers folders; embedded: files t2i exported with their configs), so each of them builds
one without importing another. Both names stay importable from t2i.checkpoints.registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from t2i.checkpoints.hash_cache import sha256_of
from t2i.runtime import Runtime


def file_hash(path: Path, chars: int = 10) -> str:
    """The web UI's model hash: the first 10 hex digits of the file's sha256 (of a large file
    remembered by path, size and mtime in t2i's cache folder: t2i.checkpoints.hash_cache)."""
    return sha256_of(path)[:chars]


@dataclass
class LoadedModel:
    """A model ready to generate with, plus what infotexts say about it."""

    model: object  # LatentDiffusion
    name: str
    hash: str
    path: Path
    runtime: Runtime
    # LoRA / embedding folders, a separate VAE and their caches (t2i.extra_networks.ExtraNetworks);
    # None: the default folders, made on first use
    extra_networks: object = None
    # upscaler folders, face restorer and their loaded models (t2i.pipelines.model_upscalers
    # UpscalerLibrary); None: the default folders, made on first use
    upscalers: object = None
    # the safety checker of --safety-checker (t2i.pipelines.safety.SafetyChecker); None: off
    safety_checker: object = None
