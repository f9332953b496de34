"""Keep freed memory for reuse on CPU runs (glibc's malloc), so large tensors stop paying page faults.

glibc hands every allocation above its mmap threshold (at most 32 MiB) its own fresh mapping and
unmaps it on free, and it gives the top of the heap back to the kernel past a small trim threshold.
An SD 1.5 VAE decode at 512x512 allocates and frees tens of activations of 64-128 MiB (the UNet's
larger tensors pass the threshold too), so each one comes back as new pages that the kernel must
fault in and zero: memory traffic on top of the arithmetic. Measured on a 2-core Xeon with AMX
(BENCHMARKS.md, "Freed memory kept for reuse"): the decode 1.65 -> 1.05 s, a UNet step with CFG
1.39 -> 1.25 s, the same image and the same peak memory.

`reuse_freed_memory()` sets three documented mallopt(3) parameters for the whole process:
- M_MMAP_MAX 0: large blocks come from the heap, where freed ones are reused;
- M_TRIM_THRESHOLD 2 GiB: the heap's free top stays mapped (a CPU run's memory stays at its peak
  rather than going back and forth);
- M_ARENA_MAX 1: threads created afterwards (the server's workers) share the main heap: a thread's
  own arena is capped at 64 MiB and maps larger blocks afresh whatever M_MMAP_MAX says.

It is process-wide, so only the `t2i` program calls it, at its start, before any thread: for every
command but `serve` (a short process; on a GPU only its host-side memory is concerned), and for
`serve` when all its devices are CPUs. `main()` called from Python leaves the process alone;
Python API users on a CPU may call this themselves. T2I_CPU_ALLOCATOR=system leaves
malloc as it is. Elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB
OPT_OUT_VARIABLE = "T2I_CPU_ALLOCATOR"

_applied = False


def reuse_freed_memory() -> bool:
    """Set glibc's malloc to keep and reuse freed memory; True if it now does (idempotent)."""
    global _applied
    if _applied:
        return True
    if os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; a refusal (none is expected on glibc) stops at that parameter
    _applied = all(mallopt(param, value) == 1 for param, value in
                   ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1)))
    return _applied
