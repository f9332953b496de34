"""Few-step generation (issue 16, item 1): the LCM math against diffusers' LCM and DDIM
schedulers and an analytic denoiser, the distillation recipe on a tiny model, and `fast`
through the pipeline, the infotext and the CLI."""
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from t2i.diffusion.lcm import (boundary_scalings, consistency_output, ddim_step, phase_edges, phase_output,
                               predicted_eps, predicted_x0, solver_timesteps)
from t2i.errors import ParamError
from t2i.pipelines.generation_params import Img2ImgParams, Txt2ImgParams

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                prediction_type="epsilon")


def test_scalings_and_grid_are_the_lcm_samplers():
    from diffusers import LCMScheduler

    scheduler = LCMScheduler(**SCHEDULE)
    for t in (0, 1, 19, 259, 999):
        c_skip, c_out = boundary_scalings(torch.tensor([t]))
        ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip.item() == pytest.approx(ref_skip, rel=1e-6, abs=1e-12)
        assert c_out.item() == pytest.approx(ref_out, rel=1e-6, abs=1e-12)
    assert boundary_scalings(torch.tensor([0])) == (torch.tensor([1.0]), torch.tensor([0.0]))  # f(x, 0) = x
    grid = solver_timesteps(1000, 50)
    assert grid[0] == 19 and grid[-1] == 999 and len(grid) == 50
    for steps in (1, 2, 4, 8):  # every timestep the sampler visits was distilled
        scheduler.set_timesteps(steps)
        assert set(scheduler.timesteps.tolist()) <= set(grid.tolist())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_step_equals_diffusers_ddim(prediction):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**{**SCHEDULE, "prediction_type": prediction}, timestep_spacing="trailing",
                              clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(50)
    alphas = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = 499
    expected = scheduler.step(out, t, x, eta=0.0).prev_sample
    a, a_prev = alphas[t], alphas[t - 20]
    got = ddim_step(predicted_x0(out, x, a, prediction), predicted_eps(out, x, a, prediction), a_prev)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class PointDenoiser(torch.nn.Module):
    """The exact epsilon-predictor when all data is one latent z*: eps = (x - sqrt(a) z*) / sqrt(1 - a).
    `wrong` adds a constant error (a student that has not learnt)."""

    def __init__(self, alphas, target, wrong=0.0):
        super().__init__()
        self.alphas, self.target, self.wrong = alphas, target, wrong
        self.weight = torch.nn.Parameter(torch.zeros(()))  # something to differentiate

    def forward(self, x, t, context):
        a = self.alphas[t].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt() + self.wrong + self.weight
        return SimpleNamespace(sample=eps)


def _point_setup(wrong, weighting="none", consistency="lcm"):
    from diffusers import DDPMScheduler

    from t2i.training.lcm import LCMOptimConfig, lcm_loss_fn

    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod.float()
    target = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    model = SimpleNamespace(encode_prompts=lambda prompts: torch.zeros(len(prompts), 3, 8),
                            scheduler_config=lambda: dict(SCHEDULE))
    latents = target.expand(8, -1, -1, -1).clone()
    cfg = LCMOptimConfig(batch_size=8, loss="l2", guidance_min=1.0, guidance_max=4.0, weighting=weighting,
                         consistency=consistency, solver_steps=40 if consistency == "phased" else 50)
    fn = lcm_loss_fn(model, PointDenoiser(alphas, target), latents, ["x"] * 8, cfg, "epsilon")
    student = PointDenoiser(alphas, target, wrong)
    return fn, student


@pytest.mark.parametrize("weighting,consistency", [("none", "lcm"), ("signal", "lcm"), ("none", "phased")])
def test_consistency_loss_vanishes_for_an_exact_denoiser_and_not_otherwise(weighting, consistency):
    fn, exact = _point_setup(0.0, weighting, consistency)
    loss, n = fn({"unet": exact}, 0, torch.Generator().manual_seed(0))
    assert n == 8 and loss.item() < 1e-8  # every trajectory leads to z*: f is consistent
    fn, off = _point_setup(0.3, weighting, consistency)
    loss, _ = fn({"unet": off}, 0, torch.Generator().manual_seed(0))
    assert loss.item() > 1e-6
    loss.backward()
    assert off.weight.grad is not None and off.weight.grad.abs() > 0  # gradients reach the student only


