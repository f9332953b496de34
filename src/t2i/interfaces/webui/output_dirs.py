"""The output folders of the Settings tab (the web UI's "Paths for saving"): where the UI's txt2img
and img2img images and grids, and the Extras tab's results, are saved, each a folder inside the server's output folder
(`t2i serve --outdir`): the server writes nowhere else, so a folder outside it, or one that leaves
it through `..` or a link, is refused when the settings are applied.

A folder that is the API's own for that kind (OUTDIR/txt2img, OUTDIR/img2img, OUTDIR/extras) is left to the API to
save into, as for any API job; another folder makes the job ask the API not to save and the UI
save the answer's PNG bytes (infotext inside, the same bytes) there itself, named as the API names
them (NNNNN-seed-prompt.png; an extras batch: each file's own name).

    folder = resolve(Path("outputs"), "my-txt2img", "Output directory for txt2img images")  # outputs/my-txt2img
    ui_saves(settings, root, "txt2img")     # -> {"images": Path(...), "grids": None}: grids left to the API
"""
from __future__ import annotations

import threading
from pathlib import Path

from t2i.errors import ParamError

# (kind, what) -> the UISettings field naming its folder; the API saves each kind in OUTDIR/<kind>
FIELDS = {("txt2img", "images"): "outdir_txt2img_samples", ("txt2img", "grids"): "outdir_txt2img_grids",
          ("img2img", "images"): "outdir_img2img_samples", ("img2img", "grids"): "outdir_img2img_grids",
          ("extras", "images"): "outdir_extras_samples"}  # extras make no grids
_lock = threading.Lock()  # two UI jobs finishing at once never pick the same file name


def resolve(root: Path, value: str, label: str) -> Path:
    """The folder `value` (relative to the output folder `root`, or absolute inside it), links
    followed; ParamError when it is outside `root` or is `root` itself."""
    root = Path(root).resolve()
    text = (value or "").strip()
    if not text:
        raise ParamError(f"{label}: give a folder inside the server's output folder ({root.name}/), e.g. txt2img")
    if "\0" in text:
        raise ParamError(f"{label}: {text!r} is not a folder name")
    folder = (root / Path(text).expanduser()).resolve()
    where = "is the output folder itself" if folder == root else "is outside the server's output folder"
    if folder == root or root not in folder.parents:  # the server's path is not shown: the page may be remote
        raise ParamError(f"{label}: {text!r} {where} ({root.name}/); this server saves images only in folders "
                         f"inside it (t2i serve --outdir sets it): give one such as txt2img-images")
    return folder


def check(settings, root: Path) -> None:
    """Every output folder of `settings` resolves inside `root` (ParamError naming the first that does not)."""
    from t2i.interfaces.webui.builder import field_of
    from t2i.pipelines.params import label_of

    for name in FIELDS.values():
        resolve(root, getattr(settings, name), label_of(field_of(type(settings), name)[0]))


def ui_saves(settings, root: Path, kind: str) -> dict[str, Path | None]:
    """{"images": folder, "grids": folder}: the folders the UI saves this kind's outputs into
    itself, None where the API's own folder is chosen (the API saves there) or saving is off."""
    out: dict[str, Path | None] = {"images": None, "grids": None}
    if (kind, "images") not in FIELDS:
        return out
    root = Path(root).resolve()
    for what, on in (("images", settings.save_images), ("grids", settings.save_grids)):
        if (kind, what) not in FIELDS:
            continue
        folder = resolve(root, getattr(settings, FIELDS[(kind, what)]), FIELDS[(kind, what)])
        if on and folder != root / kind:
            out[what] = folder
    return out


def job_flags(settings, root: Path, kind: str) -> dict:
    """The API request's saving flags: the API saves what goes to its own folders only."""
    mine = ui_saves(settings, root, kind)
    if kind == "extras":  # the extras requests have one switch
        return {"save_images": settings.save_images and mine["images"] is None}
    images = settings.save_images and mine["images"] is None
    grids = settings.save_grids and mine["grids"] is None
    return {"save_images": images or grids, "do_not_save_samples": not images, "do_not_save_grid": not grids}


def save_answer(folders: dict[str, Path | None], finished, names: list[str] | tuple = ()) -> list[Path]:
    """The images of a finished job (grids first, as the API answers) into the UI's folders;
    `names`: the images' own file names (an extras batch), else they are numbered."""
    from t2i.atomic import write_bytes
    from t2i.outputs import free_named_path, next_image_path

    info = finished.info()
    grids = info.get("index_of_first_image", 0) or 0
    seeds = info.get("all_seeds") or []
    prompts = info.get("all_prompts") or []
    written = []
    for i, data in enumerate(finished.images()):
        folder = folders["grids" if i < grids else "images"]
        if folder is None:
            continue
        n = i - grids
        seed = seeds[n] if 0 <= n < len(seeds) and seeds[n] is not None else (info.get("seed") or 0)
        prompt = prompts[n] if 0 <= n < len(prompts) else info.get("prompt") or ""
        with _lock:
            if 0 <= n < len(names) and names[n]:
                path = free_named_path(folder, names[n])
            else:
                path = next_image_path(folder, seed, prompt)
                path = path.with_name(("grid-" if i < grids else "") + path.name)
            write_bytes(path, data)
        written.append(path)
    return written
