"""Sampler name table and the denoising loop: tiny random UNet, an analytic denoiser, batch vs single."""
from __future__ import annotations

import importlib.util
import inspect
import types

import pytest
import torch

from t2i.diffusion.samplers import (
    SAMPLER_NAMES,
    SAMPLERS,
    SCHEDULE_KWARGS,
    SCHEDULE_NEEDS,
    SCHEDULE_TYPES,
    effective_schedule_type,
    make_scheduler,
    resolve_sampler,
    scheduler_class,
)
from t2i.diffusion.sampling import denoise, draw_noise, initial_noise, make_generators

torch.set_num_threads(1)
# diffusers' DPM2 and UniPC schedule set-up trips NumPy 2 deprecations thousands of times per call.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

# Stable Diffusion 1.x's training schedule, written out so the tests do not move with the
# project's default schedule.
SD_SCHEDULE = {
    "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "timestep_spacing": "leading",
}
SHAPE = (4, 8, 8)  # latent (C, H, W)
WEB_UI_NAMES = ("Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 3M SDE",
                "DPM++ SDE", "DDIM", "PLMS", "UniPC", "LCM")


def available(sampler: str, schedule: str = "Automatic") -> bool:
    needs = SAMPLERS[sampler].needs + SCHEDULE_NEEDS.get(effective_schedule_type(sampler, schedule), ())
    return all(importlib.util.find_spec(p) is not None for p in needs)


def skip_unavailable(sampler: str, schedule: str = "Automatic") -> None:
    if not available(sampler, schedule):
        pytest.skip(f"{sampler} / {schedule} needs a package that is not installed (scipy)")


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=16, norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


def text(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 16, generator=torch.Generator().manual_seed(seed))  # (B, T, D)


def run(unet, sampler, seeds, schedule="Automatic", steps=4, cfg_scale=5.0, cond=None, uncond="default", **kw):
    gens = make_generators(seeds)
    noise = draw_noise(gens, SHAPE)
    cond = text(len(seeds), 1) if cond is None else cond
    uncond = text(1, 2) if isinstance(uncond, str) else uncond
    scheduler = make_scheduler(sampler, schedule, SD_SCHEDULE)
    return denoise(unet, scheduler, noise, cond, uncond, steps=steps, cfg_scale=cfg_scale, generators=gens, **kw)


# --- the name table ------------------------------------------------------------------------------

def test_tables_cover_the_web_ui_names():
    assert SAMPLER_NAMES == WEB_UI_NAMES
    assert SCHEDULE_TYPES[0] == "Automatic"
    assert {"Automatic", "Karras", "Exponential", "Beta", "SGM Uniform"} <= set(SCHEDULE_TYPES)


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_table_matches_the_installed_diffusers(sampler):
    """Declared schedule support agrees with what the class's constructor really accepts."""
    skip_unavailable(sampler, "Uniform")
    spec = SAMPLERS[sampler]
    params = set(inspect.signature(scheduler_class(sampler).__init__).parameters)
    assert set(spec.kwargs) <= params
    assert spec.automatic in spec.schedules
    for schedule, kwargs in SCHEDULE_KWARGS.items():
        accepted = set(kwargs) <= params
        if schedule in spec.schedules:
            assert accepted, (sampler, schedule)
        elif not (sampler == "LCM" and schedule == "SGM Uniform"):  # LCM takes timestep_spacing, ignores it
            assert not accepted, (sampler, schedule)


@pytest.mark.parametrize("typed, schedule, expected", [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")),
    ("dpm++ 2m  karras", "Automatic", ("DPM++ 2M", "Karras")),
    ("DPM++ 2M SDE Exponential", "", ("DPM++ 2M SDE", "Exponential")),
    ("DPM++ SDE Karras", None, ("DPM++ SDE", "Karras")),
    ("DPM2 a Karras", None, ("DPM2 a", "Karras")),
    ("Euler a", None, ("Euler a", "Automatic")),
    ("euler A", None, ("Euler a", "Automatic")),
    (" EULER ", "sgm_uniform", ("Euler", "SGM Uniform")),
    ("DPM++2M", "karras", ("DPM++ 2M", "Karras")),
    ("k_euler_a", None, ("Euler a", "Automatic")),
    ("k_dpmpp_2m_ka", None, ("DPM++ 2M", "Karras")),
    ("Euler SGM Uniform", None, ("Euler", "SGM Uniform")),
    ("ddim", None, ("DDIM", "Automatic")),
    ("UniPC", "Exponential", ("UniPC", "Exponential")),
])
def test_resolve_sampler(typed, schedule, expected):
    assert resolve_sampler(typed, schedule) == expected


def test_unknown_sampler_lists_valid_names():
    with pytest.raises(ValueError) as err:
        resolve_sampler("DPM++ 7X")
    for name in SAMPLER_NAMES:
        assert name in str(err.value)
    assert "Karras" in str(err.value)
    with pytest.raises(ValueError, match="SGM Uniform"):
        resolve_sampler("Euler", "Polyexponential")


