"""What a Session hands out: the outputs of a run and the models it holds."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from t2i.pipelines.load_settings import LoadSettings

NoteCallback = Callable[[str], None]


@dataclass
class Output:
    """One image a run made, and what a front door needs to store it."""

    image: object  # PIL.Image.Image
    infotext: str
    seed: int | None
    prompt: str
    prefix: str = ""  # file-name prefix: "grid-", "xyz_grid-", "prompt_matrix-", "loopback-"
    kind: str = "image"  # image | grid
    name: str | None = None  # a fixed file name (batch folders, upscale outputs), else counted


@dataclass
class RunResult:
    outputs: list[Output]
    params: object  # as run: seeds resolved, sampler canonical, sizes filled in
    model: str | None = None  # the model's name
    result: object = None  # the pipeline's own result (GenerationResult, XYZResult, ...)

    @property
    def images(self) -> list:
        return [o.image for o in self.outputs if o.kind == "image"]

    @property
    def seeds(self) -> list:
        return [o.seed for o in self.outputs if o.kind == "image"]

    @property
    def infotexts(self) -> list[str]:
        return [o.infotext for o in self.outputs if o.kind == "image"]


@dataclass
class ModelEntry:
    """A model the session holds: the loaded object, its lock and what the summary line says."""

    loaded: object  # LoadedModel (diffusion), FamilyModel (t2i sample) or SRModel (t2i upscale)
    settings: LoadSettings
    kind: str  # diffusion | family | sr
    lock: threading.RLock = field(default_factory=threading.RLock)
    load_seconds: float = 0.0
    bytes: int = 0  # parameter memory, for the cache bound
    notes: list[str] = field(default_factory=list)  # lines for the user, shown with the summary
    announced: bool = False  # the summary line was shown
    compile: object | None = None  # speedups.CompileReport with --compile: where the compiled UNet came from

    @property
    def name(self) -> str:
        return getattr(self.loaded, "name", "")


def parameter_bytes(obj) -> int:
    import torch

    modules = [m for m in vars(obj).values() if isinstance(m, torch.nn.Module)] if not isinstance(
        obj, torch.nn.Module) else [obj]
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def image_list(images) -> list[object] | None:
    if images is None:
        return None
    return [images] if isinstance(images, Image.Image) else list(images)


def announce(session, entry, plan=None) -> None:
    """The model's one-line summary (and its load notes), once per model and session."""
    if not entry.announced:
        entry.announced = True
        session.note(session.summary(entry, plan))
        for line in entry.notes:
            session.note(line)
