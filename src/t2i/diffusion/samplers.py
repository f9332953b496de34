"""Sampler names as web-UI users and clients say them, mapped onto diffusers schedulers.

Everything here is data: `SAMPLERS` maps each name to a diffusers scheduler class, its extra
constructor kwargs and the schedule types it supports; `SCHEDULE_KWARGS` maps each schedule type
to the kwargs that select it. `resolve_sampler` turns what a user typed ("dpm++ 2m karras",
"k_euler_a", "Euler a" + "Automatic") into canonical names; `make_scheduler` builds a fresh
scheduler from the model's DDPM training schedule plus the table's kwargs.

"Automatic" follows the web UI: the sampler's own default schedule type (Karras for DPM++ 2M,
DPM++ SDE, DPM2 and DPM2 a; Exponential for DPM++ 2M SDE and DPM++ 3M SDE; Uniform otherwise).
"Uniform" is the model's own timestep spacing (the diffusers default).
"""
from __future__ import annotations

import importlib.util
import inspect
import re
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class SamplerSpec:
    scheduler: str  # diffusers class name
    kwargs: dict = field(default_factory=dict)  # extra constructor kwargs on top of the model's schedule
    schedules: tuple[str, ...] = ("Uniform",)  # schedule types the class really implements
    automatic: str = "Uniform"  # what "Automatic" means for this sampler (the web UI's default)
    aliases: tuple[str, ...] = ()  # the web UI's legacy names (sampler_index era)
    needs: tuple[str, ...] = ()  # extra Python packages the diffusers class imports


# Schedule types. Karras 2022 (EDM) rho=7 sigmas, exponential (log-linear) sigmas, beta sigmas
# (Lee et al. 2024), SGM Uniform = "trailing" timestep spacing (Lin et al. 2023, Table 2).
SCHEDULE_KWARGS = MappingProxyType({
    "Uniform": {},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
})
SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", *SCHEDULE_KWARGS)
SCHEDULE_NEEDS = MappingProxyType({"Beta": ("scipy",)})  # diffusers computes beta sigmas with scipy.stats

_ALL = tuple(SCHEDULE_KWARGS)  # classes with use_*_sigmas flags and timestep_spacing
_SPACING = ("Uniform", "SGM Uniform")  # classes with timestep_spacing only
_SDE2 = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

SAMPLERS: MappingProxyType[str, SamplerSpec] = MappingProxyType({
    "Euler": SamplerSpec("EulerDiscreteScheduler", schedules=_ALL, aliases=("k_euler",)),
    "Euler a": SamplerSpec("EulerAncestralDiscreteScheduler", schedules=_SPACING,
                           aliases=("k_euler_a", "k_euler_ancestral")),
    "LMS": SamplerSpec("LMSDiscreteScheduler", schedules=_ALL, aliases=("k_lms",), needs=("scipy",)),
    "Heun": SamplerSpec("HeunDiscreteScheduler", schedules=_ALL, aliases=("k_heun",)),
    "DPM2": SamplerSpec("KDPM2DiscreteScheduler", schedules=_ALL, automatic="Karras", aliases=("k_dpm_2",)),
    "DPM2 a": SamplerSpec("KDPM2AncestralDiscreteScheduler", schedules=_ALL, automatic="Karras",
                          aliases=("k_dpm_2_a",)),
    "DPM++ 2M": SamplerSpec("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2},
                            schedules=_ALL, automatic="Karras", aliases=("k_dpmpp_2m",)),
    "DPM++ 2M SDE": SamplerSpec("DPMSolverMultistepScheduler", _SDE2, schedules=_ALL, automatic="Exponential",
                                aliases=("k_dpmpp_2m_sde",)),
    "DPM++ 3M SDE": SamplerSpec("DPMSolverMultistepScheduler", {**_SDE2, "solver_order": 3}, schedules=_ALL,
                                automatic="Exponential", aliases=("k_dpmpp_3m_sde",)),
    # The web UI's DPM++ SDE is the stochastic second-order singlestep solver. diffusers' own port
    # (DPMSolverSDEScheduler) needs torchsde, so use the singlestep solver's SDE variant instead.
    # The singlestep class has no timestep_spacing, hence no SGM Uniform; lower_order_final=True is
    # what it switches to anyway (with a warning) for odd step counts and zero final sigma.
    "DPM++ SDE": SamplerSpec("DPMSolverSinglestepScheduler", {**_SDE2, "lower_order_final": True},
                             schedules=("Uniform", "Karras", "Exponential", "Beta"), automatic="Karras",
                             aliases=("k_dpmpp_sde",)),
    "DDIM": SamplerSpec("DDIMScheduler", schedules=_SPACING),
    "PLMS": SamplerSpec("PNDMScheduler", {"skip_prk_steps": True}, schedules=_SPACING),
    "UniPC": SamplerSpec("UniPCMultistepScheduler", schedules=_ALL),
    # LCMScheduler accepts timestep_spacing but ignores it: its steps come from original_inference_steps.
    "LCM": SamplerSpec("LCMScheduler", aliases=("k_lcm",)),
})
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# The model's DDPM training schedule; keys a scheduler class does not take are left out for it.
REQUIRED_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type")


