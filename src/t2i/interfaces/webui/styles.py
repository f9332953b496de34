"""Prompt styles for the UI: the styles file's names, applying styles to the prompt boxes, and
saving the current prompts as a style (the web UI's 💾), in the web UI's CSV format."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from t2i.errors import ParamError
from t2i.pipelines.styles import (
    DEFAULT_STYLES_FILE,
    PromptStyle,
    apply_style_list,
    default_styles_file,
    load_styles,
    select_styles,
)


def styles_path(config) -> Path:
    """The server's styles file (--styles-file, else ./styles.csv), existing or not yet."""
    return Path(config.styles_file) if config.styles_file else (default_styles_file() or Path(DEFAULT_STYLES_FILE))


def style_names(config) -> list[str]:
    path = styles_path(config)
    if not path.is_file():
        return []
    try:
        return list(load_styles(path))
    except (ValueError, OSError):
        return []


def apply(config, names: list[str], prompt: str, negative: str) -> tuple[str, str]:
    """The prompts with the chosen styles expanded into them (the web UI's 📋)."""
    path = styles_path(config)
    styles = load_styles(path) if path.is_file() else None
    return apply_style_list(prompt, negative, select_styles(styles, list(names or [])))


def save(config, name: str, prompt: str, negative: str) -> list[str]:
    """Add (or replace) style `name` with these prompts; the style names afterwards."""
    from t2i.atomic import write_text

    name = (name or "").strip()
    if not name:
        raise ParamError("a style needs a name")
    if len(name) > 200 or any(ord(c) < 32 for c in name):
        raise ParamError("a style name is one line of at most 200 characters")
    path = styles_path(config)
    styles = dict(load_styles(path)) if path.is_file() else {}
    styles[name] = PromptStyle(name, prompt or "", negative or "")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "prompt", "negative_prompt"])
    for style in styles.values():
        writer.writerow([style.name, style.prompt, style.negative_prompt])
    write_text(path, buffer.getvalue())
    return list(styles)
