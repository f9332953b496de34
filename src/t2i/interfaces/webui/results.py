"""The results column of txt2img and img2img: progress bar with ETA, live preview, the gallery,
the selected image's infotext and the "Send to" buttons; and the async loop that follows a
queued job and fills them.

A result is kept per browser session in a gr.State: the gallery's files (PNG with their
infotext, in the UI's cache folder, downloadable as they are), their infotexts and seeds.
"""
from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from t2i.interfaces.webui.bridge import Finished, Progress


@dataclass
class Results:
    progress: object
    preview: object
    gallery: object
    info: object
    state: object  # {"images": [path], "infotexts": [...], "seeds": [...], "grids": n}
    selected: object  # index of the selected gallery image
    send: dict  # "img2img" | "inpaint" | "extras" -> Button


def new_state():
    """The per-session result (gallery files, infotexts, seeds) and the selected index."""
    return gr.State({"images": [], "infotexts": [], "seeds": [], "grids": 0}), gr.State(0)


def build(name: str, state, selected) -> Results:
    progress = gr.HTML("", elem_id=f"{name}_progress", elem_classes=["t2i-progress-holder"])
    preview = gr.Image(label="Live preview", type="filepath", interactive=False, visible=False, height=256,
                       elem_id=f"{name}_preview", buttons=[])
    gallery = gr.Gallery(label="Output", elem_id=f"{name}_gallery", columns=4, height=420, format="png",
                         object_fit="contain", interactive=False, buttons=["download", "fullscreen"])
    with gr.Row(elem_id=f"{name}_send_row", elem_classes=["t2i-send-row"]):
        send = {"img2img": gr.Button("Send to img2img", size="sm", elem_id=f"{name}_send_img2img"),
                "inpaint": gr.Button("Send to inpaint", size="sm", elem_id=f"{name}_send_inpaint"),
                "extras": gr.Button("Send to extras", size="sm", elem_id=f"{name}_send_extras")}
    info = gr.HTML("", elem_id=f"{name}_info", elem_classes=["t2i-info"])
    gallery.select(_select, inputs=state, outputs=[info, selected], show_progress="hidden")
    return Results(progress, preview, gallery, info, state, selected, send)


def _select(state: dict, evt: gr.SelectData):
    index = evt.index if isinstance(evt.index, int) else 0
    return info_html(_infotext(state, index)), index


def _infotext(state: dict, index: int) -> str:
    texts = (state or {}).get("infotexts") or []
    return texts[index] if 0 <= index < len(texts) else ""


def selected_image(state: dict, index: int) -> str | None:
    images = (state or {}).get("images") or []
    if not images:
        return None
    return images[index] if 0 <= index < len(images) else images[0]


def selected_infotext(state: dict, index: int) -> str:
    return _infotext(state, index if 0 <= index < len((state or {}).get("images") or []) else 0)


def selected_seed(state: dict, index: int) -> int | None:
    """The seed of the selected image (a grid: the first image's), for ♻️."""
    seeds = (state or {}).get("seeds") or []
    grids = (state or {}).get("grids", 0)
    at = max(0, index - grids)
    return seeds[at] if at < len(seeds) else (seeds[0] if seeds else None)


# ----------------------------------------------------------------------------- html


def info_html(infotext: str) -> str:
    if not infotext:
        return ""
    prompt, _, rest = infotext.partition("\n")
    return f'<div class="t2i-infotext"><p>{html.escape(prompt)}</p><p>{html.escape(rest).replace(chr(10), "<br>")}</p></div>'


def error_html(message: str) -> str:
    return f'<div class="t2i-error"><b>Error:</b> {html.escape(str(message))}</div>'


def progress_html(update: Progress | None, note: str = "") -> str:
    if update is None:
        return ""
    if update.state == "queued":
        ahead = update.position
        text = "Waiting in the queue" + ("" if ahead is None else ": next" if ahead == 0 else
                                         f": {ahead} job{'s' if ahead != 1 else ''} ahead")
        return f'<div class="t2i-progress" data-state="queued"><div class="t2i-progress-text">{text}</div></div>'
    percent = max(0.0, min(100.0, update.fraction * 100))
    steps = f"step {update.step}/{update.steps}" if update.steps else "starting"
    batch = f", batch {update.job_no + 1}/{update.job_count}" if update.job_count > 1 else ""
    eta = f", ETA {_duration(update.eta_s)}" if update.step else ""
    return (f'<div class="t2i-progress" data-state="running" data-fraction="{update.fraction:.4f}">'
            f'<div class="t2i-progress-bar" style="width:{percent:.1f}%"></div>'
            f'<div class="t2i-progress-text">{percent:.0f}% ({steps}{batch}{eta}){html.escape(note)}</div></div>')


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# ----------------------------------------------------------------------------- finished jobs


def collect(ctx, finished: Finished, state: dict, prefix: str = "") -> dict:
    """The images of a finished job added to `state` (written as PNG files, infotext inside)."""
    info = finished.info()
    texts = info.get("infotexts") or extras_texts(finished)
    grids = info.get("index_of_first_image", 0) or 0
    images = []
    for i, data in enumerate(finished.images()):
        seed = (info.get("all_seeds") or [None] * (i + 1))[max(0, i - grids)] if i >= grids else "grid"
        images.append(ctx.write_png(data, f"{prefix}{i:02d}-{seed}"))
    return {"images": state["images"] + images, "infotexts": state["infotexts"] + texts[:len(images)],
            "seeds": state["seeds"] + list(info.get("all_seeds") or []),
            "grids": state["grids"] if state["images"] else grids}


def extras_texts(finished: Finished) -> list[str]:
    text = finished.answer.get("html_info") or ""
    return [text] * len(finished.images())
