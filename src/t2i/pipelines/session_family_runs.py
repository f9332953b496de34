"""How a Session runs `t2i sample` (a trained family's own sampler, or CLIP-guided optimisation)
and `t2i upscale` (an SR run or the upscaler library), each holding its model's lock."""
from __future__ import annotations

from t2i.errors import ModelLoadError, ParamError
from t2i.pipelines.sample import SampleParams, sample
from t2i.pipelines.schema import validate_strict
from t2i.pipelines.session_types import Output, RunResult, announce, image_list
from t2i.pipelines.upscale import UpscaleParams, resolve_upscale_params, upscale


def run_sample(session, params: SampleParams, images, settings, emit, image_names) -> RunResult:
    validate_strict(params)
    images = image_list(images)
    if params.clip_guided is not None:
        return _sample_clip_guided(session, params, images, settings, emit)
    entry = session.model(settings, kind="family")
    announce(session, entry)
    with entry.lock:
        grid, info, samples = sample(entry.loaded, params, images[0] if images else None,
                                     (image_names or [None])[0])
    outputs = [Output(grid, info, params.seed, params.prompt or "", kind="grid")]
    outputs += [Output(image, info, params.seed + i, params.prompt or "") for i, image in enumerate(samples)]
    for out in outputs:
        emit(out)
    return RunResult(outputs, params, entry.name, grid)


def _sample_clip_guided(session, params: SampleParams, images, settings, emit) -> RunResult:
    from t2i.checkpoints.registry import DEFAULT_MODEL_ALIAS
    from t2i.pipelines.clip_guided import sample_clip_guided

    if images:
        raise ParamError("--clip-guided starts from noise or a blank latent; leave out --complete")
    # the bundled model (`default`) and text LDMs load as diffusion models, class/unconditional LDM runs as families
    bundled = settings.model_path in (None, DEFAULT_MODEL_ALIAS)
    try:
        entry = session.model(settings, kind="diffusion" if bundled else "family")
    except ModelLoadError:  # e.g. a text LDM run: the family loader sends those to `t2i generate`
        if bundled:
            raise
        entry = session.model(settings, kind="diffusion")
    announce(session, entry)
    model = entry.loaded.model
    if not hasattr(model, "decode_latents"):
        raise ParamError(f"--clip-guided needs a latent diffusion model; {entry.name} is a "
                         f"{getattr(entry.loaded, 'family', 'other')} model (give `default` or an LDM run)")
    with entry.lock:
        grid, info, samples = sample_clip_guided(model, params, entry.name)
    outputs = [Output(grid, info, params.seed, params.clip_guided, kind="grid")]
    outputs += [Output(image, info, params.seed + i, params.clip_guided) for i, image in enumerate(samples)]
    for out in outputs:
        emit(out)
    return RunResult(outputs, params, entry.name, grid)


def run_upscale(session, params: UpscaleParams, images, settings, emit) -> RunResult:
    from t2i.pipelines.model_upscalers import UpscalerLibrary
    from t2i.runtime import check_device

    validate_strict(params)
    images = image_list(images)
    if not images:
        raise ParamError("upscaling needs at least one image")
    library = UpscalerLibrary(tuple(settings.upscaler_dirs), settings.face_restorer, settings.upscaler_tile,
                              settings.upscaler_tile_overlap, str(check_device(settings.device)))
    entry = session.model(settings, kind="sr") if settings.model_path is not None else None
    if entry is None:
        result = upscale(images, params, None, library=library)
    else:
        resolve_upscale_params(params, entry.loaded)  # a wrong scale fails before the summary line
        announce(session, entry)
        with entry.lock:
            result = upscale(images, params, entry.loaded, library=library)  # library: the face restorer
    seeds = result.seeds or [None] * len(result.images)
    outputs = [Output(image, info, seed, "") for image, info, seed in zip(result.images, result.infotexts, seeds)]
    for out in outputs:
        emit(out)
    return RunResult(outputs, result.params, entry.name if entry else None, result)
