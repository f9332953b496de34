"""Prompt styles: named prompt and negative-prompt fragments from a CSV file, the web UI's way.

    styles = load_styles("styles.csv")                      # name,prompt,negative_prompt
    params = apply_styles(params, ["cinematic", "sharp"], styles)

A style's text containing `{prompt}` wraps the prompt (the placeholder is replaced by it);
otherwise it is appended with ", ". Styles apply in the order given, to the prompt and the
negative prompt alike. The images' infotexts hold the expanded prompts, as the web UI writes
them, so they remake the image without the styles file.
"""
from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from t2i.pipelines.params import ParamError

DEFAULT_STYLES_FILE = "styles.csv"  # looked for in the current directory, as the web UI does in its own
PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompts(style_text: str, prompt: str) -> str:
    """`style_text` with `{prompt}` replaced by `prompt`, or both joined by ", " (empty parts dropped)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def load_styles(path: str | Path) -> dict[str, PromptStyle]:
    """Styles of a web-UI styles CSV (header `name,prompt,negative_prompt`; the old `text` column is
    read as `prompt`), by name. Rows without a name are skipped; ValueError for an unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"styles file {path} does not exist")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: files saved by Excel start with a BOM
            reader = csv.DictReader(f, skipinitialspace=True)
            if not reader.fieldnames or "name" not in reader.fieldnames:
                raise ValueError(f"styles file {path} needs a header line `name,prompt,negative_prompt`, "
                                 f"got {','.join(reader.fieldnames or []) or 'nothing'}")
            styles = {}
            for row in reader:
                name = (row.get("name") or "").strip()
                if not name:
                    continue
                prompt = row.get("prompt") if "prompt" in row else row.get("text")
                styles[name] = PromptStyle(name, prompt or "", row.get("negative_prompt") or "")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot read styles file {path}: {err}") from err
    return styles


def default_styles_file(folder: str | Path | None = None) -> Path | None:
    """`styles.csv` in `folder` (default: the current directory) if it exists, else None."""
    path = Path(folder or ".") / DEFAULT_STYLES_FILE
    return path if path.is_file() else None


def select_styles(styles: Mapping[str, PromptStyle] | None, names: Sequence[str]) -> list[PromptStyle]:
    """The styles called `names`, in that order; ParamError naming the available ones otherwise."""
    if isinstance(names, str):
        raise ParamError(f"styles must be a list of style names, got the string {names!r}")
    if names and styles is None:
        raise ParamError(f"styles {', '.join(names)} asked for, but there is no styles file: put a "
                         f"{DEFAULT_STYLES_FILE} in the current directory or name one (--styles-file)")
    missing = [n for n in names if n not in styles]
    if missing:
        available = ", ".join(sorted(styles)) or "none: the styles file is empty"
        raise ParamError(f"unknown style {', '.join(map(repr, missing))}; available: {available}")
    return [styles[n] for n in names]


def apply_style_list(prompt: str, negative_prompt: str, chosen: Sequence[PromptStyle]) -> tuple[str, str]:
    """(prompt, negative prompt) with the styles applied one after the other."""
    for style in chosen:
        prompt = merge_prompts(style.prompt, prompt)
        negative_prompt = merge_prompts(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def apply_styles(params, names: Sequence[str], styles: Mapping[str, PromptStyle] | None):
    """A copy of pipeline params with the named styles expanded into prompt and negative prompt."""
    if not names:
        return params
    prompt, negative = apply_style_list(params.prompt, params.negative_prompt, select_styles(styles, names))
    return dataclasses.replace(params, prompt=prompt, negative_prompt=negative)
