"""Recipe: latent consistency distillation of a latent diffusion model into an LCM-LoRA (`family: lcm`).

Latent consistency distillation (Luo et al. 2023, "Latent Consistency Models", Algorithm 1) as
LCM-LoRA trains it (Luo et al. 2023, "LCM-LoRA"): the teacher is the model itself, the student
the same model with trainable LoRA layers, and the consistency function's formulas
(t2i.diffusion.lcm) are the LCM sampler's. One step, for a batch of the data's latents z0:

1. a solver grid point t_n (every k = 1000 / 50 timesteps; uniform, or a share of the batch at the
   sampler's timesteps: `optim.focus_timesteps`) and t_{n-1} = t_n - k (0 at the end);
   z_t = sqrt(a_t) z0 + sqrt(1 - a_t) noise;
2. the teacher's classifier-free guided DDIM step from t_n to t_{n-1}, at a CFG scale drawn from
   [guidance_min, guidance_max] (web UI convention: 1 = no guidance);
3. target = f_student(z_{t-1}, t_{n-1}) without gradients (the LoRA variant's target network is
   the online student, as in diffusers' LCM-LoRA script; `optim.ema_decay` > 0 averages the LoRA
   weights that are saved);
4. loss = pseudo-Huber (or L2) between f_student(z_t, t_n) and the target.

With `optim.consistency: phased` f is instead the DDIM jump to the lower edge of t_n's phase
(t2i.diffusion.lcm: one phase per sampling step), and where the teacher's step lands on that edge
its result is the target as it is (the phase's boundary condition).

The guidance is baked in, with no guidance input to the UNet (a LoRA cannot add one), so the
result samples at CFG scale 1 (one UNet call per step) with the LCM sampler, or a phased LoRA with
DDIM at its phases; the LoRA's metadata (`t2i_lcm`) names the sampler, and `--fast` reads it.

Works for any model `load_model` reads with one text encoder (the bundled model, t2i folders, SD
1.x/2.x single files and diffusers folders); data: the `shapes` set or a folder of captioned
images (`data:` as in the LDM recipe). Outputs in `outdir`: lcm.ckpt (resumable), sample grids
in samples/ (that sampler, CFG 1), and when done NAME.safetensors (every layer's change times
`strength`), a kohya-format LoRA (the
web UI, ComfyUI, diffusers' load_lora_weights and t2i's `<lora:NAME:1>` / `--fast-lora` read it),
plus diffusers/pytorch_lora_weights.safetensors (t2i.training.finetune.lora writes both).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from t2i.checkpoints.registry import load_model
from t2i.config import BatchSize, LearningRate, Seed, Steps, at_least, between, to_dict
from t2i.data.cache import load_cache, save_cache
from t2i.data.images import load_image_source
from t2i.diffusion.lcm import (SOLVER_STEPS, consistency_output, ddim_step, phase_edges, phase_output, predicted_eps,
                               predicted_x0, solver_timesteps)
from t2i.diffusion.samplers import make_scheduler
from t2i.diffusion.sampling import denoise, draw_noise, make_generators
from t2i.metadata import write_png
from t2i.models.common import to_pil_images
from t2i.outputs import make_grid
from t2i.runtime import Runtime
from t2i.training.finetune.config import LoraOptions
from t2i.training.finetune.lora import add_lora, save_lora
from t2i.training.ldm import DataConfig
from t2i.training.runs import save_run_config
from t2i.training.trainer import OptimConfig, Trainer

LOSSES = ("huber", "l2")


def _default_lora() -> LoraOptions:
    # every linear layer of the transformer blocks and the 3x3 convolutions (LoCon): LCM-LoRA
    # targets attention, feed-forward, projections and the ResNet convolutions
    return LoraOptions(rank=16, conv_rank=16, targets="transformer")


@dataclass
class LCMOptimConfig(OptimConfig):
    steps: Steps = 2000
    batch_size: BatchSize = 32
    lr: LearningRate = 1e-3
    warmup_steps: Steps = 50
    lr_schedule: str = "constant"
    # the teacher's CFG scale per sample, drawn uniformly from this range (web UI convention)
    guidance_min: Annotated[float, between(1.0, 30.0)] = 3.0
    guidance_max: Annotated[float, between(1.0, 30.0)] = 7.0
    solver_steps: Annotated[int, between(2, 1000)] = SOLVER_STEPS  # the LCM sampler's original_inference_steps
    loss: Literal["huber", "l2"] = "huber"
    huber_c: Annotated[float, at_least(0.0)] = 0.001
    # "none": every grid point counts alike (the published recipe); "signal": the distance of
    # sqrt(a_t) * f, i.e. as the error shows in the noisy latent. For schedules whose last
    # timesteps keep almost no signal (the bundled model's linear betas: a_999 = 4e-5, where an
    # x0 estimate divides the noise error by 0.006), the highest timesteps otherwise dominate the
    # loss with errors the LCM sampler mostly discards (it re-noises x0 right away).
    # "edge" (phased only): the distance at the phase's edge divided by sqrt(alpha_bar) there, i.e. in
    # units of x0, so that the noisy early phases, whose edges keep little signal, still count
    weighting: Literal["none", "signal", "edge"] = "none"
    # `focus_share` of each batch draws t_n from `focus_timesteps` (solver grid points) instead of
    # uniformly from the grid. Why: an n-step LCM sampler evaluates the consistency function only
    # at its n timesteps (4 steps of the 50-point grid: 999, 759, 499, 259), while uniform draws
    # spend 46 of every 50 samples elsewhere. The rest of the batch stays uniform, so the
    # consistency chain (each target is the student one grid point lower) is still trained
    # everywhere: with focus_share 1 the bundled model's LoRA collapsed (92% -> 34% on a selection
    # set), and 0.5 showed no gain over uniform draws (BENCHMARKS.md, "Few-step generation").
    focus_timesteps: tuple[int, ...] = ()
    focus_share: Annotated[float, between(0.0, 1.0)] = 0.0
    encode_batch_size: BatchSize = 64
    # "lcm": the consistency function maps to x0 and samples with the LCM sampler (any step count);
    # "phased": one phase per sampling step, each mapped to its lower edge, sampled with DDIM at
    # exactly `phases` steps (t2i.diffusion.lcm). solver_steps must then be a multiple of phases,
    # so every edge is a grid point (4 phases: solver_steps 40, k = 25).
    consistency: Literal["lcm", "phased"] = "lcm"
    phases: Annotated[int, between(1, 50)] = 4


@dataclass
class LCMTrainConfig:
    teacher: str = "default"  # "default" (the bundled model), a t2i model folder, an SD file or diffusers folder
    # the model the LoRA is trained on and applies to; "" = the teacher itself (LCM-LoRA's recipe). Another
    # model here learns from a teacher that shares its latent space (the same VAE), e.g. a longer-trained
    # copy of it: the LoRA then carries the teacher's gains as well as the few-step sampling
    base: str = ""
    resolution: Annotated[int, between(0, 16384)] = 0  # training image size; 0: the teacher's native size
    data: DataConfig = field(default_factory=lambda: DataConfig(size=20_000))
    lora: LoraOptions = field(default_factory=_default_lora)
    optim: LCMOptimConfig = field(default_factory=LCMOptimConfig)
    seed: Seed = 0
    name: str = "lcm_lora"  # the LoRA file: OUTDIR/NAME.safetensors
    sample_prompts: tuple[str, ...] = ()
    sample_steps: Annotated[int, between(1, 50)] = 4
    # every layer's change in the written LoRA is multiplied by this, so `--fast` (weight 1) applies
    # it: a distilled LoRA can overshoot at full strength (the bundled model's: 0.8)
    strength: Annotated[float, between(0.0, 4.0)] = 1.0


def _teacher_path(spec: str) -> str | None:
    return None if spec in ("", "default") else spec


def load_teacher(cfg: LCMTrainConfig):
    """The model `cfg.teacher` names, in float32."""
    return load_model(_teacher_path(cfg.teacher), Runtime.auto("full")).model


def has_own_base(cfg: LCMTrainConfig) -> bool:
    # "" and "default" both name the bundled model as teacher: compare what they load
    return cfg.base != "" and _teacher_path(cfg.base) != _teacher_path(cfg.teacher)


def load_base(cfg: LCMTrainConfig, teacher=None):
    """The model the LoRA is trained on, in float32: `cfg.base`, or the teacher (`teacher` when it is
    loaded already)."""
    if has_own_base(cfg):
        return load_model(_teacher_path(cfg.base), Runtime.auto("full")).model
    return teacher if teacher is not None else load_teacher(cfg)


def check_same_latent_space(base, teacher) -> None:
    """A teacher that is not the base must denoise the base's latents on the base's noise schedule:
    the same VAE weights (so the same latent space and scaling) and the same training schedule."""
    if base.scheduler_config() != teacher.scheduler_config():
        raise ValueError("the teacher and the base have different noise schedules (scheduler configs); "
                         "distil from a teacher trained from the base, or leave `base` empty")
    ours, theirs = base.vae.state_dict(), teacher.vae.state_dict()
    same = ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    if not same or base.config.scaling_factor != teacher.config.scaling_factor:
        raise ValueError("the teacher and the base do not share a latent space (their VAEs or scaling factors "
                         "differ): a teacher for another base must keep the base's VAE (t2i's LDM recipe: "
                         "vae_from); or leave `base` empty")


def check_settings(cfg: LCMTrainConfig) -> None:
    """Mistakes found before the teacher is loaded."""
    o = cfg.optim
    if o.loss not in LOSSES:
        raise ValueError(f"optim.loss must be one of {', '.join(LOSSES)}, got {o.loss!r}")
    if o.guidance_min > o.guidance_max:
        raise ValueError(f"optim.guidance_min ({o.guidance_min}) must not exceed optim.guidance_max ({o.guidance_max})")
    if o.focus_share > 0 and not o.focus_timesteps:
        raise ValueError(f"optim.focus_share is {o.focus_share} but optim.focus_timesteps is empty: list the "
                         "sampler's timesteps (4-step LCM: [999, 759, 499, 259]) or set focus_share: 0")
    if not 0.0 <= o.focus_share <= 1.0:
        raise ValueError(f"optim.focus_share must be between 0 and 1, got {o.focus_share}")
    if o.weighting == "edge" and o.consistency != "phased":
        raise ValueError("optim.weighting: edge is for consistency: phased; LCM's distance is in x0 units already "
                         "(use none or signal)")
    if o.consistency == "phased" and o.solver_steps % o.phases:
        raise ValueError(f"optim.solver_steps ({o.solver_steps}) must be a multiple of optim.phases ({o.phases}) with "
                         f"consistency: phased, so every phase edge is a solver grid point (4 phases: solver_steps 40)")
    if not cfg.name or "/" in cfg.name or "\\" in cfg.name:
        raise ValueError(f"name must be a plain file name (no folders), got {cfg.name!r}")


def check_focus(focus_timesteps: tuple[int, ...], num_train_timesteps: int, solver_steps: int) -> None:
    """Focus timesteps must be points of the solver grid: the distillation only ever steps from a
    grid point to the one below, so another timestep would have no target."""
    grid = set(solver_timesteps(num_train_timesteps, solver_steps).tolist())
    off = [t for t in focus_timesteps if t not in grid]
    if off:
        k = num_train_timesteps // solver_steps
        raise ValueError(f"optim.focus_timesteps {off} are not on the {solver_steps}-point solver grid "
                         f"({k - 1}, {2 * k - 1}, ..., {num_train_timesteps - 1}, every {k}); the 4-step "
                         "LCM sampler's are 999, 759, 499, 259 for 1000 training timesteps")


def draw_timesteps(grid: torch.Tensor, n: int, generator: torch.Generator, cfg: LCMOptimConfig) -> torch.Tensor:
    """n solver grid points t_n for one batch: round(focus_share * n) from cfg.focus_timesteps, the rest
    uniform over `grid`. With no focus, the draw (and the generator's state) is the original recipe's."""
    m = round(cfg.focus_share * n) if cfg.focus_timesteps else 0
    uniform = grid[torch.randint(0, len(grid), (n - m,), generator=generator)]
    if not m:
        return uniform
    focus = torch.tensor(cfg.focus_timesteps, dtype=grid.dtype)
    return torch.cat([focus[torch.randint(0, len(focus), (m,), generator=generator)], uniform])


def check_teacher(model, solver_steps: int, focus_timesteps: tuple[int, ...] = ()) -> str:
    """The teacher's prediction type; ValueError for what this recipe cannot distil."""
    if getattr(model, "text_encoder_2", None) is not None:
        raise ValueError("LCM distillation here takes models with one text encoder (SD 1.x/2.x, t2i's own); "
                         "SDXL's added size conditions are not supported")
    schedule = model.scheduler_config()
    prediction = schedule.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"the teacher predicts {prediction!r}; LCM distillation takes epsilon or v_prediction")
    if schedule["num_train_timesteps"] % solver_steps:
        raise ValueError(f"optim.solver_steps {solver_steps} must divide the teacher's "
                         f"{schedule['num_train_timesteps']} training timesteps")
    check_focus(focus_timesteps, schedule["num_train_timesteps"], solver_steps)
    return prediction


