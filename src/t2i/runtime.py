"""Where and how models run: device, dtypes, memory layout and CPU threads, chosen by the caller.

Nothing probes hardware at import; `Runtime.auto()` is called by the front ends (CLI, API) and
`describe()` reports what it chose so a user can see it.

The automatic choice ("auto" precision), from measurements (BENCHMARKS.md, "Fast path"):
- CUDA: float16 for the UNet, VAE and text encoders. Measured on an H100 (BENCHMARKS.md, "SD 1.5
  on a GPU"): eager float16 ran 1.11x float32 and bfloat16 0.99x, and float16 is the closer to
  float32 (82 dB against 69 dB PSNR). The VAE is float16 even where its config asks for float32
  (`force_upcast`, diffusers' rule: some VAEs overflow float16): a decode or encode whose float16
  result is not finite is redone in float32 and the VAE kept there (t2i.models.vae_precision, the
  web UI's automatic upcast), so VAEs that are fine in float16 (most SD 1.x ones) run at its speed.
- A CPU with AMX: bfloat16 UNet and VAE in channels_last. There bf16 doubles the matmul peak, and
  oneDNN's bf16 convolutions are fast only in NHWC (bf16 in NCHW gains nothing; fp32 in NHWC is
  slower). The text encoder stays float32: it runs once per prompt, so bf16 would only cost
  accuracy. The scheduler math stays float32 (t2i.diffusion.sampling casts to the model dtype for
  each UNet call only).
- An AMD CPU with AVX512-BF16 (Zen 4 and later; no AMX): the same bf16 + channels_last as AMX.
  Measured on a 2-core AMD EPYC (family 25, model 17; BENCHMARKS.md, "bf16 on an AMD EPYC"):
  bf16 matmuls reach 398-412 GFLOP/s against 152-176 for float32, an SD 1.5 UNet step with CFG
  takes 6.1-6.4 s against 10.6-12.4 s, a 512x512 VAE decode 7.5 s against 17.1 s.
- An Intel CPU with AVX512-BF16 but no AMX (Cooper Lake, or a VM that hides AMX): float32.
  Measured on a 2-core Xeon of that kind (BENCHMARKS.md, "bf16 without AMX"): torch's bf16 matmuls
  reach 82 GFLOP/s against 152 for float32 on one thread (150 against 263 on two), so bf16 would
  only cost accuracy there. The vendor, not the flag, is what tells the two apart: both report
  avx512_bf16, and torch's float32 matmuls were the faster on the Xeon, its bf16 ones on the EPYC.
- Any other CPU: float32 (bf16 without native support is emulated, ~100x slower than fp32).
- A small UNet (t2i's own bundled model) stays float32 on every CPU: its small convolutions
  are bound by per-op overhead, not by the matmul peak that bf16 raises (see `for_model`). On
  the AMD EPYC above, bf16 ran the bundled model only 1.09x as fast, too little to change the
  numerics its accuracy figures were measured with.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from t2i.errors import ParamError

PRECISIONS = ("auto", "full")
# A UNet with fewer parameters than this runs in float32 on a CPU even where bf16 is native.
# t2i's bundled model has 4.1 M; Stable Diffusion UNets have 860 M (SD 1.x/2.x) to 2.6 G (SDXL).
SMALL_UNET_PARAMS = 50_000_000


def check_device(device: str | None):
    """A torch.device for `device` (None: cuda when available, else cpu); ParamError for a name
    torch does not know or a device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ParamError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParamError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ParamError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ParamError(f"--device {device}: t2i runs on cpu or cuda devices")
    return dev


def _cpuinfo_field(key: str) -> str:
    """The value of /proc/cpuinfo's first `key` line (x86: the same for every core), or ""."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return ""


def _cpuinfo_flags() -> set[str]:
    return set(_cpuinfo_field("flags").split())


def cpu_vendor() -> str:
    """The x86 vendor ("GenuineIntel", "AuthenticAMD"), or "" where neither /proc/cpuinfo (Linux) nor
    the platform's processor string (Windows: "AMD64 Family 25 Model 17 ..., AuthenticAMD") says."""
    vendor = _cpuinfo_field("vendor_id")
    if vendor:
        return vendor
    processor = platform.processor()
    return next((name for name in ("AuthenticAMD", "GenuineIntel") if name in processor), "")