def test_bad_combinations_are_loud():
    with pytest.raises(ValueError, match="does not support schedule type 'Karras'"):
        resolve_sampler("DDIM", "Karras")
    with pytest.raises(ValueError, match="supports: Automatic"):
        make_scheduler("Euler a", "Karras", SD_SCHEDULE)
    with pytest.raises(ValueError, match="already says schedule type"):
        resolve_sampler("DPM++ 2M Karras", "Exponential")
    with pytest.raises(ValueError, match="lacks the training schedule"):
        make_scheduler("Euler", None, {"num_train_timesteps": 1000})


def test_make_scheduler_builds_fresh_configured_instances():
    first, second = (make_scheduler("DPM++ 2M SDE", "Karras", SD_SCHEDULE) for _ in range(2))
    assert first is not second
    assert first.config.algorithm_type == "sde-dpmsolver++" and first.config.use_karras_sigmas
    assert first.config.beta_schedule == "scaled_linear" and first.config.steps_offset == 1
    assert make_scheduler("DPM++ 3M SDE", None, SD_SCHEDULE).config.solver_order == 3
    assert make_scheduler("DPM++ 3M SDE", None, SD_SCHEDULE).config.use_exponential_sigmas  # Automatic, as the web UI
    assert make_scheduler("DPM++ 2M", None, SD_SCHEDULE).config.use_karras_sigmas
    assert not make_scheduler("DPM++ 2M", "Uniform", SD_SCHEDULE).config.use_karras_sigmas
    assert effective_schedule_type("dpm++ 2m") == "Karras" and effective_schedule_type("Euler") == "Uniform"
    assert make_scheduler("PLMS", None, SD_SCHEDULE).config.skip_prk_steps
    assert make_scheduler("DDIM", "SGM Uniform", SD_SCHEDULE).config.timestep_spacing == "trailing"
    assert "clip_sample" not in make_scheduler("Euler", None, SD_SCHEDULE).config  # filtered per class
    assert type(make_scheduler("DPM++ SDE", None, SD_SCHEDULE)).__name__ == "DPMSolverSinglestepScheduler"


def test_model_schedule_config_works():
    from t2i.models.ldm import NoiseScheduleConfig

    scheduler = make_scheduler("Euler", None, NoiseScheduleConfig().to_diffusers())
    assert scheduler.config.num_train_timesteps == NoiseScheduleConfig().num_train_timesteps


@pytest.mark.skipif(importlib.util.find_spec("scipy") is not None, reason="scipy is installed")
def test_missing_scipy_is_a_clear_error():
    with pytest.raises(ImportError, match="pip install scipy"):
        make_scheduler("LMS", None, SD_SCHEDULE)
    with pytest.raises(ImportError, match="pip install scipy"):
        make_scheduler("Euler", "Beta", SD_SCHEDULE)


# --- the loop on a tiny random UNet --------------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs(unet, sampler):
    skip_unavailable(sampler)
    latents = run(unet, sampler, [1, 2], steps=4)
    assert latents.shape == (2, *SHAPE) and latents.dtype == torch.float32
    assert torch.isfinite(latents).all()


@pytest.mark.parametrize("sampler", [s for s in SAMPLER_NAMES if "Karras" in SAMPLERS[s].schedules])
def test_karras_runs_and_changes_the_schedule(unet, sampler):
    skip_unavailable(sampler, "Karras")
    karras = run(unet, sampler, [1], schedule="Karras", steps=4)
    assert torch.isfinite(karras).all()
    uniform = run(unet, sampler, [1], schedule="Uniform", steps=4)
    assert not torch.allclose(karras, uniform)


@pytest.mark.parametrize("sampler, eta", [("Euler", 0.0), ("Euler a", 0.0), ("DPM++ 2M SDE", 0.0), ("DDIM", 1.0)])
def test_batch_equals_single_runs(unet, sampler, eta):
    """Per-image noise streams make image i of a batch the single run with seeds[i]. The UNet runs
    in float64 here: in float32 its batched and single outputs differ by ~1e-6 (BLAS blocking),
    which 4 steps at sigma ~ 15 with CFG 5 grow past 1e-5; an RNG mix-up would differ by O(1)."""
    import copy

    wide = copy.deepcopy(unet).double()
    seeds = [5, 6, 7]
    cond, uncond = text(3, 1), text(1, 2)  # one uncond broadcast over the batch
    batch = run(wide, sampler, seeds, cond=cond, uncond=uncond, eta=eta)
    for i, seed in enumerate(seeds):
        single = run(wide, sampler, [seed], cond=cond[i : i + 1], uncond=uncond, eta=eta)
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=0)


def test_seeds_and_eta_matter(unet):
    assert not torch.allclose(run(unet, "Euler a", [1]), run(unet, "Euler a", [2]))
    assert not torch.allclose(run(unet, "DDIM", [1], eta=1.0), run(unet, "DDIM", [1], eta=0.0))


