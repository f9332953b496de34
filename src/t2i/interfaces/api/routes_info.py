"""What the server offers (samplers, models, LoRAs, ...), its options, and its health. Lists show
names and paths relative to their folders, never a server path."""
import os
from typing import Any

from fastapi import APIRouter, Body, Request

from t2i.errors import version
from t2i.interfaces.api.catalog import CLASSIC_UPSCALERS
from t2i.interfaces.api.errors import ApiError
from t2i.interfaces.api.scripts import IMG2IMG_SCRIPTS, TXT2IMG_SCRIPTS


def _schedule_id(label: str) -> str:
    return label.lower().replace(" ", "_")


def _memory() -> dict:
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    ram: dict[str, Any] = {}
    try:
        total = os.sysconf("SC_PHYS_PAGES") * page
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        ram = {"total": total, "free": free, "used": total - free}
        with open("/proc/self/statm") as f:
            ram["process_rss"] = int(f.read().split()[1]) * page
    except (OSError, ValueError, AttributeError):
        pass
    cuda: dict[str, Any] = {"error": "no CUDA device"}
    try:
        import torch

        if torch.cuda.is_available():
            free_b, total_b = torch.cuda.mem_get_info()
            cuda = {"system": {"free": free_b, "used": total_b - free_b, "total": total_b},
                    "active": {"peak": torch.cuda.max_memory_allocated(), "current": torch.cuda.memory_allocated()}}
    except Exception as err:  # memory is a report: a driver error shows, it does not fail the request
        cuda = {"error": type(err).__name__}
    return {"ram": ram, "cuda": cuda}


def router() -> APIRouter:
    api = APIRouter(tags=["web UI: lists and options"])
    web = "/sdapi/v1"

    @api.get(web + "/options")
    def get_options(request: Request):
        service, catalog = request.app.state.service, request.app.state.catalog
        options = dict(service.options)
        return {**options, "sd_checkpoint_hash": catalog.hashes.get(options["sd_model_checkpoint"]),
                "samples_format": "png", "samples_save": True, "grid_save": True, "eta_ddim": 0.0,
                "eta_ancestral": 1.0, "show_progress_every_n_steps": 1}

    @api.post(web + "/options")
    def set_options(request: Request, body: dict[str, Any] = Body(...)):
        """sd_model_checkpoint (a title of GET sd-models: the model of the jobs queued from now on),
        sd_vae, CLIP_stop_at_last_layers; other keys are ignored and listed."""
        service, catalog = request.app.state.service, request.app.state.catalog
        updates, ignored = {}, []
        for key, value in body.items():
            if key == "sd_model_checkpoint":
                updates[key] = catalog.checkpoint(value, key).title
            elif key == "sd_vae":
                item = catalog.vae(value, key)
                updates[key] = item.title if item else "Automatic"
            elif key == "CLIP_stop_at_last_layers":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                    raise ApiError(422, f"{key} must be a whole number 1..12, got {value!r}", field=key)
                updates[key] = value
            else:
                ignored.append(key)
        service.set_options(updates)
        return {"updated": sorted(updates), "ignored": ignored}

    @api.get(web + "/cmd-flags")
    def cmd_flags(request: Request):
        c = request.app.state.config
        return {"api": True, "listen": not c.is_loopback, "port": c.port, "api_auth": bool(c.api_auth),
                "cors_allow_origins": list(c.cors_allow_origins), "queue_size": c.queue_size,
                "device": [d or "auto" for d in c.devices], "precision": c.precision, "threads": c.threads,
                "limits": {k: getattr(c.limits, k) for k in c.limits.__dataclass_fields__}}

    @api.get(web + "/samplers")
    def samplers():
        from t2i.diffusion.samplers import SAMPLERS

        return [{"name": name, "aliases": list(spec.aliases), "options": {}} for name, spec in SAMPLERS.items()]

    @api.get(web + "/schedulers")
    def schedulers():
        from t2i.diffusion.samplers import SCHEDULE_TYPES

        return [{"name": _schedule_id(label), "label": label, "aliases": None, "default_rho": -1,
                 "need_inner_model": False} for label in SCHEDULE_TYPES]

    @api.get(web + "/upscalers")
    def upscalers(request: Request):
        classic = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": None}
                   for name in CLASSIC_UPSCALERS]
        catalog = request.app.state.catalog
        files = [{"name": name, "model_name": "upscaler file", "model_path": None, "model_url": None, "scale": None}
                 for name in catalog.image_upscalers()]
        return classic + files + [{"name": item.name, "model_name": "t2i super-resolution", "model_path": item.title,
                                   "model_url": None, "scale": None} for item in catalog.upscalers()]

    @api.get(web + "/latent-upscale-modes")
    def latent_upscale_modes():
        from t2i.pipelines.generation_params import LATENT_UPSCALER_NAMES

        return [{"name": name} for name in LATENT_UPSCALER_NAMES]

    @api.get(web + "/sd-models")
    def sd_models(request: Request):
        catalog = request.app.state.catalog
        return [{"title": item.title, "model_name": item.name, "hash": catalog.hashes.get(item.title), "sha256": None,
                 "filename": item.title, "config": None} for item in catalog.checkpoints()]

    @api.get(web + "/sd-vae")
    def sd_vae(request: Request):
        return [{"model_name": item.title, "filename": item.title} for item in request.app.state.catalog.vaes()]

    @api.get(web + "/loras")
    def loras(request: Request):
        return [{"name": item.name, "alias": item.name, "path": item.title, "metadata": {}}
                for item in request.app.state.catalog.loras()]

    @api.get(web + "/embeddings")
    def embeddings(request: Request):
        loaded = {item.name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None,
                              "vectors": None} for item in request.app.state.catalog.embeddings()}
        return {"loaded": loaded, "skipped": {}}

    @api.get(web + "/prompt-styles")
    def prompt_styles(request: Request):
        from t2i.pipelines.styles import default_styles_file, load_styles

        path = request.app.state.config.styles_file or default_styles_file()
        if path is None:
            return []
        try:
            styles = load_styles(path)
        except (ValueError, FileNotFoundError) as err:
            raise ApiError(422, f"the server's styles file cannot be read: {err}") from None
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()]

    @api.get(web + "/scripts")
    def scripts():
        return {"txt2img": list(TXT2IMG_SCRIPTS), "img2img": list(IMG2IMG_SCRIPTS)}

    @api.get(web + "/memory")
    def memory():
        return _memory()

    @api.post(web + "/refresh-checkpoints")
    def refresh_checkpoints(request: Request):
        request.app.state.catalog.refresh_checkpoints()
        return {}

    @api.post(web + "/refresh-loras")
    def refresh_loras(request: Request):
        request.app.state.catalog.refresh_loras()
        return {}

    @api.get("/health", tags=["operations"])
    def health(request: Request):
        service = request.app.state.service
        workers = [{"name": w.name, "device": w.device or "auto", "ready": w.ready,
                    "job": w.job.id if w.job is not None else None, "error": w.error} for w in service.workers]
        status = "stopping" if service.draining else ("ok" if all(w["ready"] for w in workers) else "starting")
        return {"status": status, "version": version(), "workers": workers, "queue": service.store.counts()}

    return api