@torch.no_grad()
def encode_latents(model, images_uint8: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Scaled latents (posterior means x scaling factor) of (N, H, W, 3) uint8 images, float32 on the CPU."""
    device = next(model.vae.parameters()).device
    out = []
    for i in range(0, len(images_uint8), batch_size):
        x = images_uint8[i:i + batch_size].permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
        out.append(model.encode_images(x, sample=False).float().cpu())
    return torch.cat(out)


def cached_latents(model, cfg: LCMTrainConfig, cache_dir: Path) -> tuple[torch.Tensor, list[str]]:
    """(scaled latents, captions) of the training data, encoded once per (encoding model, data, size)."""
    encoder = _teacher_path(cfg.base if has_own_base(cfg) else cfg.teacher)  # the model whose VAE encodes
    stamp = Path(encoder).stat().st_mtime_ns if encoder and Path(encoder).exists() else 0
    resolution = cfg.resolution or model.config.resolution
    key = f"{Path(encoder).resolve() if encoder else 'default'}@{stamp}|{to_dict(cfg.data)}|r{resolution}"
    path = cache_dir / "lcm_latents.pt"
    state = load_cache(path, lambda s: isinstance(s, dict) and s.get("key") == key)
    if state is not None:
        return state["latents"], list(state["captions"])
    if resolution % model.vae_scale_factor:
        raise ValueError(f"resolution {resolution} must be a multiple of the teacher's VAE factor {model.vae_scale_factor}")
    source = load_image_source(cfg.data, resolution, cache_dir=cache_dir)
    latents = encode_latents(model, source.images, cfg.optim.encode_batch_size)
    save_cache({"key": key, "latents": latents, "captions": list(source.captions)}, path)
    return latents, list(source.captions)


def _distance(a: torch.Tensor, b: torch.Tensor, cfg: LCMOptimConfig, weight: torch.Tensor) -> torch.Tensor:
    """Mean distance of `weight * a` and `weight * b` (weight broadcasts per sample)."""
    a, b = weight * a.float(), weight * b.float()
    if cfg.loss == "l2":
        return F.mse_loss(a, b)
    # pseudo-Huber (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models")
    return (torch.sqrt((a - b) ** 2 + cfg.huber_c**2) - cfg.huber_c).mean()


def lcm_loss_fn(model, teacher_unet, latents: torch.Tensor, captions: list[str], cfg: LCMOptimConfig,
                prediction_type: str, teacher_prompts=None):
    """The Trainer's loss: one consistency distillation step (see the module docstring).
    `teacher_prompts`: the teacher's own prompt encoder when it is not `model` (another base)."""
    alphas = torch.tensor(_alphas_cumprod(model), dtype=torch.float32)
    grid = solver_timesteps(len(alphas), cfg.solver_steps)
    k = len(alphas) // cfg.solver_steps
    phased = cfg.consistency == "phased"
    if phased:
        edges = torch.tensor(phase_edges(len(alphas), cfg.phases))
        # DDIM's level below the first training timestep (where its last step lands): appended, so
        # that index -1, the timestep below the last phase's edge, reads it
        final_alpha = 1.0 if model.scheduler_config().get("set_alpha_to_one", True) else alphas[0].item()
        alphas = torch.cat([alphas, torch.tensor([final_alpha])])
    encode_for_teacher = teacher_prompts or model.encode_prompts
    with torch.no_grad():
        empty = encode_for_teacher([""])  # (1, T, D): the teacher's unconditional context

    def loss_fn(modules, step, generator):
        unet = modules["unet"]
        device = next(unet.parameters()).device
        n = cfg.batch_size
        idx = torch.randint(0, len(latents), (n,), generator=generator)
        z0 = latents[idx].to(device)
        t = draw_timesteps(grid, n, generator, cfg)
        t_prev = t - k if phased else (t - k).clamp(min=0)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        scale = cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(n, generator=generator)
        shape = (n, 1, 1, 1)
        a, a_prev = alphas[t].view(shape).to(device), alphas[t_prev].view(shape).to(device)
        w = scale.view(shape).to(device)
        t, t_prev = t.to(device), t_prev.to(device)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with torch.no_grad():
            batch_captions = [captions[i] for i in idx.tolist()]
            cond = model.encode_prompts(batch_captions).to(device)  # the student's
            teacher_cond = cond if teacher_prompts is None else teacher_prompts(batch_captions).to(device)
            uncond = empty.to(device).expand_as(teacher_cond)
            out = teacher_unet(torch.cat([z_t, z_t]), torch.cat([t, t]),
                               torch.cat([uncond, teacher_cond])).sample.float()
            out_u, out_c = out.chunk(2)
            x0_u, x0_c = (predicted_x0(o, z_t, a, prediction_type) for o in (out_u, out_c))
            eps_u, eps_c = (predicted_eps(o, z_t, a, prediction_type) for o in (out_u, out_c))
            z_prev = ddim_step(x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u), a_prev)
            if phased:
                # the largest edge below t (-1: the clean end); a teacher step that lands on it is the target as it is
                edge = torch.cat([edges, torch.tensor([-1])])[(edges.view(1, -1) >= t.cpu().view(-1, 1)).sum(1)]
                a_edge = alphas[edge].view(shape).to(device)
                at_edge = (t_prev.cpu() == edge).view(shape).to(device)
                student_prev = unet(z_prev, t_prev.clamp(min=0), cond).sample.float()
                target = torch.where(at_edge, z_prev, phase_output(student_prev, z_prev, a_prev, a_edge, prediction_type))
            else:
                target = consistency_output(unet(z_prev, t_prev, cond).sample.float(), z_prev, t_prev, a_prev,
                                            prediction_type)
        if phased:
            prediction = phase_output(unet(z_t, t, cond).sample.float(), z_t, a, a_edge, prediction_type)
        else:
            prediction = consistency_output(unet(z_t, t, cond).sample.float(), z_t, t, a, prediction_type)
        if cfg.weighting == "signal":
            weight = a.sqrt()
        elif cfg.weighting == "edge" and phased:
            weight = 1 / a_edge.sqrt()
        else:
            weight = torch.ones_like(a)
        return _distance(prediction, target, cfg, weight), n

    return loss_fn