class RecordingDenoiser(PointDenoiser):
    """A PointDenoiser that keeps the timesteps it was called with."""

    def __init__(self, alphas, target, wrong=0.0):
        super().__init__(alphas, target, wrong)
        self.seen = []

    def forward(self, x, t, context):
        self.seen.append(t.clone())
        return super().forward(x, t, context)


def test_phase_edges_are_the_ddim_samplers_timesteps_and_each_phase_jumps_to_its_edge():
    from diffusers import DDIMScheduler

    assert phase_edges(1000, 4) == [999, 749, 499, 249]
    with pytest.raises(ValueError, match="must divide"):
        phase_edges(1000, 3)
    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False)
    for phases in (1, 2, 4, 8):
        scheduler.set_timesteps(phases)
        assert scheduler.timesteps.tolist() == phase_edges(1000, phases)  # DDIM at `phases` steps visits the edges
        assert set(phase_edges(1000, phases)) <= set(solver_timesteps(1000, 40).tolist())
    scheduler.set_timesteps(4)
    alphas = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    # a DDIM step from an edge is the phase function to the next edge; the last one lands on DDIM's final alpha
    torch.testing.assert_close(phase_output(out, x, alphas[749], alphas[499], "epsilon"),
                               scheduler.step(out, 749, x).prev_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(phase_output(out, x, alphas[249], scheduler.final_alpha_cumprod, "epsilon"),
                               scheduler.step(out, 249, x).prev_sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(phase_output(out, x, alphas[499], alphas[499], "v_prediction"), x)  # at its edge: x


def test_phased_loss_targets_the_teachers_step_at_an_edge_and_the_student_elsewhere():
    from diffusers import DDPMScheduler

    from t2i.training.lcm import LCMOptimConfig, lcm_loss_fn

    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod.float()
    target = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    model = SimpleNamespace(encode_prompts=lambda prompts: torch.zeros(len(prompts), 3, 8),
                            scheduler_config=lambda: dict(SCHEDULE))
    latents = target.expand(8, -1, -1, -1).clone()

    def loss_with(t_n, wrong_at):
        cfg = LCMOptimConfig(batch_size=8, loss="l2", guidance_min=1.0, guidance_max=1.0, consistency="phased",
                             solver_steps=40, focus_timesteps=(t_n,), focus_share=1.0)
        fn = lcm_loss_fn(model, PointDenoiser(alphas, target), latents, ["x"] * 8, cfg, "epsilon")
        student = WrongAt(alphas, target, wrong_at)
        return fn({"unet": student}, 0, torch.Generator().manual_seed(0))[0].item()

    # a student exact at t_n but wrong one grid step (25) lower: from 774 that step lands on the edge 749,
    # whose target is the teacher's step as it is, so nothing is wrong; from 724 (mid-phase, edge 499)
    # the target is the student's own jump from 699, which is wrong
    assert loss_with(774, 749) < 1e-10
    assert loss_with(724, 699) > 1e-4
    assert loss_with(774, 774) > 1e-4  # and a student wrong where it predicts is wrong at an edge too


class WrongAt(PointDenoiser):
    """A PointDenoiser that is off (by 0.3 in eps) only at timestep `wrong_at`."""

    def __init__(self, alphas, target, wrong_at):
        super().__init__(alphas, target)
        self.wrong_at = wrong_at

    def forward(self, x, t, context):
        out = super().forward(x, t, context).sample
        return SimpleNamespace(sample=out + 0.3 * (t == self.wrong_at).view(-1, 1, 1, 1))


def test_focus_timesteps_draw_the_sampler_points_and_keep_the_rest_uniform():
    from t2i.training.lcm import LCMOptimConfig, draw_timesteps

    grid = solver_timesteps(1000, 50)
    focus = (999, 759, 499, 259)
    only = draw_timesteps(grid, 64, torch.Generator().manual_seed(0),
                          LCMOptimConfig(focus_timesteps=focus, focus_share=1.0))
    assert set(only.tolist()) == set(focus)  # all four, nothing else
    half = draw_timesteps(grid, 64, torch.Generator().manual_seed(0),
                          LCMOptimConfig(focus_timesteps=focus, focus_share=0.5))
    assert set(half[:32].tolist()) <= set(focus) and len(set(half[32:].tolist()) - set(focus)) > 10
    assert set(half.tolist()) <= set(grid.tolist())
    # no focus: the original recipe's draw, generator state included (old runs resume identically)
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = draw_timesteps(grid, 16, g, LCMOptimConfig(focus_share=0.0))
    torch.testing.assert_close(plain, grid[torch.randint(0, len(grid), (16,), generator=ref)])
    assert torch.equal(torch.rand(2, generator=g), torch.rand(2, generator=ref))


def test_loss_with_full_focus_evaluates_the_student_only_at_the_focus_points():
    from diffusers import DDPMScheduler

    from t2i.training.lcm import LCMOptimConfig, lcm_loss_fn

    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod.float()
    target = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    model = SimpleNamespace(encode_prompts=lambda prompts: torch.zeros(len(prompts), 3, 8),
                            scheduler_config=lambda: dict(SCHEDULE))
    cfg = LCMOptimConfig(batch_size=32, loss="l2", guidance_min=1.0, guidance_max=1.0,
                         focus_timesteps=(999, 499), focus_share=1.0)
    fn = lcm_loss_fn(model, PointDenoiser(alphas, target), target.expand(8, -1, -1, -1).clone(), ["x"] * 8,
                     cfg, "epsilon")
    student = RecordingDenoiser(alphas, target, 0.3)
    fn({"unet": student}, 0, torch.Generator().manual_seed(0))
    called = torch.cat(student.seen).tolist()  # the target's t_{n-1}, then the prediction's t_n
    assert set(called) == {999, 499, 979, 479}
    assert called[32:].count(999) > 0 and called[32:].count(499) > 0


def test_focus_settings_are_checked():
    from t2i.training.lcm import LCMOptimConfig, LCMTrainConfig, check_settings, check_teacher

    with pytest.raises(ValueError, match="focus_timesteps is empty"):
        check_settings(LCMTrainConfig(optim=LCMOptimConfig(focus_share=0.5)))
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_settings(LCMTrainConfig(optim=LCMOptimConfig(focus_timesteps=(999,), focus_share=1.5)))
    check_settings(LCMTrainConfig(optim=LCMOptimConfig(focus_timesteps=(999, 759, 499, 259), focus_share=0.5)))
    teacher = SimpleNamespace(scheduler_config=lambda: dict(SCHEDULE))
    with pytest.raises(ValueError, match=r"\[750\] are not on the 50-point solver grid"):
        check_teacher(teacher, 50, (999, 750, 499))
    assert check_teacher(teacher, 50, (999, 759, 499, 259)) == "epsilon"
    with pytest.raises(ValueError, match=r"solver_steps \(50\) must be a multiple of optim.phases \(4\)"):
        check_settings(LCMTrainConfig(optim=LCMOptimConfig(consistency="phased", phases=4)))
    check_settings(LCMTrainConfig(optim=LCMOptimConfig(consistency="phased", phases=4, solver_steps=40)))


def test_consistency_output_at_zero_is_the_input():
    x = torch.randn(2, 4, 4, 4)
    out = consistency_output(torch.randn_like(x), x, torch.tensor([0, 0]), torch.tensor(0.9999), "epsilon")
    torch.testing.assert_close(out, x)


# ----------------------------------------------------------------------------- the recipe


@pytest.fixture(scope="module")
def tiny_lcm(tiny_model_dir, tmp_path_factory):
    """A 3-step LCM-LoRA of the tiny model (stopped after 2, resumed), and its run folder."""
    from t2i.training.finetune.config import LoraOptions
    from t2i.training.lcm import LCMOptimConfig, LCMTrainConfig, train_lcm
    from t2i.training.ldm import DataConfig

    out = tmp_path_factory.mktemp("lcm")
    cfg = LCMTrainConfig(teacher=str(tiny_model_dir), data=DataConfig(size=16),
                         lora=LoraOptions(rank=4, conv_rank=2, targets="transformer"),
                         optim=LCMOptimConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, log_every=0,
                                              checkpoint_every=1, sample_every=0, encode_batch_size=8),
                         name="tiny_lcm", sample_prompts=("a red circle",), sample_steps=2)
    train_lcm(cfg, out, stop_after=2)
    assert not (out / "tiny_lcm.safetensors").exists()  # not finished yet
    train_lcm(cfg, out, resume=True)
    return out / "tiny_lcm.safetensors", out


def test_recipe_writes_a_kohya_lcm_lora(tiny_lcm):
    from safetensors import safe_open

    from t2i.extra_networks.lora import read_lora

    path, out = tiny_lcm
    lora = read_lora(path)
    assert len(lora) > 0
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith("lora_unet_") for k in keys)  # UNet only, kohya names
    assert any("resnets" in k for k in keys) and any("attentions" in k for k in keys)  # LoCon + transformer
    assert "LCM-LoRA" in meta["ss_training_comment"]
    assert (out / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    assert list((out / "samples").glob("*.png"))


def test_export_script_writes_the_runs_lora_at_a_chosen_strength_and_precision(tiny_lcm, tmp_path):
    from safetensors.torch import load_file

    from t2i.checkpoints.safe_load import read_safetensors_header

    trained, run = tiny_lcm
    out = tmp_path / "half.safetensors"
    done = subprocess.run([sys.executable, "benchmarks/lcm_export.py", "--run", str(run), "--out", str(out),
                           "--strength", "0.5", "--half"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    full, half = load_file(trained), load_file(out)
    assert full.keys() == half.keys() and all(t.dtype == torch.float16 for t in half.values() if t.ndim > 0)
    for key, tensor in full.items():
        factor = 0.5 if key.endswith("lora_up.weight") else 1.0  # every layer's change halved
        torch.testing.assert_close(half[key].float(), tensor * factor, rtol=2e-3, atol=1e-5)
    assert '"scale": 0.5' in read_safetensors_header(out)[1]["t2i_lcm"]
    assert not list(tmp_path.glob("tmp*"))  # the diffusers copy went with its temporary folder
    missing = subprocess.run([sys.executable, "benchmarks/lcm_export.py", "--run", str(tmp_path), "--out",
                              str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no lcm.ckpt" in missing.stderr and "Traceback" not in missing.stderr


def test_prompt_accuracy_fast_keeps_the_flags_given_as_generate_does():
    def header(*flags):
        done = subprocess.run([sys.executable, "benchmarks/prompt_accuracy.py", "--n", "2", "--threads", "1", "--fast",
                               *flags], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        return lines[0], lines[-1].split("|")[1].strip()  # the settings line, the row's CFG scale

    settings, cfg = header()
    assert "LCM (Automatic), 4 steps" in settings and cfg == "1"
    settings, cfg = header("--steps", "8")  # asked for: kept (it had silently run 4 steps)
    assert "LCM (Automatic), 8 steps" in settings and cfg == "1"


def test_a_phased_lora_samples_with_ddim_at_its_phases_under_fast(tiny_model_dir, tiny_loaded, tmp_path):
    from safetensors import safe_open

    from t2i.pipelines.fast import apply_fast
    from t2i.training.finetune.config import LoraOptions
    from t2i.training.lcm import LCMOptimConfig, LCMTrainConfig, train_lcm
    from t2i.training.ldm import DataConfig

    cfg = LCMTrainConfig(teacher=str(tiny_model_dir), data=DataConfig(size=8),
                         lora=LoraOptions(rank=2, conv_rank=0, targets="transformer"),
                         optim=LCMOptimConfig(steps=2, batch_size=4, lr=1e-3, warmup_steps=0, log_every=0,
                                              checkpoint_every=0, sample_every=0, encode_batch_size=8,
                                              consistency="phased", phases=2, solver_steps=10),
                         name="tiny_pcm", sample_prompts=("a red circle",))
    train_lcm(cfg, tmp_path)
    lora = tmp_path / "tiny_pcm.safetensors"
    with safe_open(str(lora), "pt") as f:
        meta = f.metadata()
    assert "DDIM, SGM Uniform, exactly 2 steps" in meta["ss_training_comment"]
    fast = apply_fast(Txt2ImgParams(prompt="x", fast_lora=str(lora)), tiny_loaded)
    assert (fast.steps, fast.sampler, fast.scheduler, fast.cfg_scale) == (2, "DDIM", "SGM Uniform", 1.0)
    mine = apply_fast(Txt2ImgParams(prompt="x", fast_lora=str(lora), sampler="Euler"), tiny_loaded)
    assert (mine.steps, mine.sampler) == (2, "Euler")  # asked for: kept


def test_recipe_refuses_what_it_cannot_distil(tmp_path):
    from t2i.training.lcm import LCMOptimConfig, LCMTrainConfig, check_settings, check_teacher

    with pytest.raises(ValueError, match="guidance_min"):
        check_settings(LCMTrainConfig(optim=LCMOptimConfig(guidance_min=8.0, guidance_max=4.0)))
    with pytest.raises(ValueError, match="plain file name"):
        check_settings(LCMTrainConfig(name="a/b"))
    xl = SimpleNamespace(text_encoder_2=object(), scheduler_config=lambda: dict(SCHEDULE))
    with pytest.raises(ValueError, match="SDXL"):
        check_teacher(xl, 50)
    odd = SimpleNamespace(scheduler_config=lambda: dict(SCHEDULE))
    with pytest.raises(ValueError, match="must divide"):
        check_teacher(odd, 30)


def test_a_teacher_other_than_the_base_gets_its_own_prompts_and_the_student_the_bases():
    """base != teacher: the teacher's UNet sees the teacher's text states, the student the base's."""
    from diffusers import DDPMScheduler

    from t2i.training.lcm import LCMOptimConfig, lcm_loss_fn

    alphas = DDPMScheduler(**SCHEDULE).alphas_cumprod.float()
    target = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    base = SimpleNamespace(encode_prompts=lambda prompts: torch.zeros(len(prompts), 3, 8),
                           scheduler_config=lambda: dict(SCHEDULE))
    teacher_states = lambda prompts: torch.ones(len(prompts), 5, 8)  # noqa: E731  (another shape, to tell apart)
    teacher, student = ContextRecorder(alphas, target), ContextRecorder(alphas, target)
    cfg = LCMOptimConfig(batch_size=4, loss="l2", guidance_min=2.0, guidance_max=2.0)
    fn = lcm_loss_fn(base, teacher, target.expand(4, -1, -1, -1).clone(), ["x"] * 4, cfg, "epsilon", teacher_states)
    loss, _ = fn({"unet": student}, 0, torch.Generator().manual_seed(0))
    assert [c.shape[1:] for c in teacher.contexts] == [(5, 8)]  # uncond and cond in one call, both the teacher's
    assert torch.equal(teacher.contexts[0], torch.ones(8, 5, 8))
    assert student.contexts and all(c.shape[1:] == (3, 8) and not c.any() for c in student.contexts)
    assert loss.item() < 1e-8  # both exact: still consistent


class ContextRecorder(PointDenoiser):
    def __init__(self, alphas, target):
        super().__init__(alphas, target)
        self.contexts = []

    def forward(self, x, t, context):
        self.contexts.append(context.clone())
        return super().forward(x, t, context)


def test_recipe_distils_a_longer_trained_teacher_into_a_lora_for_the_base(tiny_model_dir, tmp_path):
    """`base`: the LoRA goes on the base and learns from a teacher that shares its VAE; a teacher
    with another VAE is refused before training."""
    from safetensors import safe_open

    from t2i.checkpoints.diffusers_folder import save_ldm_folder
    from t2i.checkpoints.registry import load_model
    from t2i.extra_networks.lora import read_lora
    from t2i.models.ldm import LatentDiffusion
    from t2i.runtime import Runtime
    from t2i.training.finetune.config import LoraOptions
    from t2i.training.lcm import LCMOptimConfig, LCMTrainConfig, train_lcm
    from t2i.training.ldm import DataConfig
    from conftest import tiny_ldm_config

    teacher = load_model(tiny_model_dir, Runtime.auto("full", "cpu")).model
    with torch.no_grad():  # "more training": other UNet and text encoder weights, the same VAE
        for p in [*teacher.unet.parameters(), *teacher.text_encoder.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
    save_ldm_folder(teacher, tmp_path / "teacher")
    torch.manual_seed(5)
    save_ldm_folder(LatentDiffusion(tiny_ldm_config()), tmp_path / "stranger")  # another VAE

    def config(teacher_dir):
        return LCMTrainConfig(teacher=str(teacher_dir), base=str(tiny_model_dir), data=DataConfig(size=8),
                              lora=LoraOptions(rank=2, targets="attention"),
                              optim=LCMOptimConfig(steps=2, batch_size=2, lr=1e-2, warmup_steps=0, log_every=0,
                                                   checkpoint_every=0, sample_every=0, encode_batch_size=8),
                              name="from_teacher", sample_prompts=("a red circle",), sample_steps=2)

    with pytest.raises(ValueError, match="latent space"):
        train_lcm(config(tmp_path / "stranger"), tmp_path / "refused")
    assert not (tmp_path / "refused" / "lcm.ckpt").exists()
    model = train_lcm(config(tmp_path / "teacher"), tmp_path / "run")
    written = tmp_path / "run" / "from_teacher.safetensors"
    assert len(read_lora(written)) > 0
    with safe_open(str(written), "pt") as f:
        meta = json.loads(f.metadata()["t2i_lcm"])
    assert meta["teacher"] == str(tmp_path / "teacher") and meta["base"] == str(tiny_model_dir)
    base_text = load_model(tiny_model_dir, Runtime.auto("full", "cpu")).model.text_encoder.state_dict()
    assert all(torch.equal(v, base_text[k]) for k, v in model.text_encoder.state_dict().items())  # the base's


# ----------------------------------------------------------------------------- fast


def test_fast_fills_only_what_was_left_at_its_default(tiny_loaded, tiny_lcm):
    from t2i.pipelines.fast import apply_fast

    lora, _ = tiny_lcm
    fast = apply_fast(Txt2ImgParams(prompt="x", fast_lora=str(lora)), tiny_loaded)
    assert (fast.steps, fast.sampler, fast.cfg_scale, fast.fast) == (4, "LCM", 1.0, True)
    assert fast.loras == {str(lora): 1.0}
    assert apply_fast(fast, tiny_loaded) == fast  # idempotent
    mine = apply_fast(Txt2ImgParams(prompt="x", fast=True, fast_lora=str(lora), steps=6, cfg_scale=1.5),
                      tiny_loaded)
    assert (mine.steps, mine.sampler, mine.cfg_scale) == (6, "LCM", 1.5)
    assert apply_fast(Txt2ImgParams(prompt="x"), tiny_loaded) == Txt2ImgParams(prompt="x")  # off: untouched
    img = apply_fast(Img2ImgParams(prompt="x", fast=True, fast_lora=str(lora)), tiny_loaded)
    assert (img.steps, img.sampler) == (4, "LCM")


def test_fast_on_another_model_needs_a_lora(tiny_loaded, tmp_path):
    from t2i.pipelines.fast import apply_fast

    with pytest.raises(ParamError, match="--fast-lora FILE"):
        apply_fast(Txt2ImgParams(prompt="x", fast=True), tiny_loaded)
    with pytest.raises(ParamError, match="no such file"):
        apply_fast(Txt2ImgParams(prompt="x", fast_lora=str(tmp_path / "none.safetensors")), tiny_loaded)


def test_fast_generation_applies_the_lora_and_reads_back(tiny_loaded, tiny_lcm):
    from t2i.pipelines.infotext import params_from_infotext
    from t2i.pipelines.txt2img import txt2img

    lora, _ = tiny_lcm
    fast = txt2img(tiny_loaded, Txt2ImgParams(prompt="a red circle", seed=5, fast_lora=str(lora)))
    plain = txt2img(tiny_loaded, Txt2ImgParams(prompt="a red circle", seed=5, steps=4, sampler="LCM", cfg_scale=1.0))
    info = fast.infotexts[0]
    assert "Steps: 4" in info and "Sampler: LCM" in info and "Fast: True" in info and "tiny_lcm:" in info
    assert fast.images[0].tobytes() != plain.images[0].tobytes()  # the LoRA changed the weights
    again = params_from_infotext(info, Txt2ImgParams)
    assert again.fast and again.steps == 4 and again.sampler == "LCM"
    # the LoRA is merged for the generation only
    after = txt2img(tiny_loaded, Txt2ImgParams(prompt="a red circle", seed=5, steps=4, sampler="LCM", cfg_scale=1.0))
    assert after.images[0].tobytes() == plain.images[0].tobytes()


def test_cli_fast_with_another_model_is_one_clear_line(tiny_model_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", "generate", "x", "--fast", "--model",
                          str(tiny_model_dir), "--outdir", str(tmp_path), "--threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("t2i generate: error: --fast needs an LCM-LoRA")
    assert "Traceback" not in out.stderr


def test_bundled_model_ships_its_fast_lora():
    from safetensors import safe_open

    from t2i.extra_networks.lora import read_lora
    from t2i.pipelines.fast import bundled_fast_lora

    path = bundled_fast_lora()
    assert path.is_file(), "the bundled model's LCM-LoRA (assets/default_model/lcm_lora.safetensors) is missing"
    assert path.stat().st_size < 2**21 and len(read_lora(path)) > 0  # small: rank 16, half precision (1.6 MB)
    with safe_open(str(path), "pt") as f:
        assert "LCM-LoRA" in f.metadata()["ss_training_comment"]


def test_cli_fast_with_the_bundled_model_makes_checked_images_that_read_back(tmp_path):
    """`t2i generate PROMPT --fast` with the bundled model: 4 LCM steps at CFG 1 with the shipped
    LoRA, images the shapes checker passes, an infotext that says so and reproduces the image."""
    import numpy as np
    from PIL import Image

    from t2i.evaluate.shapes_checker import check
    from t2i.metadata import parse_infotext, read_infotext

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=300)

    prompt = "a red circle"
    out = cli("generate", prompt, "--fast", "--seed", 11, "--batch-size", 2, "--outdir", tmp_path / "a",
              "--threads", 1)
    assert out.returncode == 0, out.stderr
    paths = sorted((tmp_path / "a").glob("*.png"))
    assert len(paths) == 2
    for path in paths:
        assert check(Image.open(path).convert("RGB"), prompt).correct, path
    info = parse_infotext(read_infotext(paths[0]))
    assert (info["Steps"], info["Sampler"], info["CFG scale"], info["Fast"]) == ("4", "LCM", "1", "True")
    assert "lcm_lora:" in info["Lora hashes"]
    again = cli("generate", "--infotext", paths[0], "--outdir", tmp_path / "b", "--threads", 1)
    assert again.returncode == 0, again.stderr
    (copy,) = (tmp_path / "b").glob("*.png")
    assert parse_infotext(read_infotext(copy))["Fast"] == "True"
    # the same image; batch 1 against the first of a batch of 2, so float rounding may move a level
    diff = np.abs(np.asarray(Image.open(copy), dtype=int) - np.asarray(Image.open(paths[0]), dtype=int))
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_api_t2i_fast_with_the_bundled_model(tmp_path):
    """The REST API's `t2i_fast` key: the same settings as `--fast` (the schema field's API name)."""
    import json

    import httpx

    from api_helpers import Server

    server = Server(tmp_path)
    try:
        answer = httpx.post(server.url + "/sdapi/v1/txt2img", timeout=300,
                            json={"prompt": "a red circle", "seed": 11, "t2i_fast": True})
        assert answer.status_code == 200, answer.text
        info = json.loads(answer.json()["info"])
        assert info["steps"] == 4 and info["sampler_name"] == "LCM" and info["cfg_scale"] == 1.0
        assert "Fast: True" in info["infotexts"][0] and "lcm_lora:" in info["infotexts"][0]
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
