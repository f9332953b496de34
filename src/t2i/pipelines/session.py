"""One `Session` runs every pipeline for every front door (CLI, REST API, web UI, Python).

It owns the models: loads them by `LoadSettings`, keeps a bounded cache (by count and by
memory, least recently used out first, so a server can switch checkpoints), applies the
load-time options (VAE, LoRA and embedding folders, offload, compile, tiny decoder) once per
model, and guards each model with one lock held for everything a run changes on it: the memory
plan (slicing, tiling), the extra-network merges, the tiling padding and the generation itself.

    session = Session(LoadSettings(model="default"))
    result = session.run(Txt2ImgParams(prompt="a red circle", seed=1))
    for out in result.outputs:
        out.image.save(...)          # each with out.infotext, out.seed, out.prefix ("grid-", ...)

`run` picks the pipeline by the params type; scripts (X/Y/Z plot, prompt matrix, loopback) come
as `script=` options beside the generation params (pipelines/session_runs.py). A front door is:
parse -> `Session.run` -> write.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from t2i.errors import ParamError
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.session_models import load_entry
from t2i.pipelines.session_runs import dispatch
from t2i.pipelines.session_types import ModelEntry, NoteCallback, Output, RunResult


class Session:
    """Owns models and runs pipelines; thread-safe (one lock per model, one for the cache)."""

    def __init__(self, settings: LoadSettings | None = None, *, max_models: int = 1, max_bytes: int | None = None,
                 styles_file=None, notes: NoteCallback | None = None,
                 checkpoints: Callable[[str], str | None] | None = None):
        """checkpoints: resolves a value of the X/Y/Z plot's Checkpoint name axis to the model to
        load (a path; None: the bundled model) and raises for a value it does not allow; a server
        passes one that knows only its model folders. Default: the values are model paths."""
        if max_models < 1:
            raise ParamError(f"max_models must be at least 1, got {max_models}")
        self.settings = settings or LoadSettings()
        self.max_models = max_models
        self.max_bytes = max_bytes
        self.styles_file = styles_file
        self._notes = notes or (lambda line: None)
        self._checkpoints = checkpoints
        self._entries: OrderedDict[tuple, ModelEntry] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}

    # ------------------------------------------------------------------------- models

    def model(self, settings: LoadSettings | None = None, kind: str = "diffusion") -> ModelEntry:
        """The model of `settings` (default: the session's), loaded on first use and cached."""
        settings = settings or self.settings
        key = (kind, settings.model_key())
        with self._cache_lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one load per key at a time; other keys load in parallel
            with self._cache_lock:
                if key in self._entries:
                    return self._entries[key]
            entry = load_entry(settings, kind, self._notes)
            with self._cache_lock:
                self._entries[key] = entry
                self._loading.pop(key, None)
                self._evict(keep=key)
        return entry

    def _evict(self, keep: tuple) -> None:
        """Drop least recently used models beyond the count and memory bounds (not `keep`)."""
        def over() -> bool:
            total = sum(e.bytes for e in self._entries.values())
            return len(self._entries) > self.max_models or (self.max_bytes is not None and total > self.max_bytes)

        for key in list(self._entries):
            if not over():
                break
            if key != keep:
                entry = self._entries.pop(key)
                with entry.lock:  # a run still using it finishes first
                    pass

    def adopt(self, loaded, settings: LoadSettings | None = None) -> ModelEntry:
        """Hold an already loaded model (a LoadedModel from `t2i.load`) as if this session had
        loaded it with `settings` (default: the session's)."""
        settings = settings or self.settings
        entry = ModelEntry(loaded, settings, "diffusion")
        with self._cache_lock:
            self._entries[("diffusion", settings.model_key())] = entry
            self._evict(keep=("diffusion", settings.model_key()))
        return entry

    def checkpoint_path(self, value: str) -> str | None:
        """The model an X/Y/Z Checkpoint name value stands for (see `checkpoints`)."""
        return str(value) if self._checkpoints is None else self._checkpoints(value)

    def note(self, line: str) -> None:
        """A line for the user (the CLI prints it on stderr, the server logs it)."""
        self._notes(line)

    def loaded_models(self) -> list[ModelEntry]:
        with self._cache_lock:
            return list(self._entries.values())

    def unload_all(self) -> None:
        with self._cache_lock:
            self._entries.clear()

    # ------------------------------------------------------------------------- running

    def run(self, params, *, images=None, mask=None, script=None, settings: LoadSettings | None = None,
            progress=None, control=None, on_output: Callable[[Output], None] | None = None,
            image_names: list[str] | None = None) -> RunResult:
        """Run the pipeline of `params` (Txt2ImgParams, Img2ImgParams, InpaintParams,
        OutpaintParams, SampleParams, UpscaleParams), or the script `script` (XYZOptions,
        PromptMatrixOptions, LoopbackOptions) over them. `images`/`mask`: PIL inputs; `progress`,
        `control`: per-step events and interrupt/skip; `on_output(output)`: called as soon as each
        image is finished (a front door writes it then, so an interrupted run keeps what is done)."""
        return dispatch(self, params, images=images, mask=mask, script=script, settings=settings or self.settings,
                        progress=progress, control=control, on_output=on_output, image_names=image_names)

    def summary(self, entry: ModelEntry, plan=None) -> str:
        """The one-line summary every command prints: model, hash, device and precision, memory
        options, load time."""
        loaded = entry.loaded
        runtime = getattr(loaded, "runtime", None)
        text = f"model {entry.name}"
        if getattr(loaded, "hash", ""):
            text += f" ({loaded.hash})"
        if runtime is not None:
            text += f" on {runtime.describe()}"
        if plan is not None:
            text += f", {plan.describe()}"
        text += f", loaded in {entry.load_seconds:.1f}s"
        compiled = entry.compile
        if compiled is not None and compiled.source != "later":
            text += " (UNet compile from the cache)" if compiled.source == "cache" else " (UNet compiled now)"
        return text