def _alphas_cumprod(model) -> list[float]:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(model.scheduler_config()).alphas_cumprod.float().tolist()


def sampling_settings(cfg: LCMTrainConfig) -> tuple[str, str, int]:
    """(sampler, schedule type, steps) the distilled LoRA samples with: LCM at `sample_steps`, or a
    phased one's DDIM at exactly its number of phases, with trailing spacing (the web UI's "SGM
    Uniform") whatever the model's own spacing, so that its timesteps are the phase edges."""
    if cfg.optim.consistency == "phased":
        return "DDIM", "SGM Uniform", cfg.optim.phases
    return "LCM", "Automatic", cfg.sample_steps


@torch.no_grad()
def save_lcm_samples(model, cfg: LCMTrainConfig, step: int, outdir: Path) -> Path:
    """A grid: one row per sample prompt, 4 seeds, the LoRA's sampler at CFG 1 (how it is used; the
    trained weights as they are, before the written file's `strength`)."""
    model.unet.eval()
    sampler, schedule, steps = sampling_settings(cfg)
    prompts = list(cfg.sample_prompts) or ["a red circle", "a blue square above a yellow triangle"]
    latent = (cfg.resolution or model.config.resolution) // model.vae_scale_factor
    seeds = list(range(4))
    images = []
    for prompt in prompts:
        generators = make_generators(seeds)
        latents = denoise(model.unet, make_scheduler(sampler, schedule, model.scheduler_config()),
                          draw_noise(generators, (model.latent_channels, latent, latent)),
                          model.encode_prompts([prompt]), None, steps=steps, cfg_scale=1.0,
                          generators=generators)
        param = next(model.vae.parameters())
        images += to_pil_images(model.decode_latents(latents.to(param.device, param.dtype)))
    model.unet.train()
    return write_png(make_grid(images, cols=len(seeds)), outdir / "samples" / f"step-{step:06d}.png", "")