def _norm(text: str) -> str:
    """Case- and spacing-insensitive key: 'DPM++ 2M  Karras' -> 'dpm++2mkarras', 'k_dpm_2_a' -> 'kdpm2a'."""
    return re.sub(r"[\s_\-]+", "", text).lower()


_SAMPLER_KEYS = {_norm(n): n for n in SAMPLERS} | {_norm(a): n for n, s in SAMPLERS.items() for a in s.aliases}
_SCHEDULE_KEYS = {_norm(s): s for s in SCHEDULE_TYPES}
# Suffixes of combined names ("DPM++ 2M Karras", legacy "k_dpmpp_2m_ka"); longest first so that
# "sgmuniform" wins over "uniform".
_SUFFIXES = sorted(
    [(k, v) for k, v in _SCHEDULE_KEYS.items() if v != "Automatic"] + [("ka", "Karras"), ("exp", "Exponential")],
    key=lambda kv: -len(kv[0]),
)


def _unknown_sampler(name: object) -> ValueError:
    return ValueError(
        f"unknown sampler {name!r}. Valid samplers: {', '.join(SAMPLER_NAMES)}; optionally followed by a "
        f"schedule type ({', '.join(SCHEDULE_TYPES[1:])}), e.g. 'DPM++ 2M Karras'."
    )


def resolve_schedule_type(schedule_type: str | None) -> str:
    """Canonical schedule type; None or "" -> "Automatic"; 'sgm_uniform' -> 'SGM Uniform'."""
    if schedule_type is None or str(schedule_type).strip() == "":
        return "Automatic"
    if not isinstance(schedule_type, str) or _norm(schedule_type) not in _SCHEDULE_KEYS:
        raise ValueError(f"unknown schedule type {schedule_type!r}. Valid schedule types: {', '.join(SCHEDULE_TYPES)}.")
    return _SCHEDULE_KEYS[_norm(schedule_type)]


def supported_schedule_types(sampler: str) -> tuple[str, ...]:
    """Schedule types `sampler` (a canonical name) accepts, "Automatic" first."""
    return ("Automatic", *SAMPLERS[sampler].schedules)


