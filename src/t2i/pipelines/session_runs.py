"""How a Session runs each kind of params: the diffusion pipelines batch by batch (so a front door
can store every image as soon as it is done) and the scripts; `t2i sample` and `t2i upscale` are
in session_family_runs.

Every diffusion run holds its model's lock for all it changes on the model: the memory plan
(attention slicing, VAE tiling, planned for the largest image the VAE sees in this run), the
extra-network merges and tiling padding (inside the pipelines) and the sampling.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

from t2i.errors import ParamError
from t2i.pipelines.img2img import Img2ImgParams, img2img, resolve_img2img_params
from t2i.pipelines.inpaint import InpaintParams, inpaint, resolve_inpaint_params
from t2i.pipelines.load_settings import LoadSettings
from t2i.pipelines.loopback import LoopbackOptions, loopback
from t2i.pipelines.outpaint import OutpaintParams, extents, outpaint, parse_directions
from t2i.pipelines.postprocess import (
    check_before_run,
    configure_image_tools,
    finish_images,
)
from t2i.pipelines.prompt_matrix import PromptMatrixOptions, prompt_matrix
from t2i.pipelines.sample import SampleParams
from t2i.pipelines.schema import validate_strict
from t2i.pipelines.script_options import Img2ImgAltOptions, SDUpscaleOptions
from t2i.pipelines.script_progress import script_steps
from t2i.pipelines.scripting import fix_seeds
from t2i.pipelines.session_family_runs import run_sample, run_upscale
from t2i.pipelines.session_types import Output, RunResult, announce, image_list
from t2i.pipelines.styles import (
    apply_styles,
    default_styles_file,
    load_styles,
    select_styles,
)
from t2i.pipelines.txt2img import MAX_SEED, GenerationParams, resolve_params, txt2img
from t2i.pipelines.upscale import UpscaleParams
from t2i.pipelines.xyz_axes import parse_axis
from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot


def dispatch(session, params, *, images, mask, script, settings: LoadSettings, progress, control, on_output,
             image_names) -> RunResult:
    emit = on_output or (lambda output: None)
    if isinstance(params, SampleParams):
        return run_sample(session, params, images, settings, emit, image_names)
    if isinstance(params, UpscaleParams):
        return run_upscale(session, params, images, settings, emit)
    if not isinstance(params, GenerationParams):
        raise ParamError(f"no pipeline runs {type(params).__name__}")
    validate_strict(params)
    if script is not None:
        return _script(session, params, script, images, mask, settings, emit, progress, control)
    return _generate(session, params, images, mask, settings, progress, control, emit)


# ----------------------------------------------------------------------------- inputs and styles


def styles_table(session, names) -> dict | None:
    """The session's styles file (default ./styles.csv) when styles are asked for; unknown names
    fail here, before any work."""
    if not names:
        return None
    path = session.styles_file or default_styles_file()
    table = load_styles(path) if path is not None else None
    select_styles(table, list(names))
    return table


def with_styles(session, params):
    """The params with their styles expanded into the prompts (and `styles` emptied, so they
    never apply twice)."""
    if not params.styles:
        return params
    return replace(apply_styles(params, list(params.styles), styles_table(session, params.styles)), styles=())


# ----------------------------------------------------------------------------- model in use


def vae_size(params, loaded, images) -> tuple[int, int]:
    """The largest image the VAE encodes or decodes in this run: txt2img's hires pass, the img2img
    working size (default: the input's), an only-masked inpainting crop, the outpainted canvas."""
    if not isinstance(params, Img2ImgParams):
        resolved = resolve_params(params, loaded)
        if getattr(resolved, "enable_hr", False):
            from t2i.pipelines.hires import hires_size

            return hires_size(resolved, loaded.model.vae_scale_factor)
        return resolved.width, resolved.height
    size = images[0].size
    if isinstance(params, OutpaintParams):
        add = extents(size, params.pixels, parse_directions(params.directions), loaded.model.vae_scale_factor)
        size = (size[0] + add["left"] + add["right"], size[1] + add["up"] + add["down"])
    if isinstance(params, InpaintParams):
        resolved = resolve_inpaint_params(params, loaded, size)
    else:
        resolved = resolve_img2img_params(params, loaded, size)
    return resolved.width, resolved.height


@contextmanager
def model_in_use(session, entry, settings: LoadSettings, width: int, height: int):
    """Hold the model's lock, with the memory plan for a width x height image applied (undone
    after); yields the plan. Announces the model's summary line once."""
    from t2i.memory import MemoryOptions, memory_applied, plan_memory

    loaded = entry.loaded
    with entry.lock:
        device = loaded.runtime.device
        plan = plan_memory(MemoryOptions(settings.attention_slicing, settings.vae_tiling, "none"), device,
                           width, height)
        shown = replace(plan, offload=settings.offload if device.type == "cuda" else "none")
        configure_image_tools(loaded, settings)  # upscaler folders, face restorer, safety checker
        announce(session, entry, shown)
        with memory_applied(loaded.model, plan, device):
            yield shown
        if entry.compile is not None and entry.compile.cache is not None:
            entry.compile.cache.commit()  # a new size compiled during the run joins the compile cache


# ----------------------------------------------------------------------------- diffusion pipelines


def _run_one(loaded, params, images, masks, progress, control):
    if isinstance(params, OutpaintParams):
        return outpaint(loaded, params, images, progress=progress, control=control)
    if isinstance(params, InpaintParams):
        if masks is None:
            raise ParamError("inpainting needs a mask")
        return inpaint(loaded, params, images, masks, progress=progress, control=control)
    if isinstance(params, Img2ImgParams):
        if masks is not None:
            raise ParamError("a mask needs inpainting parameters (InpaintParams), not Img2ImgParams")
        return img2img(loaded, params, images, progress=progress, control=control)
    if images is not None:
        raise ParamError(f"{type(params).__name__} generates from text; use Img2ImgParams to start from images")
    return txt2img(loaded, params, progress=progress, control=control)


def _batch_progress(progress, batch: int, batches: int, passes: int, start: float):
    """Progress events of one batch's run, renumbered as part of the whole run."""
    if progress is None:
        return None

    def on_progress(event):
        job, jobs = batch * passes + event.job, batches * passes
        elapsed = time.perf_counter() - start
        done = (job + event.step / max(event.total, 1)) / jobs
        eta = elapsed / done - elapsed if done > 0 else 0.0
        progress(replace(event, job=job, jobs=jobs, batch=batch, batches=batches, elapsed_s=elapsed, eta_s=eta))
    return on_progress


def _rotate(items, by: int):
    if items is None:
        return None
    by %= len(items)
    return items[by:] + items[:by]


def _generate(session, params, images, mask, settings, progress, control, emit) -> RunResult:
    params = fix_seeds(with_styles(session, params))  # one random seed for the whole run
    images = image_list(images)
    if isinstance(params, Img2ImgParams) and not images:
        raise ParamError(f"{type(params).__name__} needs an input image")
    masks = image_list(mask)
    if masks is not None and images is not None and len(masks) == 1:
        masks = masks * len(images)
    entry = session.model(settings)
    loaded = entry.loaded
    with entry.lock:  # the run's upscaler folders decide which hr_upscaler names exist
        configure_image_tools(loaded, settings)
        width, height = vae_size(params, loaded, images)  # also fails on bad params before any work
    outputs, first = [], None
    passes = 2 if getattr(params, "enable_hr", False) else 1
    start = time.perf_counter()
    with model_in_use(session, entry, settings, width, height):
        check_before_run(loaded, params, width, height)
        for batch in range(params.n_iter):
            if control is not None and control.interrupted:
                break
            offset = batch * params.batch_size  # image i of the run has seed + i and input i % len
            seed_offset = 0 if params.fixed_code else offset  # fixed code: every image has the run's seed
            one = replace(params, n_iter=1, seed=(params.seed + seed_offset) % (MAX_SEED + 1),
                          subseed=(params.subseed + offset) % (MAX_SEED + 1))
            result = _run_one(loaded, one, _rotate(images, offset), _rotate(masks, offset),
                              _batch_progress(progress, batch, params.n_iter, passes, start), control)
            first = first or result
            finished, infotexts = finish_images(loaded, one, result.images, result.infotexts)
            for image, seed, info in zip(finished, result.seeds, infotexts):
                out = Output(image, info, seed, params.prompt)
                outputs.append(out)
                emit(out)
    resolved = replace(first.params, n_iter=params.n_iter, seed=params.seed, subseed=params.subseed) \
        if first is not None else params
    return RunResult(outputs, resolved, loaded.name, first)


# ----------------------------------------------------------------------------- scripts


def _largest_axis_size(params, options: XYZOptions, width: int, height: int) -> tuple[int, int]:
    """The X/Y/Z plot's Width and Height axes can ask for larger images than the params."""
    for spec in (options.x, options.y, options.z):
        axis = parse_axis(spec, type(params))
        if axis is not None and axis.option.field in ("width", "height"):
            largest = max(axis.values)
            width, height = (max(width, largest), height) if axis.option.field == "width" else \
                (width, max(height, largest))
    return width, height


def _with_image_tools(loaded, settings):
    """A Checkpoint axis's model, finishing its cells with the run's safety checker and restorer."""
    configure_image_tools(loaded, settings)
    return loaded


def _script(session, params, script, images, mask, settings, emit, progress=None, control=None) -> RunResult:
    images = image_list(images)
    masks = image_list(mask)
    if isinstance(params, Img2ImgParams) and not images:
        raise ParamError(f"{type(params).__name__} needs an input image")
    entry = session.model(settings)
    loaded = entry.loaded
    with entry.lock:  # the run's upscaler folders decide which hr_upscaler names exist
        configure_image_tools(loaded, settings)
        width, height = vae_size(params, loaded, images)
    outputs: list[Output] = []

    def keep(image, info, seed, prompt, prefix="", kind="image"):
        out = Output(image, info, seed, prompt, prefix, kind)
        outputs.append(out)
        emit(out)

    if isinstance(script, XYZOptions):
        validate_strict(script)
        for spec in (script.x, script.y, script.z):  # bad axes fail before the run
            axis = parse_axis(spec, type(params))
            for value in axis.values if axis is not None and axis.option.kind == "checkpoint" else ():
                session.checkpoint_path(value)  # a name the session's resolver refuses
        width, height = _largest_axis_size(params, script, width, height)
        names = list(params.styles)
        table = styles_table(session, names)
        with model_in_use(session, entry, settings, width, height):
            result = xyz_plot(loaded, replace(params, styles=()), script, images=images, masks=masks, styles=table,
                              style_names=names, load_checkpoint=lambda path: _with_image_tools(session.model(
                                  replace(settings, model=session.checkpoint_path(path))).loaded, settings),
                              progress=lambda done, total: session.note(f"cell {done}/{total}"),
                              callback=script_steps(loaded, params, script, progress, control))
        first = result.cells[0]
        keep(result.grid, result.infotext, first.seeds[0], first.params.prompt, "xyz_grid-", "grid")
        nz = len(result.sub_grids)
        if script.include_sub_grids and nz > 1:
            per_z = len(result.cells) // nz
            for iz, (grid, info) in enumerate(zip(result.sub_grids, result.sub_grid_infotexts)):
                cell = result.cells[iz * per_z] or first
                keep(grid, info, cell.seeds[0], cell.params.prompt, "xyz_grid-", "grid")
        if script.include_sub_images:
            for cell, image in zip(result.cells, result.cell_images):
                if cell is not None:  # None: a cell an interrupt left out
                    keep(image, cell.infotexts[0], cell.seeds[0], cell.params.prompt)
        _note_interrupt(session, result)
        return RunResult(outputs, params, loaded.name, result)
    if isinstance(script, PromptMatrixOptions):
        validate_strict(script)
        names = list(params.styles)
        table = styles_table(session, names)
        with model_in_use(session, entry, settings, width, height):
            result = prompt_matrix(loaded, replace(params, styles=()), script, images=images, masks=masks,
                                   styles=table, style_names=names,
                                   callback=script_steps(loaded, params, script, progress, control))
        first = result.results[0]
        keep(result.grid, result.infotext, first.seeds[0], first.params.prompt, "prompt_matrix-", "grid")
        for run in result.results:
            keep(run.images[0], run.infotexts[0], run.seeds[0], run.params.prompt)
        session.note(f"{len(result.prompts)} prompts")
        _note_interrupt(session, result)
        return RunResult(outputs, params, loaded.name, result)
    if isinstance(script, LoopbackOptions):
        validate_strict(script)
        params = with_styles(session, params)
        if not images:
            raise ParamError("loopback needs an input image")
        with model_in_use(session, entry, settings, width, height):
            result = loopback(loaded, params, images[0], script, mask=masks[0] if masks else None,
                              callback=script_steps(loaded, params, script, progress, control))
        for frame, info, seed in zip(result.images, result.infotexts, result.seeds):
            keep(frame, info, seed, params.prompt)
        if len(result.images) > 1:
            keep(result.grid, result.infotexts[0], result.seeds[0], params.prompt, "loopback-", "grid")
        _note_interrupt(session, result)
        return RunResult(outputs, params, loaded.name, result)
    if isinstance(script, (SDUpscaleOptions, Img2ImgAltOptions)):
        return _image_script(session, entry, params, script, images, settings, keep, outputs)
    raise ParamError(f"unknown script {type(script).__name__}; t2i runs X/Y/Z plot, prompt matrix, loopback, SD "
                     f"upscale and img2img alternative test")


def _note_interrupt(session, result) -> None:
    """An interrupted script returns what it finished; say so where the run's notes go."""
    if result.interrupted:
        session.note(result.interrupted)


def _image_script(session, entry, params, script, images, settings, keep, outputs) -> RunResult:
    """SD upscale and img2img alternative test: one input image, Img2ImgParams."""
    validate_strict(script)
    name = "SD upscale" if isinstance(script, SDUpscaleOptions) else "img2img alternative test"
    if not isinstance(params, Img2ImgParams) or isinstance(params, InpaintParams):
        raise ParamError(f"{name} runs img2img: pass Img2ImgParams")
    if not images:
        raise ParamError(f"{name} needs an input image")
    params = with_styles(session, params)
    loaded = entry.loaded
    if isinstance(script, SDUpscaleOptions):
        from t2i.pipelines.sd_upscale import sd_upscale

        tile = (params.width or loaded.model.config.resolution, params.height or loaded.model.config.resolution)
        with model_in_use(session, entry, settings, *tile):
            result = sd_upscale(loaded, params, images[0], script)
            finished, infotexts = finish_images(loaded, params, result.images, result.infotexts)
    else:
        from t2i.pipelines.img2img_alt import img2img_alt

        width, height = vae_size(params, loaded, images)
        with model_in_use(session, entry, settings, width, height):
            result = img2img_alt(loaded, params, images[0], script)
            finished, infotexts = finish_images(loaded, params, result.images, result.infotexts)
    for image, info, seed in zip(finished, infotexts, result.seeds):
        keep(image, info, seed, params.prompt)
    return RunResult(outputs, result.params, loaded.name, result)
