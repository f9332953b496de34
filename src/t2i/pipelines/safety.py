"""The Stable Diffusion safety checker (CompVis's `check_safety`), with weights the user has locally.

    checker = load_safety_checker("models/safety_checker")   # config.json + model.safetensors
    images, flagged = checker.check(images)                   # flagged images are black

The folder is the `safety_checker` part of a Stable Diffusion diffusers folder (diffusers'
`StableDiffusionSafetyChecker`: a CLIP vision model, a projection, 17 concept and 3 special-care
embeddings with their thresholds). Weights are read by t2i's safe loader (model.safetensors, or
pytorch_model.bin weights-only) and loaded strictly; nothing is ever downloaded. The CLIP input is
prepared as CLIP's image processor does (shortest side resized, centre crop, CLIP's mean and std;
`preprocessor_config.json` in the folder or the parent folder's `feature_extractor/` overrides it).
Off unless `--safety-checker DIR` is given.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from t2i.errors import ModelLoadError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors", "pytorch_model.bin")


@dataclass
class SafetyChecker:
    model: object  # diffusers StableDiffusionSafetyChecker, eval mode
    path: Path
    size: int  # CLIP input side
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    def clip_input(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, size, size): shortest side to `size` (bicubic), centre crop, normalised."""
        batch = []
        for im in images:
            im = im.convert("RGB")
            scale = self.size / min(im.size)
            w, h = max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))
            im = im.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            batch.append(np.asarray(im, dtype=np.float32) / 255.0)
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
        mean, std = torch.tensor(self.mean).view(1, 3, 1, 1), torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def check(self, images: list[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """The images with every flagged one replaced by a black image of its size, and the flags."""
        if not images:
            return [], []
        param = next(self.model.parameters())
        with torch.no_grad():
            arrays = [np.asarray(im.convert("RGB")) for im in images]
            _, flags = self.model(clip_input=self.clip_input(images).to(param.device, param.dtype), images=arrays)
        flags = [bool(f) for f in flags]
        out = [Image.new("RGB", im.size) if flagged else im for im, flagged in zip(images, flags)]
        return out, flags


def _preprocessing(folder: Path) -> dict:
    for candidate in (folder / "preprocessor_config.json", folder.parent / "feature_extractor" /
                      "preprocessor_config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ModelLoadError(f"cannot read {candidate}: {err}") from err
    return {}


def load_safety_checker(folder: str | Path, device: str = "cpu") -> SafetyChecker:
    """The checker of a local folder; ModelLoadError naming what is missing or does not fit."""
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig

    from t2i.checkpoints.safe_load import load_state_dict_file, misfit_is_load_error

    folder = Path(folder)
    from t2i.pipelines.clip_safety import is_concept_folder, load_concept_checker

    if is_concept_folder(folder):  # concept embeddings over t2i's CLIP (the CompVis rule)
        return load_concept_checker(folder, device)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"--safety-checker {folder}: no config.json there; give the safety_checker folder of a "
                             f"Stable Diffusion diffusers model (config.json and model.safetensors)")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise ModelLoadError(f"--safety-checker {folder}: no weights there ({', '.join(WEIGHT_FILES)})")
    with misfit_is_load_error(config_file, "a CLIP safety checker config"):
        config = CLIPConfig.from_json_file(str(config_file))
    state = load_state_dict_file(weights)
    with misfit_is_load_error(weights, "the safety checker of its config.json"):
        model = StableDiffusionSafetyChecker(config)
        expected = model.state_dict()
        # older exports carry the position_ids buffer that newer transformers no longer saves
        state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
        model.load_state_dict(state, strict=True)
    pre = _preprocessing(folder)
    crop = pre.get("crop_size", config.vision_config.image_size)
    size = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else int(crop)
    return SafetyChecker(model.to(device).eval(), folder, int(size), tuple(pre.get("image_mean", CLIP_MEAN)),
                         tuple(pre.get("image_std", CLIP_STD)))