def resolve_sampler(name: str, schedule_type: str | None = None) -> tuple[str, str]:
    """Canonical (sampler name, schedule type) from what a user or client typed.

    Case-insensitive and tolerant of spacing; accepts aliases ("k_euler_a") and old combined names
    ("DPM++ 2M Karras"), whose schedule applies when `schedule_type` is None/""/"Automatic".
    Raises ValueError listing the valid names, for an unknown name, a contradicting schedule type or
    a schedule type that the sampler's scheduler does not implement.
    """
    if not isinstance(name, str) or not name.strip():
        raise _unknown_sampler(name)
    schedule = resolve_schedule_type(schedule_type)
    key = _norm(name)
    if key in _SAMPLER_KEYS:
        sampler = _SAMPLER_KEYS[key]
    else:
        for suffix, suffix_schedule in _SUFFIXES:
            stem = key[: -len(suffix)]
            if key.endswith(suffix) and stem in _SAMPLER_KEYS:
                break
        else:
            raise _unknown_sampler(name)
        sampler = _SAMPLER_KEYS[stem]
        if schedule not in ("Automatic", suffix_schedule):
            raise ValueError(
                f"sampler name {name!r} already says schedule type {suffix_schedule!r} but {schedule!r} was "
                f"also given; pass the sampler {sampler!r} with one schedule type."
            )
        schedule = suffix_schedule
    if schedule not in supported_schedule_types(sampler):
        raise ValueError(
            f"sampler {sampler!r} ({SAMPLERS[sampler].scheduler}) does not support schedule type {schedule!r}; "
            f"it supports: {', '.join(supported_schedule_types(sampler))}."
        )
    return sampler, schedule


def effective_schedule_type(sampler: str, schedule_type: str | None = None) -> str:
    """The schedule type that runs: "Automatic" replaced by the sampler's default (DPM++ 2M -> Karras)."""
    sampler, schedule = resolve_sampler(sampler, schedule_type)
    return SAMPLERS[sampler].automatic if schedule == "Automatic" else schedule


def _require(packages: tuple[str, ...], what: str) -> None:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(
            f"{what} needs the Python package(s) {', '.join(missing)}, which diffusers imports for it: "
            f"`pip install {' '.join(missing)}`, or choose another sampler/schedule type."
        )


def scheduler_class(sampler: str):
    """The diffusers scheduler class behind a canonical sampler name (checks extra packages first)."""
    import diffusers

    spec = SAMPLERS[sampler]
    _require(spec.needs, f"sampler {sampler!r}")
    return getattr(diffusers, spec.scheduler)


def make_scheduler(sampler: str, schedule_type: str | None, base_config: dict):
    """A fresh diffusers scheduler for `sampler` and `schedule_type` (any spelling resolve_sampler
    accepts) built on the model's DDPM training schedule `base_config` (e.g.
    `NoiseScheduleConfig.to_diffusers()`, or a diffusers scheduler_config.json as a dict).

    Keys of `base_config` the class does not take (clip_sample for Euler, ...) are left out; the
    table's kwargs must all be accepted, else the table is wrong and this raises.
    """
    sampler, schedule = resolve_sampler(sampler, schedule_type)
    missing = [k for k in REQUIRED_SCHEDULE_KEYS if k not in base_config]
    if missing:
        raise ValueError(f"base_config lacks the training schedule key(s) {missing}; pass the model's schedule config")
    spec = SAMPLERS[sampler]
    effective = effective_schedule_type(sampler, schedule)
    _require(SCHEDULE_NEEDS.get(effective, ()), f"schedule type {effective!r}")
    cls = scheduler_class(sampler)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    extra = {**spec.kwargs, **SCHEDULE_KWARGS[effective]}
    rejected = sorted(set(extra) - accepted)
    if rejected:  # a bug in the table above, e.g. after a diffusers update
        raise RuntimeError(f"{cls.__name__} does not accept {rejected} (sampler {sampler!r}, schedule {effective!r})")
    kwargs = {k: v for k, v in base_config.items() if k in accepted}
    return cls(**{**kwargs, **extra})


def step_accepts(sampler: str, name: str) -> bool:
    """Whether `sampler`'s scheduler takes the `scheduler.step` kwarg `name` (eta for DDIM;
    s_churn, s_tmin, s_tmax, s_noise for Euler): a setting it does not take changes nothing."""
    sampler, _ = resolve_sampler(sampler)
    return name in inspect.signature(scheduler_class(sampler).step).parameters
