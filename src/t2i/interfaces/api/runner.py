"""One job in a worker: its prepared request -> `Session.run` -> the web UI's answer JSON.

Each image is encoded to PNG (infotext inside) once, the moment the run hands it over
(`on_output`): those bytes are both saved under the output folder and sent in the answer, so
the file and the answer are the same image.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

from t2i.errors import version
from t2i.interfaces.api import codec, limits
from t2i.interfaces.api.translate import Prepared
from t2i.outputs import free_named_path, next_image_path
from t2i.pipelines.generation_params import MAX_SEED
from t2i.pipelines.load_settings import LoadSettings

FOLDERS = {"txt2img": "txt2img", "img2img": "img2img", "extra-single-image": "extras", "extra-batch-images": "extras"}


class Writer:
    """Saves PNG bytes under the output folder; one lock, so two workers never pick one name."""

    def __init__(self, outdir: Path):
        self.outdir = outdir
        self._lock = threading.Lock()

    def save(self, kind: str, data: bytes, seed: int | None, prompt: str, prefix: str = "",
             name: str | None = None) -> str:
        from t2i.atomic import write_bytes

        folder = self.outdir / FOLDERS[kind]
        with self._lock:
            if name:  # extra-batch-images: the client's name, made safe, never over an existing file
                path = free_named_path(folder, name)
            else:
                path = next_image_path(folder, seed if seed is not None else 0, prompt)
                path = path.with_name(prefix + path.name)
            write_bytes(path, data)
        return path.relative_to(self.outdir).as_posix()


class Collector:
    """`on_output`: each output as PNG bytes, saved when the request asks for it."""

    def __init__(self, prepared: Prepared, writer: Writer):
        self.prepared = prepared
        self.writer = writer
        self.items: list[tuple[object, bytes]] = []  # (Output, PNG bytes)
        self.saved: list[str] = []

    def __call__(self, output) -> None:
        data = codec.png_bytes(output.image, output.infotext)
        self.items.append((output, data))
        p = self.prepared
        if p.save_grids if output.kind == "grid" else p.save_images:
            index = len(self.items) - 1
            name = p.names[index] if index < len(p.names) and p.names[index] else None
            self.saved.append(self.writer.save(p.kind, data, output.seed, output.prompt, output.prefix, name))


def run_settings(base: LoadSettings, prepared: Prepared) -> LoadSettings:
    return replace(base, model=prepared.model.path if prepared.model else None,
                   vae=prepared.vae.path if prepared.vae else None)


def run(session, prepared: Prepared, base: LoadSettings, writer: Writer, lim, *, job_id: str, progress=None,
        control=None) -> tuple[dict, str | None]:
    """Run a prepared job; (the answer, the model's hash)."""
    settings = run_settings(base, prepared)
    collector = Collector(prepared, writer)
    model_hash = None
    if prepared.kind in ("txt2img", "img2img"):
        from t2i.pipelines.session_runs import vae_size

        entry = session.model(settings)
        model_hash = getattr(entry.loaded, "hash", None)
        limits.check_run_size(vae_size(prepared.params, entry.loaded, prepared.images), lim)
    result = session.run(prepared.params, images=prepared.images, mask=prepared.mask, script=prepared.script,
                         settings=settings, progress=progress, control=control, on_output=collector)
    if prepared.kind.startswith("extra-"):
        return extras_answer(prepared, collector), model_hash
    return generation_answer(prepared, result, collector, job_id, model_hash), model_hash


def _ordered(collector: Collector):
    """Grids first, then the images, as the web UI answers a script run."""
    grids = [it for it in collector.items if it[0].kind == "grid"]
    return grids + [it for it in collector.items if it[0].kind != "grid"], len(grids)


def generation_answer(prepared: Prepared, result, collector: Collector, job_id: str, model_hash) -> dict:
    ordered, n_grids = _ordered(collector)
    images = [out for out, _ in ordered[n_grids:]]
    params = result.params
    seeds = [out.seed for out in images]
    first_seed = seeds[0] if seeds else params.seed
    info = {
        "prompt": params.prompt,
        "all_prompts": [out.prompt for out in images],
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * len(images),
        "seed": first_seed,
        "all_seeds": seeds,
        "subseed": params.subseed,
        "all_subseeds": [(params.subseed + (s - params.seed)) % (MAX_SEED + 1) if s is not None else None
                         for s in seeds],
        "subseed_strength": params.subseed_strength,
        "width": params.width,
        "height": params.height,
        "sampler_name": params.sampler,
        "scheduler": params.scheduler,
        "cfg_scale": params.cfg_scale,
        "steps": params.steps,
        "batch_size": params.batch_size,
        "n_iter": getattr(params, "n_iter", 1),
        "restore_faces": getattr(params, "restore_faces", False),
        "face_restoration_model": None,
        "sd_model_name": result.model,
        "sd_model_hash": model_hash,
        "sd_vae_name": prepared.vae.title if prepared.vae else None,
        "sd_vae_hash": None,
        "seed_resize_from_w": params.seed_resize_from_w,
        "seed_resize_from_h": params.seed_resize_from_h,
        "denoising_strength": getattr(params, "denoising_strength", None),
        "extra_generation_params": {},
        "index_of_first_image": n_grids,
        "infotexts": [out.infotext for out, _ in ordered],
        "styles": list(prepared.request.styles or []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": params.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": f"t2i {version()}",
        "job_id": job_id,
        "t2i_saved": collector.saved,  # under the output folder: GET /t2i/v1/outputs/{path}
    }
    return {"images": [codec.b64(data) for _, data in ordered] if prepared.send_images else [],
            "parameters": prepared.echo(), "info": json.dumps(info)}


def extras_answer(prepared: Prepared, collector: Collector) -> dict:
    images = [codec.b64(data) for _, data in collector.items]
    info = collector.items[0][0].infotext if collector.items else ""
    if prepared.kind == "extra-single-image":
        return {"html_info": info, "image": images[0] if images else None}
    return {"html_info": info, "images": images}