def train_lcm(cfg: LCMTrainConfig, outdir: str | Path, resume: bool = False, stop_after: int | None = None,
              budget=None):
    """Distil; a finished (or budget-stopped) run writes OUTDIR/NAME.safetensors. Returns the base
    model (the teacher unless cfg.base names another) with the LoRA-carrying UNet (eval mode)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    save_run_config({"family": "lcm", **to_dict(cfg)}, outdir)  # `t2i train outdir/config.yaml` reruns it
    teacher = load_teacher(cfg)
    prediction = check_teacher(teacher, cfg.optim.solver_steps, cfg.optim.focus_timesteps)
    model = load_base(cfg, teacher)
    model.requires_grad_(False).eval()
    if model is teacher:  # LCM-LoRA: a frozen copy of the UNet the LoRA goes into
        teacher_unet, teacher_prompts = copy.deepcopy(model.unet).requires_grad_(False).eval(), None
    else:
        check_teacher(model, cfg.optim.solver_steps, cfg.optim.focus_timesteps)
        check_same_latent_space(model, teacher)
        teacher.requires_grad_(False).eval()
        teacher_unet, teacher_prompts = teacher.unet, teacher.encode_prompts
    latents, captions = cached_latents(model, cfg, outdir / "cache")
    trainer = student_trainer(model, cfg, outdir)
    if resume:
        trainer.load()
    loss_fn = lcm_loss_fn(model, teacher_unet, latents, captions, cfg.optim, prediction, teacher_prompts)
    on_sample = lambda step: save_lcm_samples(model, cfg, step, outdir)  # noqa: E731
    trainer.fit(loss_fn, on_sample=on_sample, stop_after=stop_after, budget=budget)
    model.unet.eval()
    if trainer.step < cfg.optim.steps and not trainer.stopped_on_budget:
        return model
    trainer.apply_ema()
    write_lcm_lora(model, cfg, trainer.step, outdir)
    save_lcm_samples(model, cfg, trainer.step, outdir)
    return model


def student_trainer(model, cfg: LCMTrainConfig, outdir: Path) -> Trainer:
    """Add the LoRA (initialised from cfg.seed) to `model`'s UNet and return its Trainer, whose
    checkpoint is OUTDIR/lcm.ckpt."""
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    add_lora(model, cfg.lora, train_text_encoder=False)
    run_config = {"family": "lcm", **to_dict(cfg)}
    return Trainer("lcm", {"unet": model.unet}, cfg.optim, outdir, cfg.seed, run_config, trained_only=True)


def write_lcm_lora(model, cfg: LCMTrainConfig, step: int, outdir: Path, name: str | None = None,
                   dtype: torch.dtype | None = None) -> Path:
    """OUTDIR/NAME.safetensors (kohya; and the diffusers file) from the UNet's LoRA layers, scaled by
    cfg.strength, with metadata that says how to sample it (read by `--fast`)."""
    sampler, schedule, steps = sampling_settings(cfg)
    how = ("the LCM sampler, 2-8 steps" if sampler == "LCM" else
           f"phased consistency; sample with DDIM, {schedule}, exactly {steps} steps")
    metadata = {"ss_training_comment": f"LCM-LoRA (latent consistency distillation) by t2i; {how}, CFG scale 1",
                "t2i_lcm": json.dumps({"steps": step, "guidance": [cfg.optim.guidance_min, cfg.optim.guidance_max],
                                       "solver_steps": cfg.optim.solver_steps, "teacher": cfg.teacher,
                                       "base": cfg.base or cfg.teacher,
                                       "consistency": cfg.optim.consistency, "sampler": sampler,
                                       "schedule_type": schedule, "sample_steps": steps,
                                       "scale": cfg.strength})}
    return save_lora(model, ["unet"], outdir, name or cfg.name, metadata, scale=cfg.strength, dtype=dtype)
