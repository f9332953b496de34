"""Prompt matrix: `a cat|wearing a hat|at night` makes every combination of the optional parts
appended to the first (2^(parts - 1) images), in a labelled grid, the web UI's script.

    result = prompt_matrix(loaded, Txt2ImgParams(prompt="a circle|red|small", seed=1), PromptMatrixOptions())

Combination i holds optional part j when bit j of i is set. The first half of the optional parts
label the columns, the rest the rows; each label lists its parts, the ones left out struck
through in grey. All images share the seed unless `different_seeds` (image i: seed + i); seed -1
becomes one random seed. Each image has its own prompt in its infotext; the grid carries the
first image's infotext. Interrupted after the first image, it returns the grid with the images
not made left black (`interrupted` says how far it got; `results` holds only the made ones).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from PIL import Image

from t2i.pipelines.script_options import DELIMITERS, PromptMatrixOptions  # noqa: F401  (re-exported)
from t2i.pipelines.annotated_grid import GridLabel, annotate_grid, tile_images
from t2i.pipelines.params import ParamError
from t2i.pipelines.postprocess import finish_grid
from t2i.pipelines.schema import validate_strict as validate
from t2i.pipelines.script_progress import ScriptInterrupted, partial_note
from t2i.pipelines.scripting import check_params, fix_seeds, run_pipeline
from t2i.pipelines.styles import apply_styles
from t2i.pipelines.txt2img import MAX_SEED, GenerationParams, GenerationResult, StepCallback



@dataclass
class PromptMatrixResult:
    grid: Image.Image
    infotext: str
    prompts: list[str]  # combination i's prompt (or negative prompt), before styles
    results: list[GenerationResult]  # one run per combination (fewer when interrupted)
    images: list[Image.Image]  # grid first, then each combination's image
    infotexts: list[str]
    interrupted: str | None = None  # how far an interrupted matrix got (partial_note)


def matrix_prompts(text: str, put_at_start: bool = False, delimiter: str = ", ") -> list[str]:
    """All 2^(n-1) prompts of `first|opt1|opt2...`: prompt i holds opt j when bit j of i is set."""
    first, *optional = text.split("|")
    optional = [part.strip().strip(",") for part in optional]
    prompts = []
    for combination in range(2 ** len(optional)):
        chosen = [part for j, part in enumerate(optional) if combination & (1 << j)]
        parts = [*chosen, first.strip()] if put_at_start else [first.strip(), *chosen]
        prompts.append(delimiter.join(part for part in parts if part))
    return prompts


def _grid_labels(optional: list[str]) -> tuple[list[list[GridLabel]], list[list[GridLabel]]]:
    """(column labels, row labels): the first ceil(n/2) parts vary across columns, the rest down rows."""
    split = math.ceil(len(optional) / 2)
    across, down = optional[:split], optional[split:]

    def of(parts):
        return [[GridLabel(part, bool(pos & (1 << j))) for j, part in enumerate(parts)] for pos in range(2 ** len(parts))]

    return of(across), of(down)


def prompt_matrix(loaded, params: GenerationParams, options: PromptMatrixOptions, *, images=None, masks=None,
                  styles: Mapping | None = None, style_names: Sequence[str] = (),
                  callback: StepCallback | None = None) -> PromptMatrixResult:
    """One image per combination (batch size and count 1 each), then the labelled grid. Styles
    (a styles.load_styles table and names) apply to each combination's prompts, as in the web UI."""
    validate(options)
    source = params.prompt if options.prompt_type == "positive" else params.negative_prompt
    if "|" not in source:
        raise ParamError(f"the {options.prompt_type} prompt has no '|': write it as 'always here|option 1|option 2'")
    prompts = matrix_prompts(source, options.put_at_start, DELIMITERS[options.variations_delimiter])
    params = fix_seeds(replace(params, batch_size=1, n_iter=1))
    runs = []
    for i, prompt in enumerate(prompts):
        text = {"prompt": prompt} if options.prompt_type == "positive" else {"negative_prompt": prompt}
        seed = (params.seed + i) % (MAX_SEED + 1) if options.different_seeds else params.seed
        runs.append(apply_styles(replace(params, seed=seed, **text), style_names, styles))
    for run in runs:  # fail on bad params before the first image
        check_params(loaded, run, images)
    results, interrupted = [], None
    for run in runs:
        try:
            results.append(run_pipeline(loaded, run, images, masks, callback))
        except ScriptInterrupted:
            if not results:  # nothing finished: nothing to draw
                raise
            interrupted = partial_note(len(results), len(runs), "prompts")
            break
    outputs = [r.images[0] for r in results]
    blank = Image.new("RGB", outputs[0].size)
    optional = [part.strip().strip(",") for part in source.split("|")[1:]]
    col_labels, row_labels = _grid_labels(optional)
    grid = tile_images(outputs + [blank] * (len(runs) - len(outputs)), cols=len(col_labels), rows=len(row_labels))
    width, height = grid.width // len(col_labels), grid.height // len(row_labels)
    grid = finish_grid(params, annotate_grid(grid, width, height, col_labels, row_labels, options.margin_size))
    infotexts = [r.infotexts[0] for r in results]
    return PromptMatrixResult(grid, infotexts[0], prompts, results, [grid, *outputs], [infotexts[0], *infotexts],
                              interrupted)
