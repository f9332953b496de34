"""Diffusion sampling: the web-UI sampler name table (`samplers`) and the denoising loop with
classifier-free guidance around diffusers schedulers (`sampling`)."""
