"""Interrupting a script (X/Y/Z plot, prompt matrix, loopback) keeps what it finished, as the web
UI does: the grid with the cells not run left black, the finished images, a note of how far it got;
interrupted before its first image, it raises ScriptInterrupted (nothing to return)."""
import numpy as np
import pytest

from t2i.pipelines.img2img import Img2ImgParams
from t2i.pipelines.progress import GenerationControl
from t2i.pipelines.script_progress import ScriptInterrupted, ScriptSteps
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img

BLACK = ((0, 0), (0, 0), (0, 0))


def _interrupt_in_pass(pass_index: int, jobs: int) -> ScriptSteps:
    """A script callback whose control is interrupted at the first step of sampling pass `pass_index`,
    so that pass never finishes and every earlier one does."""
    control = GenerationControl()

    def on_progress(event):
        if event.job == pass_index:
            control.interrupt()

    return ScriptSteps(model=None, jobs=jobs, phase="txt2img", progress=on_progress, control=control)


def _cell(grid, nx, ny, ix, iy, size=32):
    left, top = grid.width - nx * size, grid.height - ny * size
    return grid.crop((left + ix * size, top + iy * size, left + (ix + 1) * size, top + (iy + 1) * size))


def test_an_interrupted_xyz_plot_returns_the_finished_cells_in_its_grid(tiny_loaded):
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    base = Txt2ImgParams(prompt="a red circle", steps=2, seed=3)
    options = XYZOptions(x="Seed: 3, 4", y="Steps: 1, 2", include_sub_images=True)
    result = xyz_plot(tiny_loaded, base, options, callback=_interrupt_in_pass(2, 4))
    assert result.interrupted and "2 of 4 cells" in result.interrupted
    assert [cell is not None for cell in result.cells] == [True, True, False, False]
    assert len(result.images) == 1 + 2  # the grid and the two finished cells
    direct = txt2img(tiny_loaded, Txt2ImgParams(prompt="a red circle", steps=1, seed=4)).images[0]
    assert np.array_equal(np.asarray(_cell(result.grid, 2, 2, 1, 0)), np.asarray(direct))
    for ix in (0, 1):  # the row of cells that never ran is black; the finished row is not
        assert _cell(result.grid, 2, 2, ix, 1).getextrema() == BLACK
        assert _cell(result.grid, 2, 2, ix, 0).getextrema() != BLACK


def test_a_script_interrupted_in_its_first_image_returns_nothing(tiny_loaded):
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    with pytest.raises(ScriptInterrupted, match="before the script's first image"):
        xyz_plot(tiny_loaded, Txt2ImgParams(prompt="a", steps=2, seed=1), XYZOptions(x="Seed: 1, 2"),
                 callback=_interrupt_in_pass(0, 2))


def test_an_interrupted_prompt_matrix_returns_the_finished_prompts(tiny_loaded):
    from t2i.pipelines.prompt_matrix import PromptMatrixOptions, prompt_matrix

    params = Txt2ImgParams(prompt="a circle|red|small", steps=2, seed=9)  # 2 steps: the pass can be stopped
    result = prompt_matrix(tiny_loaded, params, PromptMatrixOptions(), callback=_interrupt_in_pass(3, 4))
    assert "3 of 4 prompts" in result.interrupted and len(result.results) == 3 and len(result.images) == 4
    assert _cell(result.grid, 2, 2, 1, 1).getextrema() == BLACK  # the fourth combination
    assert np.array_equal(np.asarray(_cell(result.grid, 2, 2, 0, 1)), np.asarray(result.results[2].images[0]))


def test_an_interrupted_loopback_returns_the_finished_loops(tiny_loaded):
    from PIL import Image

    from t2i.pipelines.loopback import LoopbackOptions, loopback

    start = Image.new("RGB", (32, 32), (200, 40, 40))
    params = Img2ImgParams(prompt="a", steps=2, seed=5, denoising_strength=0.8)
    result = loopback(tiny_loaded, params, start, LoopbackOptions(loops=4), callback=_interrupt_in_pass(2, 4))
    assert "2 of 4 loops" in result.interrupted
    assert len(result.images) == 2 and result.seeds == [5, 6] and result.grid.size == (64, 32)
