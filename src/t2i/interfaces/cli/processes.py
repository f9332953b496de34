"""Many prompts, many processes: `t2i generate --from-file` under `accelerate launch` (or torchrun).

    accelerate launch --multi_gpu --num_processes 2 -m t2i.interfaces.cli generate --from-file prompts.txt --seed 1

Each process takes every N-th prompt (round robin: prompt i goes to process i mod N), loads the
model once and writes its images into the shared --outdir. An image depends only on its prompt,
seed and settings, so every image equals the one a single process makes of that prompt and seed
(with the same --threads: float sums on a CPU can differ in the last bits between thread
counts). File names are what a single process would give them: the processes agree on the
first free counter before anyone writes (one barrier), and prompt i's images take the numbers
after those of prompts 0..i-1.

Which process this is comes from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE); accelerate's PartialState joins the process group only when there are
several. Unless --device / --threads are given: on GPUs, process r uses cuda:LOCAL_RANK; on a CPU
each process gets an equal share of the cores. (`accelerate launch --cpu --num_processes N` starts
one process unless mpirun is set up; `--multi_gpu` starts N with gloo on a machine without GPUs.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from t2i.errors import ParamError


def _env_int(environ, name: str, default: int) -> int:
    value = environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ParamError(f"the launcher set {name}={value!r}, which is not a whole number") from None


@dataclass(frozen=True)
class ProcessShare:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls, environ=None) -> "ProcessShare":
        environ = os.environ if environ is None else environ
        world = _env_int(environ, "WORLD_SIZE", 1)
        rank = _env_int(environ, "RANK", 0)
        local_world = _env_int(environ, "LOCAL_WORLD_SIZE", world)
        local_rank = _env_int(environ, "LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
            raise ParamError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}, "
                             f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}")
        return cls(rank, world, local_rank, max(local_world, 1))

    @property
    def several(self) -> bool:
        return self.world > 1

    def mine(self, count: int) -> list[int]:
        """Indices of the `count` items this process takes: rank, rank + world, ..."""
        return list(range(self.rank, count, self.world))


def join(share: ProcessShare, args) -> None:
    """With several processes: join the process group (accelerate), and give this process its
    device and its share of the CPU threads unless the flags chose them."""
    if not share.several:
        return
    from accelerate import PartialState

    state = PartialState()
    if getattr(args, "device", None) is None and state.device.type != "cpu":
        args.device = str(state.device)
    if getattr(args, "threads", None) is None and state.device.type == "cpu" and args.device in (None, "cpu"):
        args.threads = max(1, (os.cpu_count() or 1) // share.local_world)


def wait_for_everyone(share: ProcessShare) -> None:
    if share.several:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def image_numbers(first: int, prompt_index: int, per_prompt: int):
    """The counters of one prompt's outputs when every prompt writes `per_prompt` files."""
    start = first + prompt_index * per_prompt
    return iter(range(start, start + per_prompt))
