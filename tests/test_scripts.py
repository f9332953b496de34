"""The web UI's scripts: X/Y/Z plot, prompt matrix, styles, loopback, batch img2img (tiny model)."""
import numpy as np
import pytest
from PIL import Image

from t2i.metadata import parse_infotext, read_infotext
from t2i.pipelines.img2img import Img2ImgParams, img2img
from t2i.pipelines.params import ParamError
from t2i.pipelines.txt2img import Txt2ImgParams, txt2img
from t2i.pipelines.xyz_axes import make_axis, parse_axis, split_values


def arr(image):
    return np.asarray(image.convert("RGB")).astype(np.int16)


def noise_image(size=(32, 32), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ---------------------------------------------------------------------------- axis values


@pytest.mark.parametrize("spec, values", [
    ("Steps: 5, 10,20", [5, 10, 20]),
    ("Steps: 1-5", [1, 2, 3, 4, 5]),
    ("Steps: 1-10 (+3)", [1, 4, 7, 10]),
    ("Steps: 10-1 (-3)", [10, 7, 4, 1]),
    ("Steps: 5-2", [5, 4, 3, 2]),
    ("Steps: 10-20 [3]", [10, 15, 20]),
    ("Steps: 1-2, 7", [1, 2, 7]),
    ("Seed: -1, 3", [-1, 3]),
    ("CFG Scale: 1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("cfg scale: 3, 7.5", [3.0, 7.5]),
    ("CFG Scale: 1-2 [3]", [1.0, 1.5, 2.0]),
    ("Sampler: Euler a, DDIM", ["Euler a", "DDIM"]),
    ('Prompt S/R: red, "blue, big", green', ["red", "blue, big", "green"]),
])
def test_axis_values_parse_like_the_web_ui(spec, values):
    axis = parse_axis(spec, Txt2ImgParams)
    assert axis.values == values
    assert all(type(v) is type(values[0]) for v in axis.values)


@pytest.mark.parametrize("spec, match", [
    ("Steps: 7.5", "whole number"),
    ("Steps: ten", "whole number"),
    ("CFG Scale: x", "not a number"),
    ("Steps: 1-5 (+0)", "cannot be 0"),
    ("Steps: 1-5 (-1)", "empty"),
    ("Steps: ,", "none given"),
    ("Wobble: 1,2", "unknown axis type 'Wobble'; available: Seed"),
    ("Steps 1,2", "Type: values"),
    ("Hires steps: 1,2", None),  # txt2img has it ...
])
def test_bad_axes_give_clear_errors(spec, match):
    if match is None:
        assert parse_axis(spec, Txt2ImgParams).values == [1, 2]
        with pytest.raises(ParamError, match="does not apply to Img2ImgParams"):  # ... img2img does not
            parse_axis(spec, Img2ImgParams)
        return
    with pytest.raises(ParamError, match=match):
        parse_axis(spec, Txt2ImgParams)


def test_axis_labels_and_nothing():
    assert parse_axis("Steps: 5,10", Txt2ImgParams).labels == ["Steps: 5", "Steps: 10"]
    assert parse_axis("CFG Scale: 7", Txt2ImgParams).labels == ["CFG Scale: 7.0"]  # the web UI's float label
    assert parse_axis("Sampler: DDIM", Txt2ImgParams).labels == ["DDIM"]
    assert parse_axis("Checkpoint name: /m/a.safetensors", Txt2ImgParams).labels == ["a.safetensors"]
    assert parse_axis("Nothing", Txt2ImgParams) is None and parse_axis("", Txt2ImgParams) is None
    assert make_axis("Steps", [3, 4], Txt2ImgParams).values == [3, 4]
    assert split_values('a,, "b, c" ,') == ["a", "b, c"]


# ---------------------------------------------------------------------------- X/Y/Z plot


def _grid_cell(grid, nx, ny, ix, iy, size=32):
    """The cell (ix, iy) of a labelled grid without margins: labels sit left and on top."""
    left, top = grid.width - nx * size, grid.height - ny * size
    return grid.crop((left + ix * size, top + iy * size, left + (ix + 1) * size, top + (iy + 1) * size))


def test_xyz_cells_equal_direct_runs_and_grid_is_labelled(tiny_loaded):
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    base = Txt2ImgParams(prompt="a red circle", negative_prompt="red blur", steps=2, seed=-1)
    result = xyz_plot(tiny_loaded, base, XYZOptions(x="Steps: 1-2", y="Prompt S/R: red, blue", include_sub_images=True))
    assert len(result.cells) == 4 and len(result.images) == 5
    seeds = {r.seeds[0] for r in result.cells}
    assert len(seeds) == 1  # one random seed for the whole grid
    # cell (ix, iy) at ix + iy * nx; Prompt S/R replaced in prompt and negative prompt
    for index, (steps, prompt, negative) in enumerate([(1, "a red circle", "red blur"), (2, "a red circle", "red blur"),
                                                      (1, "a blue circle", "blue blur"), (2, "a blue circle", "blue blur")]):
        cell = result.cells[index]
        info = parse_infotext(cell.infotexts[0])
        assert (info["Steps"], info["Prompt"], info["Negative prompt"]) == (str(steps), prompt, negative)
        direct = txt2img(tiny_loaded, Txt2ImgParams(prompt=prompt, negative_prompt=negative, steps=steps,
                                                    seed=next(iter(seeds))))
        assert np.array_equal(arr(cell.images[0]), arr(direct.images[0]))
        assert np.array_equal(arr(_grid_cell(result.grid, 2, 2, index % 2, index // 2)), arr(cell.images[0]))
    # labels: a white band on top and on the left, with dark text pixels in it
    top_band = arr(result.grid)[: result.grid.height - 64]
    left_band = arr(result.grid)[:, : result.grid.width - 64]
    assert top_band.size and left_band.size and top_band.min() < 100 and left_band.min() < 100
    info = parse_infotext(result.infotext)
    assert info["Script"] == "X/Y/Z plot" and info["X Type"] == "Steps" and info["X Values"] == "1-2"
    assert info["Y Type"] == "Prompt S/R" and info["Y Values"] == "red, blue" and "Z Type" not in info
    assert info["Seed"] == str(result.cells[0].seeds[0])


def test_xyz_z_axis_seeds_and_options(tiny_loaded):
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    options = XYZOptions(x="Seed: 4, -1", z="CFG Scale: 1, 3", include_sub_grids=True, draw_legend=False)
    result = xyz_plot(tiny_loaded, Txt2ImgParams(prompt="a", steps=1), options)
    assert len(result.cells) == 4 and len(result.sub_grids) == 2 and len(result.images) == 3
    assert result.grid.size == (4 * 32, 32)  # no legend: the two 2x1 sub-grids side by side
    fixed = result.cells[1].seeds[0]
    assert result.cells[0].seeds[0] == 4 and result.cells[3].seeds[0] == fixed  # -1 drawn once for the plot
    info = parse_infotext(result.infotext)
    assert info["Fixed X Values"] == f"4, {fixed}" and info["Z Type"] == "CFG Scale"
    assert "Z Type" not in parse_infotext(result.sub_grid_infotexts[1])
    assert parse_infotext(result.cells[2].infotexts[0])["CFG scale"] == "3"


def test_xyz_refuses_bad_values_before_running(tiny_loaded):
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    with pytest.raises(ParamError, match="Prompt S/R did not find 'green'"):
        xyz_plot(tiny_loaded, Txt2ImgParams(prompt="a red circle"), XYZOptions(x="Prompt S/R: green, blue"))
    with pytest.raises(ParamError):
        xyz_plot(tiny_loaded, Txt2ImgParams(prompt="a"), XYZOptions(x="Sampler: Euler, Nope"))
    with pytest.raises(ParamError, match="at least one axis"):
        xyz_plot(tiny_loaded, Txt2ImgParams(prompt="a"), XYZOptions())


def test_xyz_styles_apply_after_prompt_sr(tiny_loaded):
    from t2i.pipelines.styles import PromptStyle
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    styles = {"wrap": PromptStyle("wrap", "{prompt} with red border"), "tail": PromptStyle("tail", "big")}
    result = xyz_plot(tiny_loaded, Txt2ImgParams(prompt="a red circle", steps=1, cfg_scale=1, seed=1),
                      XYZOptions(x="Prompt S/R: red, blue", y="Styles: tail"), styles=styles, style_names=["wrap"])
    prompts = [parse_infotext(cell.infotexts[0])["Prompt"] for cell in result.cells]
    assert prompts == ["a red circle with red border, big", "a blue circle with red border, big"]


def test_xyz_checkpoint_axis_and_img2img(tiny_loaded, tiny_model_dir):
    from t2i.pipelines.xyz_plot import XYZOptions, xyz_plot

    image = noise_image()
    options = XYZOptions(x=f"Checkpoint name: {tiny_model_dir}", y="Denoising: 0, 0.5")
    result = xyz_plot(tiny_loaded, Img2ImgParams(prompt="a", steps=2, seed=1), options, images=image)
    assert np.array_equal(arr(result.cells[0].images[0]), arr(image))  # strength 0: the input itself
    direct = img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=2, seed=1, denoising_strength=0.5), image)
    assert np.abs(arr(result.cells[1].images[0]) - arr(direct.images[0])).max() <= 1
    assert parse_infotext(result.infotext)["X Values"] == str(tiny_model_dir)


# ---------------------------------------------------------------------------- styles


def test_styles_csv_and_placeholder(tmp_path):
    from t2i.pipelines.styles import apply_styles, load_styles

    path = tmp_path / "styles.csv"
    path.write_text('\ufeffname,prompt,negative_prompt\n'
                    'wrap,"a photo of {prompt}, sharp",blurry\n'
                    'tail,"big, bold",\n'
                    ',ignored,\n', encoding="utf-8")
    styles = load_styles(path)
    assert sorted(styles) == ["tail", "wrap"]
    params = apply_styles(Txt2ImgParams(prompt="a cat", negative_prompt="ugly"), ["wrap", "tail"], styles)
    assert params.prompt == "a photo of a cat, sharp, big, bold"
    assert params.negative_prompt == "ugly, blurry"
    assert apply_styles(Txt2ImgParams(prompt=""), ["tail"], styles).prompt == "big, bold"
    with pytest.raises(ParamError, match="unknown style 'nope'; available: tail, wrap"):
        apply_styles(Txt2ImgParams(), ["nope"], styles)
    with pytest.raises(ParamError, match="no styles file"):
        apply_styles(Txt2ImgParams(), ["wrap"], None)
    (tmp_path / "bad.csv").write_text("title,prompt\nx,y\n")
    with pytest.raises(ValueError, match="header"):
        load_styles(tmp_path / "bad.csv")


# ---------------------------------------------------------------------------- prompt matrix


def test_matrix_prompts():
    from t2i.pipelines.prompt_matrix import matrix_prompts

    assert matrix_prompts("a cat|hat|glasses") == ["a cat", "a cat, hat", "a cat, glasses", "a cat, hat, glasses"]
    assert matrix_prompts("a cat | hat", put_at_start=True, delimiter=" ") == ["a cat", "hat a cat"]
    assert len(matrix_prompts("a|b|c|d|e")) == 16


def test_prompt_matrix_grid(tiny_loaded):
    from t2i.pipelines.prompt_matrix import PromptMatrixOptions, prompt_matrix

    result = prompt_matrix(tiny_loaded, Txt2ImgParams(prompt="a circle|red|small|left", steps=1, seed=9),
                           PromptMatrixOptions(different_seeds=True))
    assert len(result.prompts) == 8 and len(result.images) == 9
    assert [r.seeds[0] for r in result.results] == list(range(9, 17))
    assert parse_infotext(result.results[4].infotexts[0])["Prompt"] == "a circle, left"  # bit 2: the third part
    assert result.infotexts[0] == result.infotexts[1] == result.results[0].infotexts[0]  # grid, then the images
    # columns: red x small (4), rows: left (2), labels around
    assert result.grid.width > 4 * 32 and result.grid.height > 2 * 32
    assert np.array_equal(arr(_grid_cell(result.grid, 4, 2, 1, 1)), arr(result.results[5].images[0]))
    with pytest.raises(ParamError, match="no '\\|'"):
        prompt_matrix(tiny_loaded, Txt2ImgParams(prompt="a circle"), PromptMatrixOptions())


# ---------------------------------------------------------------------------- loopback


def test_loopback_feeds_each_output_back(tiny_loaded):
    from t2i.pipelines.loopback import LoopbackOptions, loop_strengths, loopback

    image = noise_image()
    params = Img2ImgParams(prompt="a", steps=2, seed=5, denoising_strength=0.8)
    result = loopback(tiny_loaded, params, image, LoopbackOptions(loops=3, denoising_strength_change_factor=0.5))
    assert len(result.images) == 3 and result.seeds == [5, 6, 7] and result.grid.size == (96, 32)
    strengths = [parse_infotext(t)["Denoising strength"] for t in result.infotexts]
    assert strengths == ["0.8", "0.4", "0.2"]
    assert parse_infotext(result.infotexts[0])["Denoising strength change factor"] == "0.5"
    second = img2img(tiny_loaded, Img2ImgParams(prompt="a", steps=2, seed=6, denoising_strength=0.4), result.images[0])
    assert np.abs(arr(second.images[0]) - arr(result.images[1])).max() <= 1
    opts = LoopbackOptions(loops=3, final_denoising_strength=0.2)
    assert loop_strengths(0.8, opts) == pytest.approx([0.8, 0.5, 0.2])
    assert loop_strengths(0.3, LoopbackOptions(loops=3, denoising_strength_change_factor=0.1)) == [0.3, 0.1, 0.1]


# ---------------------------------------------------------------------------- CLI: batch img2img, xyz, styles


def test_cli_batch_img2img_over_a_folder(tiny_model_dir, tmp_path, capsys):
    from t2i.interfaces.cli import main

    inputs, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    inputs.mkdir(), masks.mkdir()
    noise_image(seed=1).save(inputs / "one.png")
    noise_image((40, 24), seed=2).convert("RGB").save(inputs / "two.jpg")
    (inputs / "notes.txt").write_text("not an image")
    mask = Image.new("L", (32, 32))
    mask.paste(255, (8, 8, 24, 24))
    mask.save(masks / "one.png")
    common = ["--model", str(tiny_model_dir), "--precision", "full", "--device", "cpu", "--steps", "1", "--seed", "2",
              "--cfg-scale", "1"]
    assert main(["img2img", "--input-dir", str(inputs), "a cat", "--outdir", str(out), *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["one.png", "two.png"]
    assert Image.open(out / "two.png").size == (40, 24)
    err = capsys.readouterr().err
    assert "skipping" in err and "notes.txt: not an image" in err
    assert parse_infotext(read_infotext(out / "one.png"))["Prompt"] == "a cat"
    # again, with masks: names never overwrite; an image without a mask is skipped
    mask.save(masks / "other.png")
    assert main(["img2img", "--input-dir", str(inputs), "--mask-dir", str(masks), "a dog", "--outdir", str(out),
                 *common]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["one-1.png", "one.png", "two.png"]
    assert "Mask blur" in read_infotext(out / "one-1.png")
    assert "no mask named two" in capsys.readouterr().err


def test_cli_xyz_and_styles(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from t2i.interfaces.cli import main

    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nbig,{prompt} in a big way,tiny\n")
    monkeypatch.chdir(tmp_path)  # styles.csv of the current directory is the default
    common = ["--model", str(tiny_model_dir), "--precision", "full", "--device", "cpu", "--steps", "1"]
    assert main(["xyz", "a circle", "--x", "Steps: 1,2", "--y", "CFG Scale: 1-2 [2]", "--style", "big",
                 "--outdir", "out", "--include-sub-images", *common]) == 0
    written = [line for line in capsys.readouterr().out.split() if line.endswith(".png")]
    assert len(written) == 5 and "xyz_grid-" in written[0]
    info = parse_infotext(read_infotext(written[0]))
    assert info["Prompt"] == "a circle in a big way" and info["Negative prompt"] == "tiny"
    assert info["Y Values"] == "1-2 [2]"
    assert main(["generate", "x", "--style", "nope", *common]) == 2
    assert "available: big" in capsys.readouterr().err
    assert main(["xyz", "x", "--x", "Steps: a", *common]) == 2
    assert main(["xyz", "x", "--x", "Steps: 1", "--resize-mode", "Crop and resize", *common]) == 2
    assert "needs --image" in capsys.readouterr().err


def test_cli_loopback_and_prompt_matrix(tiny_model_dir, tmp_path, capsys):
    from t2i.interfaces.cli import main

    image = tmp_path / "in.png"
    noise_image().save(image)
    common = ["--model", str(tiny_model_dir), "--precision", "full", "--device", "cpu", "--steps", "1", "--seed", "4",
              "--cfg-scale", "1"]
    assert main(["loopback", str(image), "a cat", "--loops", "2", "--denoising-strength", "0.5",
                 "--denoising-change-factor", "0.5", "--outdir", str(tmp_path / "l"), *common]) == 0
    frames = sorted((tmp_path / "l").glob("0*.png"))
    assert len(frames) == 2 and len(list((tmp_path / "l").glob("loopback-*.png"))) == 1
    assert [parse_infotext(read_infotext(f))["Denoising strength"] for f in frames] == ["0.5", "0.25"]
    assert main(["prompt-matrix", "a cat|hat", "--outdir", str(tmp_path / "m"), *common]) == 0
    assert len(list((tmp_path / "m").glob("0*.png"))) == 2 and len(list((tmp_path / "m").glob("prompt_matrix-*"))) == 1
    assert main(["loopback", str(image), "--final-denoising-strength", "0.2", "--denoising-change-factor", "0.5",
                 *common]) == 2
    assert "not both" in capsys.readouterr().err
