"""Latent consistency models: the math that training and sampling must share.

Latent Consistency Models (Luo et al. 2023, "Latent Consistency Models: Synthesizing
High-Resolution Images with Few-Step Inference") distil a latent diffusion model into a
consistency function f(x_t, t) -> x_0 that maps any point of a probability-flow trajectory to its
start, so 1-8 steps make an image. LCM-LoRA (Luo et al. 2023, "LCM-LoRA: A Universal
Stable-Diffusion Acceleration Module") learns the change as a LoRA, which then applies to the
model it was distilled from (and, less exactly, to its fine-tunes).

The function is parameterised on top of the UNet's own prediction:

    f(x_t, t) = c_skip(t) * x_t + c_out(t) * x0_hat(x_t, t)

with the boundary condition f(x, 0) = x. Sampling (t2i's "LCM" sampler, diffusers'
LCMScheduler) uses the scalings below with the same `timestep_scaling` and `sigma_data`, and
its timesteps come from the grid of `solver_timesteps`, so a model distilled here samples with
it unchanged. Guidance is baked in as LCM-LoRA does it: the teacher's classifier-free guided step
is the target and the student gets no guidance input, so sampling runs at CFG scale 1 (one
UNet call per step) or a small plain CFG on top.

Phased consistency (Wang et al. 2024, "Phased Consistency Models"; Heek et al. 2024, "Multistep
Consistency Models") splits the trajectory into as many phases as the sampler takes steps and
learns, per phase, the map from any point of the phase to the phase's lower edge. Its function is
the DDIM jump to that edge, `phase_output`, which equals its input at the edge itself, so the
boundary condition holds without scalings; sampling is plain deterministic DDIM at the edges
(`phase_edges`: the trailing spacing DDIM uses), one UNet call per phase. Each phase is a short
stretch of the trajectory, an easier map than LCM's all the way to x0.
"""
from __future__ import annotations

import torch
from torch import Tensor

# diffusers' LCMScheduler defaults (its `timestep_scaling` config and fixed sigma_data)
TIMESTEP_SCALING = 10.0
SIGMA_DATA = 0.5
# The DDIM solver grid the LCM sampler's timesteps come from (LCMScheduler's
# `original_inference_steps`): every k = num_train_timesteps / 50 timesteps.
SOLVER_STEPS = 50


def boundary_scalings(t: Tensor, timestep_scaling: float = TIMESTEP_SCALING,
                      sigma_data: float = SIGMA_DATA) -> tuple[Tensor, Tensor]:
    """(c_skip, c_out) at integer timesteps `t`: c_skip(0) = 1 and c_out(0) = 0, so f(x, 0) = x."""
    scaled = t.double() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.float(), c_out.float()


def solver_timesteps(num_train_timesteps: int = 1000, solver_steps: int = SOLVER_STEPS) -> Tensor:
    """The DDIM solver grid [k-1, 2k-1, ..., T-1] (k = T / solver_steps), as LCMScheduler builds it."""
    k = num_train_timesteps // solver_steps
    return torch.arange(1, solver_steps + 1) * k - 1


def predicted_x0(model_output: Tensor, x_t: Tensor, alpha_bar: Tensor, prediction_type: str) -> Tensor:
    """x0_hat from an epsilon or v prediction at noise level alpha_bar (broadcastable to x_t)."""
    if prediction_type == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * model_output
    raise ValueError(f"LCM distillation supports epsilon and v_prediction models, not {prediction_type!r}")


def predicted_eps(model_output: Tensor, x_t: Tensor, alpha_bar: Tensor, prediction_type: str) -> Tensor:
    """eps_hat from an epsilon or v prediction."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * model_output + (1 - alpha_bar).sqrt() * x_t
    raise ValueError(f"LCM distillation supports epsilon and v_prediction models, not {prediction_type!r}")


def consistency_output(model_output: Tensor, x_t: Tensor, t: Tensor, alpha_bar: Tensor,
                       prediction_type: str) -> Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat: the consistency function's value."""
    c_skip, c_out = boundary_scalings(t)
    shape = (-1,) + (1,) * (x_t.ndim - 1)
    x0 = predicted_x0(model_output, x_t, alpha_bar, prediction_type)
    return c_skip.view(shape).to(x_t) * x_t + c_out.view(shape).to(x_t) * x0


def ddim_step(x0: Tensor, eps: Tensor, alpha_bar_prev: Tensor) -> Tensor:
    """The deterministic DDIM update to the previous grid point from (x0_hat, eps_hat)."""
    return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps


def phase_edges(num_train_timesteps: int, phases: int) -> list[int]:
    """The phases' upper edges, highest first: DDIM's trailing timesteps for `phases` steps
    ([999, 749, 499, 249] for 1000 training timesteps and 4 phases). Each phase runs from its edge
    down to the next one; the last down to the clean end (DDIM's final alpha)."""
    if phases < 1 or num_train_timesteps % phases:
        raise ValueError(f"{phases} phases must divide the {num_train_timesteps} training timesteps")
    step = num_train_timesteps // phases
    return [num_train_timesteps - 1 - i * step for i in range(phases)]


def phase_output(model_output: Tensor, x_t: Tensor, alpha_bar: Tensor, alpha_bar_edge: Tensor,
                 prediction_type: str) -> Tensor:
    """The phased consistency function: the DDIM jump from x_t (at alpha_bar) to the phase's lower
    edge (at alpha_bar_edge) with the model's x0 and eps estimates; x_t itself when the two levels agree."""
    x0 = predicted_x0(model_output, x_t, alpha_bar, prediction_type)
    eps = predicted_eps(model_output, x_t, alpha_bar, prediction_type)
    return ddim_step(x0, eps, alpha_bar_edge)