def cpu_native_bf16() -> str | None:
    """The CPU feature that makes bf16 matmuls fast here ("amx_bf16", "avx512_bf16"), or None.

    Asks torch's own CPU probe (cpuinfo, the same check its kernels dispatch on) and, should those
    private helpers move, the kernel's /proc/cpuinfo flags."""
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for feature, probe_name in probes:
        probe = getattr(torch.cpu, probe_name, None)
        try:
            if probe is not None and probe():
                return feature
        except Exception:  # a probe that fails says nothing either way; fall back to the flags
            pass
    flags = _cpuinfo_flags()
    return next((feature for feature, _ in probes if feature in flags), None)


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # UNet and VAE weights and compute
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    channels_last: bool = False  # UNet and VAE in NHWC memory format
    text_dtype: torch.dtype | None = None  # text encoder(s); None: same as dtype
    small_unet_dtype: torch.dtype | None = None  # dtype for a UNet below SMALL_UNET_PARAMS; None: dtype
    reason: str = ""  # why this choice, for describe()
    # What the caller asked for, kept by for_model so that the next model gets its own choice
    requested: "Runtime | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def auto(cls, precision: str = "auto", device: str | None = None, threads: int | None = None) -> "Runtime":
        """`full`: float32 anywhere. `auto`: the fastest correct settings for the device (see the
        module docstring); the final choice for a model is `for_model(model)`."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "full":
            return cls(dev, torch.float32, threads, reason="--precision full")
        if dev.type == "cuda":
            return cls(dev, torch.float16, threads, reason="CUDA: float16, the fastest eager dtype measured; "
                       "a VAE that overflows float16 is redone in float32")
        if dev.type == "cpu":
            feature = cpu_native_bf16()
            vendor = cpu_vendor() if feature == "avx512_bf16" else ""  # only AVX512-BF16 alone depends on it
            if feature == "amx_bf16" or vendor == "AuthenticAMD":
                reason = f"CPU has {feature}" if feature == "amx_bf16" else f"AMD CPU with {feature}"
                return cls(dev, torch.bfloat16, threads, channels_last=True, text_dtype=torch.float32,
                           small_unet_dtype=torch.float32, reason=reason)
            if feature is not None:  # Intel with AVX512-BF16 alone: measured slower than float32 (docstring)
                return cls(dev, torch.float32, threads,
                           reason=f"{vendor or 'this'} CPU has {feature} but no AMX: float32 is faster")
            return cls(dev, torch.float32, threads, reason="CPU without native bf16")
        return cls(dev, torch.float32, threads, reason=f"{dev.type}: float32")

    def for_model(self, model) -> "Runtime":
        """The settings for this model (anything with a `.unet`): a UNet below SMALL_UNET_PARAMS
        takes `small_unet_dtype` without channels_last. Idempotent; the result remembers the
        request, so passing it to another load decides afresh for that model."""
        base = self.requested or self
        unet = getattr(model, "unet", None)
        if base.small_unet_dtype is None or unet is None:
            return replace(base, requested=base)
        n = sum(p.numel() for p in unet.parameters())
        if n >= SMALL_UNET_PARAMS:
            return replace(base, requested=base)
        return replace(base, dtype=base.small_unet_dtype, channels_last=False, text_dtype=None, requested=base,
                       reason=f"{base.reason}, but a small UNet ({n / 1e6:.1f} M parameters) keeps float32: "
                       f"bf16 gains it little")

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype to read weights into; `place` casts the UNet and VAE from there."""
        return self.text_dtype or self.dtype

    def placement(self, component: str, module=None) -> tuple[torch.dtype, torch.memory_format]:
        """(dtype, memory format) of a model's `component` ("unet", "vae", "text_encoder", ...)
        under this runtime: what `place` gives it, and what loaders cast a file's tensors to
        directly (one cast from the file's dtype, no round trip through float32). `module`: the
        component; unused now: a float16 VAE that overflows is upcast when it does, see
        t2i.models.vae_precision)."""
        if component in ("unet", "vae"):
            return self.dtype, torch.channels_last if self.channels_last else torch.contiguous_format
        return self.text_dtype or self.dtype, torch.contiguous_format

    def place(self, model):
        """Move `model` (a LatentDiffusion or StableDiffusionModel) to the device, the UNet and VAE
        to `dtype` (and channels_last), the text encoders to `text_dtype`. Returns `model`.
        Tensors already in their dtype and layout (a loader that used `placement`) are kept as
        they are, not copied."""
        model.to(self.device)
        for name in ("unet", "vae"):
            module = getattr(model, name, None)
            if module is None:
                continue
            dtype, layout = self.placement(name, module)
            # nn.Module.to, not diffusers' override of it: that one warns on every dtype cast
            # (about fp32-only modules, even when a model has none); t2i models are never quantized
            # or offloaded, which is all else the override handles
            torch.nn.Module.to(module, dtype=dtype, memory_format=layout)
        for name in ("text_encoder", "text_encoder_2"):
            module = getattr(model, name, None)
            if module is not None:
                module.to(self.placement(name, module)[0])
        return model

    def apply_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def describe(self) -> str:
        name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
        text = f"{self.device.type}, {name(self.dtype)}"
        if self.channels_last:
            text += " channels_last"
        if self.text_dtype not in (None, self.dtype):
            text += f", text encoder {name(self.text_dtype)}"
        return f"{text} ({self.reason})" if self.reason else text
