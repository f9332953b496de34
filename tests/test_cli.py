"""The CLI through its real front door: `python -m t2i.interfaces.cli` as a subprocess."""
import subprocess
import sys

from PIL import Image

from t2i.metadata import parse_infotext, read_infotext


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "t2i.interfaces.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=None, timeout=300)


def test_generate_writes_pngs_with_infotext_and_png_info_reads_it(tiny_model_dir, tmp_path):
    out = cli("generate", "a small red circle: (test)", "--model", tiny_model_dir, "--seed", 7, "--steps", 2,
              "--batch-size", 2, "--grid", "--outdir", tmp_path, "--threads", 1)
    assert out.returncode == 0, out.stderr
    paths = [p for p in out.stdout.split() if p.endswith(".png")]
    assert len(paths) == 3  # two images and a grid
    first = Image.open(paths[0])
    assert first.size == (32, 32)
    info = parse_infotext(read_infotext(paths[0]))
    assert info["Prompt"] == "a small red circle: (test)" and info["Seed"] == "7" and info["Steps"] == "2"
    assert parse_infotext(read_infotext(paths[1]))["Seed"] == "8"
    shown = cli("png-info", paths[0])
    assert shown.returncode == 0 and shown.stdout.startswith("a small red circle: (test)\n")
    assert "Seed: 7" in shown.stdout


def test_from_file_makes_images_for_each_line(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue square\n\n../../etc/passwd\n")
    out = cli("generate", "--from-file", prompts, "--model", tiny_model_dir, "--steps", 2, "--seed", 1,
              "--sampler", "DPM++ 2M Karras", "--outdir", tmp_path / "out", "--threads", 1)
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 2
    assert all(f.parent == tmp_path / "out" for f in files)


def test_from_file_refuses_per_line_options(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red circle\n--prompt "a blue square" --steps 3\n')
    out = cli("generate", "--from-file", prompts, "--model", tiny_model_dir, "--steps", 1,
              "--outdir", tmp_path / "out", "--threads", 1)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "line 2 holds options" in out.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_user_errors_print_one_line_without_traceback(tiny_model_dir, tmp_path):
    cases = [
        (("generate", "x", "--model", tiny_model_dir, "--sampler", "Euler b"), "DPM++ 2M"),
        (("generate", "x", "--model", tiny_model_dir, "--width", 31), "multiple of"),
        (("generate", "x", "--model", tmp_path / "missing"), "not found"),
        (("png-info", tmp_path / "none.png"), "does not exist"),
        (("train", tmp_path / "none.yaml", "--outdir", tmp_path / "run"), "does not exist"),
    ]
    for args, message in cases:
        out = cli(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_data_export_writes_captioned_images_and_keeps_a_full_folder(tmp_path):
    out = cli("data", "export", "shapes", "--n", 5, "--seed", 3, "-o", tmp_path / "reg")
    assert out.returncode == 0, out.stderr
    images = sorted((tmp_path / "reg").glob("*.png"))
    assert len(images) == 5 and all(Image.open(p).size == (64, 64) for p in images)
    captions = [p.with_suffix(".txt").read_text().strip() for p in images]
    from t2i.data.shapes import ShapesDataset

    assert captions == [ShapesDataset(length=5, seed=3)[i]["caption"] for i in range(5)]
    again = cli("data", "export", "shapes", "--n", 2, "-o", tmp_path / "reg")  # not empty: refused, kept
    assert again.returncode != 0 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr
    assert len(list((tmp_path / "reg").iterdir())) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["reg"]  # no partial folder left behind


def test_data_preview(tmp_path):
    out = cli("data", "preview", "shapes", "--n", 8, "-o", tmp_path / "grid.png", "--captions")
    assert out.returncode == 0, out.stderr
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (64 * 3, 64 * 3)
    assert out.stdout.count("background") >= 1
