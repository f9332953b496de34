"""`--compile` with the compile cache against eager torch and OpenVINO, one UNet, one run.

1. Compile cost: two fresh processes in turn run `t2i.speedups.compile_unet_cached` (the code
   behind `t2i generate --compile`) on the same UNet with an empty compile cache folder: the first
   compiles and records the entry, the second loads it. Reported: the compile call's wall time
   (compile + one warm-up step) and the whole child process's CPU time (its g++ runs included).
2. In this process: one UNet step with CFG (batch 2) eager float32, compiled (from the cache; its
   load timed once more) and OpenVINO (the same UNet through `openvino.convert_model`, compiled
   for the CPU with its default precision choice, which is reported). Each: warm-up, then the
   min of --repeats, wall and process CPU time.
3. Numerics: the same --steps-step DPM++ 2M denoising (CFG 7, fixed noise and context) with each
   backend; per-step cosine of the latents against eager float32.
4. With --vae: one VAE decode of the same latents, eager float32 against OpenVINO (each precision),
   and the decoded images' cosine against eager.

OpenVINO runs once per --openvino-precision: `auto` lets its CPU plugin choose (bf16 where the CPU
has it), `f32` forces float32 (INFERENCE_PRECISION_HINT), the precision t2i uses on CPUs without AMX.

    python benchmarks/compile_cache.py --unet default --threads 2 --repeats 5
    python benchmarks/compile_cache.py --unet sd15 --size 512 --threads 2 --repeats 3
    python benchmarks/compile_cache.py --unet sd15 --size 256 --steps 3 --openvino-precision auto f32 --vae

`default`: the bundled model's UNet at its 64 px (16x16 latents). `sd15`: SD 1.5's UNet
architecture (t2i.evaluate.random_sd, 860 M parameters, random weights: nothing downloaded) at
--size px. Needs `pip install openvino` (the `bench` extra) for the OpenVINO rows.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn


class _Holder(nn.Module):
    """What compile_unet needs of a t2i model: `.unet`, the default size and the text length."""

    def __init__(self, unet, size: int, scale: int = 8, length: int = 77):
        super().__init__()
        self.unet = unet
        self.config = argparse.Namespace(resolution=size)
        self.vae_scale_factor = scale
        self.tokenizer = argparse.Namespace(model_max_length=length)


def build(which: str, size: int):
    """(holder, context length) of the UNet to measure, float32 on the CPU."""
    if which == "default":
        from t2i.checkpoints.registry import load_model
        from t2i.runtime import Runtime

        loaded = load_model(None, Runtime.auto("auto", "cpu"))
        model = loaded.model
        length = model.tokenizer.model_max_length
        return _Holder(model.unet, model.config.resolution, model.vae_scale_factor, length), length
    from t2i.evaluate.random_sd import random_sd_unet

    return _Holder(random_sd_unet("sd15").eval(), size), 77


def add_unet_arguments(parser: argparse.ArgumentParser, unet: str, size: int) -> None:
    """--unet, --size, --threads and --runtime, with these defaults (shared with compile_interleaved.py)."""
    parser.add_argument("--unet", choices=("default", "sd15"), default=unet)
    parser.add_argument("--size", type=int, default=size, help="sd15: image size in pixels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtime", choices=("float32", "auto"), default="float32",
                        help="the UNet (and VAE) that eager t2i and --compile run: float32, or t2i's own choice "
                             "for this CPU (Runtime.auto: bf16 channels_last with AMX); the reference stays float32")
    add_allocator_argument(parser)


def add_allocator_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allocator", choices=("t2i", "system"), default="t2i",
                        help="t2i: keep freed memory for reuse as the `t2i` program does on a CPU "
                             "(t2i.cpu_allocator; OpenVINO reuses its own buffers either way); system: glibc's defaults")


def apply_allocator(args: argparse.Namespace) -> None:
    """Call first, before any thread starts (the setting is process-wide)."""
    if args.allocator == "t2i":
        from t2i.cpu_allocator import reuse_freed_memory

        print("allocator: freed memory kept for reuse" if reuse_freed_memory() else "allocator: system (not glibc)",
              file=sys.stderr)


def place(module: nn.Module, runtime: str, holder: nn.Module) -> tuple[nn.Module, torch.dtype]:
    """(`module`, the UNet or the VAE, as t2i's runtime places it; its dtype): a placed copy, or
    `module` itself where the runtime keeps float32. `holder`'s UNet decides (a small one stays float32)."""
    if runtime == "float32":
        return module, torch.float32
    from t2i.runtime import Runtime

    chosen = Runtime.auto("auto", "cpu").for_model(holder)
    dtype, layout = chosen.placement("unet")
    if dtype == torch.float32 and layout == torch.contiguous_format:
        return module, dtype
    return nn.Module.to(copy.deepcopy(module), dtype=dtype, memory_format=layout), dtype


def step_inputs(holder, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents of one image, text context of batch 2), fixed seeds: what every backend is timed on."""
    cfg = holder.unet.config
    latent = holder.config.resolution // holder.vae_scale_factor
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, cfg.in_channels, latent, latent, generator=g)
    return latents, torch.randn(2, length, cfg.cross_attention_dim, generator=g)


def child(args) -> None:
    """One process: compile through the compile cache, print the result as JSON."""
    from t2i.speedups import compile_unet_cached

    torch.set_num_threads(args.threads)
    holder, _ = build(args.unet, args.size)
    holder.unet, _ = place(holder.unet, args.runtime, holder)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    report = compile_unet_cached(holder, args.cache, notes=lambda line: print(line, file=sys.stderr))
    print(json.dumps({"wall": time.perf_counter() - start_wall, "cpu_main": time.process_time() - start_cpu,
                      "source": report.source, "shape": report.shape}))


def run_child(args) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", "--unet", args.unet, "--size", str(args.size),
                          "--threads", str(args.threads), "--cache", args.cache, "--runtime", args.runtime,
                          "--allocator", args.allocator],
                         capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall"] = time.perf_counter() - start
    result["process_cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result


def best(fn, repeats: int) -> tuple[float, float]:
    """(min wall s, min process CPU s) of `repeats` calls after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


class _Plain(nn.Module):
    """The UNet as tensors in, tensor out: what openvino.convert_model traces."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, context):
        return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]


def denoise(step_fn, latents, steps: int) -> list[torch.Tensor]:
    """DPM++ 2M with CFG 7 through `step_fn(x2, t) -> eps (2B)`; the latents after each step."""
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps)
    x, out = latents * scheduler.init_noise_sigma, []
    for t in scheduler.timesteps:
        eps = step_fn(torch.cat([x, x]), t).float()
        uncond, cond = eps.chunk(2)
        x = scheduler.step(uncond + 7.0 * (cond - uncond), t, x).prev_sample
        out.append(x.clone())
    return out


def openvino_callable(module: nn.Module, example: tuple, threads: int, precision: str):
    """(fn(*tensors) -> tensor, facts) for `module` converted by openvino.convert_model and compiled
    for the CPU at `precision` ("auto": the plugin's own choice)."""
    import openvino as ov

    start = time.perf_counter()
    converted = ov.convert_model(module, example_input=example)
    convert_s = time.perf_counter() - start
    config = {"INFERENCE_NUM_THREADS": threads}
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    start = time.perf_counter()
    compiled = ov.Core().compile_model(converted, "CPU", config)
    facts = {"version": ov.__version__, "convert_s": convert_s, "compile_s": time.perf_counter() - start,
             "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    request = compiled.create_infer_request()

    def call(*tensors):
        request.infer([x.reshape(()).numpy() if x.dim() == 0 else x.numpy() for x in tensors])
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return call, facts


class _Decoder(nn.Module):
    """The VAE's decode as tensor in, tensor out (latents already divided by the scaling factor)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents, return_dict=False)[0]


def vae_decode(args, latents: torch.Tensor, holder: nn.Module) -> dict:
    """One decode of `latents` (batch 1): eager float32, eager in t2i's runtime (--runtime auto, where
    it is not float32) and OpenVINO at each precision; min wall and CPU s of --repeats after a
    warm-up, and each image's cosine against eager float32."""
    if args.unet == "default":
        from t2i.checkpoints.registry import load_model
        from t2i.runtime import Runtime

        vae = load_model(None, Runtime.auto("auto", "cpu")).model.vae
    else:
        from t2i.evaluate.random_sd import random_sd_vae

        vae = random_sd_vae("sd15")
    decoder = _Decoder(vae.float().eval())
    z = latents / vae.config.scaling_factor
    with torch.no_grad():
        reference = decoder(z)
        out = {"eager fp32": best(lambda: decoder(z), args.repeats)}
        print("VAE eager", out["eager fp32"], flush=True)
        placed, dtype = place(decoder, args.runtime, holder)
        if placed is not decoder:
            zd = z.to(dtype)
            name = f"eager t2i runtime ({str(dtype).removeprefix('torch.')})"
            out[name] = best(lambda: placed(zd), args.repeats)
            out[f"{name} facts"] = {"cosine": cosine(placed(zd).float(), reference)}
            print("VAE", name, out[name], flush=True)
    for precision in [] if args.no_openvino else args.openvino_precision:
        call, facts = openvino_callable(decoder, (z,), args.threads, precision)
        name = "OpenVINO" if precision == "auto" else f"OpenVINO {precision}"
        out[name] = best(lambda: call(z), args.repeats)
        out[f"{name} facts"] = {**facts, "cosine": cosine(call(z), reference)}
        print("VAE", name, out[name], flush=True)
    return out


def cosine(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unet_arguments(parser, "default", 512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of the numerics check")
    parser.add_argument("--cache", help="compile cache folder (default: a fresh temporary one)")
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--openvino-precision", nargs="+", default=["auto"], choices=("auto", "f32", "bf16"),
                        help="OpenVINO inference precisions to measure (auto: its CPU plugin's own choice)")
    parser.add_argument("--vae", action="store_true", help="also time one VAE decode: eager against OpenVINO")
    parser.add_argument("--frozen", action="store_true",
                        help="also time torch.compile with Inductor's `freezing` option (t2i's Inductor settings "
                             "otherwise; in torch 2.13 the weights stayed graph inputs, BENCHMARKS.md) on a copy of "
                             "the UNet, compiled in this process without the compile cache; t2i's --compile does "
                             "not freeze")
    parser.add_argument("--steps-only", action="store_true",
                        help="skip the two compile processes (item 1): only the step, numerics and decode rows; "
                             "the in-process compile then fills or reads --cache")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_allocator(args)
    if args.child:
        return child(args)
    torch.set_num_threads(args.threads)
    temp = None
    if args.cache is None:
        temp = tempfile.TemporaryDirectory(prefix="t2i-compile-bench-")
        args.cache = temp.name
    results = {"unet": args.unet, "threads": args.threads, "torch": torch.__version__,
               "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if not args.steps_only:
        results["first_process"] = run_child(args)
        print("first process", results["first_process"], flush=True)  # partial results survive a timeout
        results["second_process"] = run_child(args)
        print(json.dumps(results, indent=1), flush=True)

    from t2i.speedups import compile_unet_cached, inductor_options

    holder, length = build(args.unet, args.size)
    unet = holder.unet  # float32: the reference, and what OpenVINO converts
    latents, context = step_inputs(holder, length)
    x2, t = torch.cat([latents, latents]), torch.tensor(500)

    def torch_step(x, step_t):
        with torch.no_grad():
            return unet(x, step_t, encoder_hidden_states=context).sample

    steps = {}
    steps["eager fp32"] = best(lambda: torch_step(x2, t), args.repeats)
    reference = denoise(torch_step, latents, args.steps)
    print("eager", steps["eager fp32"], flush=True)
    fast, dtype = place(unet, args.runtime, holder)  # what t2i runs, eager and compiled
    context_t2i = context.to(dtype)

    def t2i_step(x, step_t):
        with torch.no_grad():
            return fast(x.to(dtype), step_t, encoder_hidden_states=context_t2i).sample.float()

    if fast is not unet:
        name = f"eager t2i runtime ({str(dtype).removeprefix('torch.')})"
        steps[name] = best(lambda: t2i_step(x2, t), args.repeats)
        results[f"cosine {name}"] = [cosine(a, b) for a, b in zip(denoise(t2i_step, latents, args.steps), reference)]
        print(name, steps[name], flush=True)
    # OpenVINO before the compile: it converts the plain module (the compile changes it in place)

    if not args.no_openvino:
        for precision in args.openvino_precision:
            name = "OpenVINO" if precision == "auto" else f"OpenVINO {precision}"
            ov_step, results[name] = openvino_callable(_Plain(unet).eval(), (x2, t, context), args.threads, precision)
            steps[name] = best(lambda: ov_step(x2, t, context), args.repeats)
            results[f"cosine {name}"] = [cosine(a, b) for a, b in
                                         zip(denoise(lambda x, s: ov_step(x, s, context), latents, args.steps), reference)]
            print(name, steps[name], flush=True)
    if args.vae:
        results["vae_decode_s"] = vae_decode(args, reference[-1], holder)
    if args.frozen:
        frozen_unet = copy.deepcopy(unet)

        def frozen_step(x, step_t):
            with torch.no_grad():
                return frozen_unet(x, step_t, encoder_hidden_states=context).sample

        frozen_unet.compile(options={**inductor_options(torch.device("cpu")), "freezing": True})  # t2i's + freezing
        start = time.perf_counter()
        frozen_step(x2, t)
        results["frozen_compile_s"] = time.perf_counter() - start
        steps["torch.compile, freezing"] = best(lambda: frozen_step(x2, t), args.repeats)
        results["cosine torch.compile, freezing"] = [cosine(a, b) for a, b in
                                                     zip(denoise(frozen_step, latents, args.steps), reference)]
        print("frozen", steps["torch.compile, freezing"], flush=True)
    start = time.perf_counter()
    holder.unet = fast
    report = compile_unet_cached(holder, args.cache, notes=print)
    results["third_load_in_process"] = {"wall": time.perf_counter() - start, "source": report.source}
    steps["t2i --compile"] = best(lambda: t2i_step(x2, t), args.repeats)
    compiled = denoise(t2i_step, latents, args.steps)
    results["cosine t2i --compile"] = [cosine(a, b) for a, b in zip(compiled, reference)]
    print("compiled", steps["t2i --compile"], flush=True)

    results["step_s"] = {name: {"wall": w, "cpu": c} for name, (w, c) in steps.items()}
    print(json.dumps(results, indent=1))
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
