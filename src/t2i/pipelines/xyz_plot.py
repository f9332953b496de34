"""X/Y/Z plot: one image per combination of up to three parameters, in a grid with labelled axes,
the web UI's script of that name.

    options = XYZOptions(x="Steps: 5,10,20", y="Sampler: Euler a, DDIM")
    result = xyz_plot(loaded, Txt2ImgParams(prompt="a red circle", seed=1), options)
    result.grid.save("plot.png")

Each cell is an ordinary run (txt2img, or img2img / inpaint when `params` are theirs) of the
params with the cell's axis values applied in the order X, Y, Z, so a cell equals the direct run
with those params and carries that run's infotext. Axis types and value syntax: see xyz_axes.
Columns are X values, rows Y values; each Z value makes an X/Y sub-grid, and the sub-grids sit
side by side under their Z labels. A cell with several images (batch size or batch count > 1)
shows them as a grid.

Seeds follow the web UI: unless `keep_random_seeds`, seed -1 (and variation seed -1) become one
random seed for the whole plot, and -1 values on a Seed or Var. seed axis become random values,
so cells differ only in what the axes change. The grid's infotext is the first cell's, plus
`Script: X/Y/Z plot`, `X Type`, `X Values` (as typed) and `Fixed X Values` (the seeds used, for
seed axes), and the same for Y and Z.

Interrupted (script_progress.ScriptInterrupted from the step callback) after the first cell, the
plot stops and returns its grid with the cells not run left black, as the web UI does;
`interrupted` then says how far it got and `cells` holds None for those cells.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from t2i.checkpoints.registry import load_model
from t2i.outputs import make_grid
from t2i.pipelines.script_options import XYZOptions  # noqa: F401  (re-exported)
from t2i.pipelines.annotated_grid import GridLabel, annotate_grid, labels, tile_images
from t2i.pipelines.params import ParamError
from t2i.pipelines.postprocess import finish_grid
from t2i.pipelines.schema import validate_strict as validate
from t2i.pipelines.script_progress import ScriptInterrupted, partial_note
from t2i.pipelines.scripting import add_infotext_params, check_params, fix_seeds, random_seed, run_pipeline
from t2i.pipelines.styles import apply_styles
from t2i.pipelines.txt2img import GenerationParams, GenerationResult, StepCallback
from t2i.pipelines.xyz_axes import Axis, Cell, parse_axis

SCRIPT_NAME = "X/Y/Z plot"
SEED_AXES = ("Seed", "Var. seed")
MAX_GRID_PIXELS = 200_000_000  # the web UI's default limit (200 megapixels)
@dataclass
class XYZResult:
    grid: Image.Image  # every Z sub-grid side by side, labelled
    infotext: str
    sub_grids: list[Image.Image]  # the labelled X/Y grid of each Z value
    sub_grid_infotexts: list[str]
    cells: list[GenerationResult | None]  # cell (ix, iy, iz) at ix + iy * nx + iz * nx * ny; None: not run
    cell_images: list[Image.Image]  # what each cell shows
    axes: tuple[Axis | None, Axis | None, Axis | None]
    images: list[Image.Image] = field(default_factory=list)  # grid, then what the options include
    infotexts: list[str] = field(default_factory=list)
    interrupted: str | None = None  # how far an interrupted plot got (partial_note)


def _fix_axis_seeds(axis: Axis | None) -> Axis | None:
    if axis is None or axis.option.label not in SEED_AXES:
        return axis
    return Axis(axis.option, [random_seed() if v == -1 else v for v in axis.values], axis.text)


def _make_cells(params, axes, style_names: Sequence[str], styles) -> list[Cell]:
    """Every cell's params, X fastest, then Y, then Z; styles expanded after all axes (so Prompt S/R
    sees the prompt as typed, as in the web UI)."""
    x, y, z = (a.values if a else [None] for a in axes)
    cells = []
    for zv in z:
        for yv in y:
            for xv in x:
                cell = Cell(params)
                for axis, value in zip(axes, (xv, yv, zv)):
                    if axis is not None:
                        axis.option.apply(cell, value, axis.values)
                cell.params = apply_styles(cell.params, [*style_names, *cell.style_names], styles)
                cells.append(cell)
    return cells


def _script_keys(axes, fixed_seeds: bool, names: str = "XYZ") -> dict:
    keys: dict[str, object] = {"Script": SCRIPT_NAME}
    for name, axis in zip(names, axes):
        if axis is None:
            continue
        keys[f"{name} Type"] = axis.option.label
        keys[f"{name} Values"] = axis.text
        if fixed_seeds and axis.option.label in SEED_AXES:
            keys[f"Fixed {name} Values"] = ", ".join(map(str, axis.values))
    return keys


def _cell_image(result: GenerationResult) -> Image.Image:
    return result.images[0] if len(result.images) == 1 else make_grid(result.images)


def _check_checkpoints(axes, custom_loader: bool) -> None:
    for axis in axes:
        if axis is not None and axis.option.kind == "checkpoint" and not custom_loader:
            missing = [v for v in axis.values if not Path(v).exists()]
            if missing:
                raise ParamError(f"Checkpoint name: {', '.join(missing)} not found (give model paths)")


def _run_order(cells: list[Cell]) -> list[int]:
    """Cells grouped by checkpoint, so that each model loads once (the web UI puts its costly
    axis in the outer loop); the order does not change any image."""
    first_seen: dict[str | None, int] = {}
    for cell in cells:
        first_seen.setdefault(cell.checkpoint, len(first_seen))
    return sorted(range(len(cells)), key=lambda i: first_seen[cells[i].checkpoint])


def xyz_plot(loaded, params: GenerationParams, options: XYZOptions, *, images=None, masks=None,
             styles: Mapping | None = None, style_names: Sequence[str] = (),
             load_checkpoint: Callable[[str], object] | None = None, callback: StepCallback | None = None,
             progress: Callable[[int, int], None] | None = None) -> XYZResult:
    """Run every cell and draw the plot.

    images, masks: inputs for img2img / inpaint params (as those pipelines take them).
    styles, style_names: a styles table (styles.load_styles) and the styles every cell uses; the
        Styles axis adds its own names to these.
    load_checkpoint: path -> LoadedModel for the Checkpoint name axis (default: load_model with
        `loaded`'s runtime).
    progress: called with (cells done, cells in all) after each cell.
    """
    validate(options)
    axes = tuple(parse_axis(spec, type(params)) for spec in (options.x, options.y, options.z))
    if all(a is None for a in axes):
        raise ParamError("an X/Y/Z plot needs at least one axis: give x, y or z as 'Type: values', "
                         "e.g. 'Steps: 10,20,30'")
    if not options.keep_random_seeds:
        params = fix_seeds(params)
        axes = tuple(_fix_axis_seeds(a) for a in axes)
    cells = _make_cells(params, axes, style_names, styles)
    _check_checkpoints(axes, load_checkpoint is not None)
    # fail on bad values before the first image
    pixels = sum(p.width * p.height * p.batch_size * p.n_iter
                 for p in (check_params(loaded, cell.params, images) for cell in cells))
    if pixels > MAX_GRID_PIXELS:
        raise ParamError(f"the plot's {len(cells)} cells would hold {pixels / 1e6:.0f} megapixels, more than "
                         f"{MAX_GRID_PIXELS // 1_000_000}: use fewer values or smaller images")
    nx, ny, nz = (len(a.values) if a else 1 for a in axes)

    if load_checkpoint is None:
        def load_checkpoint(path):
            return load_model(path, loaded.runtime)

    results: list[GenerationResult | None] = [None] * len(cells)
    current, interrupted = (None, loaded), None
    for done, index in enumerate(_run_order(cells), 1):
        cell = cells[index]
        if cell.checkpoint != current[0]:
            current = (cell.checkpoint, loaded if cell.checkpoint is None else load_checkpoint(cell.checkpoint))
        try:
            results[index] = run_pipeline(current[1], cell.params, images, masks, callback)
        except ScriptInterrupted:
            if done == 1:  # nothing finished: nothing to draw
                raise
            interrupted = partial_note(done - 1, len(cells), "cells")
            break
        if progress:
            progress(done, len(cells))

    made = [_cell_image(r) for r in results if r is not None]  # cell 0 runs first, so never empty
    cell_images = [_cell_image(r) if r is not None else Image.new("RGB", made[0].size) for r in results]
    col_labels = labels(axes[0].labels if axes[0] else [""])
    row_labels = labels(axes[1].labels if axes[1] else [""])
    sub_grids, sub_infotexts = [], []
    for iz in range(nz):
        chunk = cell_images[iz * nx * ny:(iz + 1) * nx * ny]
        grid = tile_images(chunk, cols=nx, rows=ny)
        if options.draw_legend:
            width, height = grid.width // nx, grid.height // ny
            grid = annotate_grid(grid, width, height, col_labels, row_labels, options.margin_size)
        sub_grids.append(grid)
        first = results[iz * nx * ny] or results[0]
        sub_infotexts.append(add_infotext_params(first.infotexts[0], _script_keys(axes[:2], not options.keep_random_seeds)))
    sub_grids = [finish_grid(params, g) for g in sub_grids]  # cells are finished; grids get the watermark
    grid = sub_grids[0]
    if axes[2] is not None:
        grid = tile_images(sub_grids, cols=nz, rows=1)
        if options.draw_legend:
            grid = annotate_grid(grid, grid.width // nz, grid.height, labels(axes[2].labels), [[GridLabel()]])
        grid = finish_grid(params, grid)
    infotext = add_infotext_params(results[0].infotexts[0], _script_keys(axes, not options.keep_random_seeds))

    result = XYZResult(grid, infotext, sub_grids, sub_infotexts, results, cell_images, axes, interrupted=interrupted)
    result.images, result.infotexts = [grid], [infotext]
    if options.include_sub_grids and axes[2] is not None:
        result.images += sub_grids
        result.infotexts += sub_infotexts
    if options.include_sub_images:
        result.images += [image for image, r in zip(cell_images, results) if r is not None]
        result.infotexts += [r.infotexts[0] for r in results if r is not None]
    return result
