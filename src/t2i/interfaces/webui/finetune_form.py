"""The fine-tuning form's fields, read from the schema `t2i finetune` uses: each option of the CLI's
flag table (interfaces/cli/finetune.py FLAGS: its config key and help) with its type, default,
bounds and choices read from FinetuneConfig's annotations (training/finetune/config.py). A field
added there and given a flag appears here; nothing is copied by hand.

    fields = finetune_fields()                       # [FinetuneField("steps", int, None, 1, 10**12, ...), ...]
    data = config_data("lora", {"steps": 3, "lora.rank": 2, "data": "pics/"}, fields)
    config_from(data)                                # the same validation as the CLI's
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

# Options a web page does not set: the run folder is OUTDIR/train/NAME, the device the server's.
NOT_IN_FORM = ("outdir", "device")
SECTIONS = {"lora": "LoRA", "ti": "Textual inversion", "dreambooth": "DreamBooth",
            "hypernetwork": "Hypernetwork", "prior": "Prior preservation"}


@dataclass(frozen=True)
class FinetuneField:
    key: str  # the config key, "steps" or "lora.rank"
    kind: type  # int, float, str, bool or tuple (of str or float)
    default: object  # the config's default (None: chosen for the method and model size)
    minimum: float | None
    maximum: float | None
    choices: tuple[str, ...] | None
    help: str
    item: type = str  # a tuple's items

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def elem_id(self) -> str:
        return "finetune_" + self.key.replace(".", "_")

    @property
    def label(self) -> str:
        name = self.key.rpartition(".")[2].replace("_", " ")
        name = {"lr": "learning rate", "ema decay": "EMA decay", "min snr gamma": "min-SNR gamma"}.get(name, name)
        return name[0].upper() + name[1:]


def _unwrap(hint) -> tuple[object, list]:
    """(the bare type, the Annotated metadata) of a hint, through Optional and Annotated."""
    meta: list = []
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            meta += list(hint.__metadata__)
            hint = hint.__origin__
        elif origin is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = args[0]
        else:
            return hint, meta


def _bounds(meta: list) -> tuple[float | None, float | None]:
    low = high = None
    for m in meta:
        for name in ("ge", "gt"):
            if getattr(m, name, None) is not None:
                low = getattr(m, name)
        for name in ("le", "lt"):
            if getattr(m, name, None) is not None:
                high = getattr(m, name)
    return low, high


def _field(cls, name: str):
    hints = typing.get_type_hints(cls, include_extras=True)
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return hints[name], default


def finetune_fields() -> list[FinetuneField]:
    """Every option of `t2i finetune` but the run folder and device, in the flag table's order."""
    from t2i.interfaces.cli.finetune import FLAGS
    from t2i.training.finetune.config import FinetuneConfig

    sections = {f.name: f.default_factory for f in dataclasses.fields(FinetuneConfig)
                if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)}
    out = []
    for key, _kwargs, help_text in FLAGS.values():
        if key in NOT_IN_FORM:
            continue
        section, _, name = key.rpartition(".")
        hint, default = _field(sections[section] if section else FinetuneConfig, name)
        base, meta = _unwrap(hint)
        item = str
        choices = None
        if typing.get_origin(base) is Literal:
            choices, base = tuple(typing.get_args(base)), str
        elif typing.get_origin(base) is tuple:
            item = _unwrap(typing.get_args(base)[0])[0]
            base = tuple
        low, high = _bounds(meta)
        out.append(FinetuneField(key, base, default, low, high, choices, help_text.replace("%%", "%"), item))
    return out


def config_data(method: str, values: dict, fields: list[FinetuneField]) -> dict:
    """A FinetuneConfig mapping from the form's values ({key: value}): empty and default values are
    left out (the config then chooses, as the CLI does for a flag not given); sections of another
    method are dropped. Raises ValueError for a value that is not a number or list."""
    data: dict = {"method": method}
    for f in fields:
        value = values.get(f.key)
        if f.section and f.section not in (method, "prior"):
            continue
        if value is None or (isinstance(value, str) and not value.strip() and f.kind is not str):
            continue
        if f.kind is tuple:
            parts = [p.strip() for p in str(value).replace(",", "\n").splitlines()] if f.item is not str \
                else [p.strip() for p in str(value).splitlines()]
            parts = [p for p in parts if p]
            if not parts:
                continue
            try:
                value = [f.item(p) for p in parts]  # a list: the YAML file the run reads holds it
            except ValueError:
                raise ValueError(f"{f.label}: {value!r} is not a list of numbers (e.g. 1, 2, 1)") from None
        elif f.kind in (int, float) and isinstance(value, str):  # an "auto" box: empty, or a number typed
            try:
                value = f.kind(value.strip())
            except ValueError:
                raise ValueError(f"{f.label}: {value.strip()!r} is not a {'whole ' if f.kind is int else ''}"
                                 f"number (leave it empty for auto)") from None
        elif f.kind is int and isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{f.label} must be a whole number, got {value}")
            value = int(value)
        elif f.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif f.kind is str:
            value = str(value).strip()
            if not value and f.default in (None, ""):
                continue
        if value == f.default or (isinstance(f.default, tuple) and value == list(f.default)):
            continue
        section, _, name = f.key.rpartition(".")
        (data.setdefault(section, {}) if section else data)[name] = value
    return data

