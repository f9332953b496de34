"""`fast`: few-step generation with an LCM-LoRA (t2i.diffusion.lcm, t2i.training.lcm).

With `fast` on (or `fast_lora` given), a generation applies the model's LCM-LoRA at weight 1 (as
if the prompt had `<lora:lcm_lora:1>`) and samples with the matching settings: the LCM sampler,
4 steps, CFG scale 1 (the guidance is baked into the LoRA, so one UNet call per step). A LoRA that
t2i distilled with phased consistency says so in its metadata (`t2i_lcm`), and then the settings
are the ones it was distilled for: DDIM with trailing spacing ("SGM Uniform") at its number of
phases. Steps, sampler, schedule type and CFG scale that differ from their ordinary defaults are
kept: they were asked for.
Which LoRA: `fast_lora` when given, else the one shipped with the bundled model
(assets/default_model/lcm_lora.safetensors); any other model without `fast_lora` is an error
that says what to do. The image's infotext says `Fast: True` and names the LoRA in `Lora hashes`,
so reading it back (`--infotext`, PNG info) turns fast on again.

Every front door gets this through the schema field (CLI `--fast`, API `t2i_fast`, the web UI's
checkbox) and the pipelines' `resolve_params`, which calls `apply_fast` first.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from t2i.errors import ModelLoadError, ParamError
from t2i.pipelines.params import field_default

FAST_LORA_FILE = "lcm_lora.safetensors"  # beside the bundled model's folders
# field -> value under `fast` (applied where the field still has its ordinary default)
FAST_SETTINGS = {"steps": 4, "sampler": "LCM", "cfg_scale": 1.0}


def fast_settings(lora: Path) -> dict:
    """The sampling settings `lora` was distilled for: those in t2i's `t2i_lcm` metadata when it
    names a sampler other than LCM (a phased-consistency LoRA), else the LCM ones. A file whose
    header cannot be read gets the LCM ones here; loading it then says what is wrong with it."""
    from t2i.checkpoints.safe_load import read_safetensors_header

    try:
        info = json.loads(read_safetensors_header(lora)[1].get("t2i_lcm", "{}"))
        if isinstance(info, dict) and info.get("sampler", "LCM") != "LCM":
            return {"steps": int(info["sample_steps"]), "sampler": str(info["sampler"]),
                    "scheduler": str(info.get("schedule_type", "Automatic")), "cfg_scale": 1.0}
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError):  # the LoRA loader says what is wrong
        pass
    return dict(FAST_SETTINGS)


def bundled_fast_lora() -> Path:
    from t2i.checkpoints.registry import bundled_model_dir

    return bundled_model_dir() / FAST_LORA_FILE


def is_bundled(loaded) -> bool:
    from t2i.checkpoints.registry import bundled_model_dir

    path = getattr(loaded, "path", None)
    try:
        return path is not None and Path(path).resolve() == bundled_model_dir().resolve()
    except OSError:
        return False


def fast_lora_path(params, loaded) -> Path:
    """The LCM-LoRA `fast` applies to `loaded`; ParamError when there is none to apply."""
    if params.fast_lora:
        path = Path(params.fast_lora)
        if not path.is_file():
            raise ParamError(f"--fast-lora {path}: no such file; give an LCM-LoRA file (.safetensors)")
        return path
    if is_bundled(loaded):
        path = bundled_fast_lora()
        if not path.is_file():
            raise ParamError(f"the bundled model's few-step LoRA {path} is missing; reinstall t2i, or give "
                             f"--fast-lora FILE")
        return path
    raise ParamError(f"--fast needs an LCM-LoRA for the model {getattr(loaded, 'name', '')!r}: give --fast-lora FILE "
                     f"(an LCM-LoRA distilled from this model or its base, e.g. with `t2i train` and family: lcm, "
                     f"or the published lcm-lora-sdv1-5 for SD 1.5 models); only the bundled model ships one")


def apply_fast(params, loaded):
    """`params` with the fast settings and the LCM-LoRA in `loras`, when fast is on; unchanged
    otherwise. Idempotent (pipelines resolve params more than once)."""
    if not (getattr(params, "fast", False) or getattr(params, "fast_lora", None)):
        return params
    lora = fast_lora_path(params, loaded)
    defaults = {f.name: field_default(f) for f in dataclasses.fields(params)}
    changes = {name: value for name, value in fast_settings(lora).items() if getattr(params, name) == defaults[name]}
    loras = dict(params.loras or {})
    loras.setdefault(str(lora), 1.0)
    return dataclasses.replace(params, fast=True, loras=loras, **changes)