def test_initial_noise_is_per_seed():
    batch = initial_noise([5, 6, 7], SHAPE)
    assert batch.shape == (3, *SHAPE)
    for i, seed in enumerate([5, 6, 7]):
        assert torch.equal(batch[i : i + 1], initial_noise([seed], SHAPE))
    assert torch.equal(initial_noise([5], SHAPE, dtype=torch.float16), initial_noise([5], SHAPE).half())


def test_cfg_scale_one_is_cond_only(unet):
    cond = text(2, 1)
    calls = []
    hook = unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        with_uncond = run(unet, "Euler", [1, 2], cond=cond, uncond=text(2, 2), cfg_scale=1.0)
        assert set(calls) == {2}  # no unconditional half in the UNet batch
        without = run(unet, "Euler", [1, 2], cond=cond, uncond=None, cfg_scale=7.0)
    finally:
        hook.remove()
    torch.testing.assert_close(with_uncond, without, atol=0, rtol=0)
    assert not torch.allclose(run(unet, "Euler", [1, 2], cond=cond, uncond=text(2, 2), cfg_scale=7.0), without)


def test_interrupt_stops_early(unet):
    seen = []

    def callback(i, total, latents):
        seen.append((i, total, latents.clone()))
        return "interrupt" if i == 1 else None

    latents = run(unet, "DPM++ 2M", [1], steps=6, callback=callback)
    assert [(i, total) for i, total, _ in seen] == [(0, 6), (1, 6)]
    assert torch.equal(latents, seen[-1][2])


def test_unet_in_another_dtype(unet):
    import copy

    wide = copy.deepcopy(unet).double()
    reference = run(unet, "Euler", [1], steps=4)
    latents = run(wide, "Euler", [1], steps=4)
    assert latents.dtype == torch.float32
    torch.testing.assert_close(latents, reference, atol=1e-3, rtol=1e-4)


# --- an analytic denoiser ------------------------------------------------------------------------

class ExactEps(torch.nn.Module):
    """The exact noise prediction for data concentrated on one point x0.

    It is called like the UNet: with `scale_model_input`'s output, which is x_t of the DDPM
    parameterization x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and a timestep t that may be
    fractional (Karras sigmas, DPM2's midpoints). diffusers maps sigma to t by interpolating
    log sigma linearly between training steps, so abar_t is read the same way here.
    """

    def __init__(self, x0: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.register_buffer("x0", x0)  # float32: the loop feeds a module its first tensor's dtype
        self.register_buffer("log_sigmas", 0.5 * torch.log((1 - alphas_cumprod.double()) / alphas_cumprod.double()))
        self.first_input = None

    def forward(self, sample, timestep, encoder_hidden_states=None):
        if self.first_input is None:
            self.first_input = sample.clone()
        t = torch.as_tensor(timestep, dtype=torch.float64, device=sample.device).clamp(0, len(self.log_sigmas) - 1)
        low = t.floor().long().clamp(max=len(self.log_sigmas) - 2)
        w = t - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]
        abar = torch.sigmoid(-2 * log_sigma)  # 1 / (1 + sigma^2)
        eps = (sample.double() - abar.sqrt() * self.x0.double()) / (1 - abar).sqrt()
        return types.SimpleNamespace(sample=eps.to(sample.dtype))


# set_alpha_to_one=True: DDIM and PLMS then end at abar = 1, i.e. on x0; with SD's False they stop
# at abar_0 = 1 - beta_0 and keep sqrt(beta_0) ~ 3% of noise, by design.
EXACT_SCHEDULE = {**SD_SCHEDULE, "set_alpha_to_one": True}
ANALYTIC_CASES = [(s, k) for s in SAMPLER_NAMES for k in SAMPLERS[s].schedules if k != "Beta"]


@pytest.mark.parametrize("sampler, schedule", ANALYTIC_CASES)
def test_samplers_land_on_the_data_point(sampler, schedule):
    """Deterministic samplers (Euler, Heun, LMS, DPM2, DPM++ 2M, DDIM, PLMS, UniPC) follow the ODE
    to x0 exactly; the ancestral/SDE ones and LCM also do, as their last step has no noise left."""
    skip_unavailable(sampler, schedule)
    x0 = 0.5 * torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    scheduler = make_scheduler(sampler, schedule, EXACT_SCHEDULE)
    model = ExactEps(x0, scheduler.alphas_cumprod)
    gens = make_generators([3])
    noise = draw_noise(gens, SHAPE)
    latents = denoise(model, scheduler, noise, text(1, 1), None, steps=20, cfg_scale=1.0, generators=gens)
    torch.testing.assert_close(latents, x0, atol=1e-5, rtol=0)
    # The model first sees the initial noise at unit scale (x_T ~ eps), whatever the parameterization.
    torch.testing.assert_close(model.first_input, noise, atol=0.05, rtol=0)
