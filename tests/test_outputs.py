"""Output file names that are safe everywhere, counters that continue, grid layout."""
from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from t2i.outputs import make_grid, next_image_path, safe_filename_part

NASTY = [
    "../../etc/passwd",
    "..\\..\\Windows\\System32",
    "CON",
    "con.txt",
    "LPT1",
    "a:b*c?",
    "",
    "   ",
    "...",
    "x" * 500,
    "🐱 cat 👍🏽 on the 🏠",
    "👨‍👩‍👧",
    'tab\there\nnew\x00nul\x1b[31m <>:"/\\|?*',
    "ends with dots and spaces. . .  ",
    "日本語のプロンプト" * 40,
    "-rf --no-preserve-root",
]
WINDOWS_RESERVED = (
    {"CON", "PRN", "AUX", "NUL"} | {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)}
)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("CON", "_CON"),
        ("a:b*c?", "a_b_c"),
        ("", "image"),
        ("  a   red\tcircle  ", "a_red_circle"),
        ("🐱 cat", "cat"),
        ("👨‍👩‍👧", "image"),
    ],
)
def test_safe_filename_part_examples(prompt: str, expected: str) -> None:
    assert safe_filename_part(prompt) == expected


@pytest.mark.parametrize("prompt", NASTY)
def test_safe_filename_part_is_safe(prompt: str, tmp_path: Path) -> None:
    part = safe_filename_part(prompt)
    assert part
    assert len(part) <= 60 and len(part.encode("utf-8")) <= 200
    assert not set(part) & set('<>:"/\\|?*')
    assert all(unicodedata.category(c)[0] != "C" for c in part)
    assert not part.startswith((".", "-", " ")) and not part.endswith((".", " "))
    assert part.split(".")[0].upper() not in WINDOWS_RESERVED
    assert " " not in part
    created = tmp_path / f"{part}.png"
    created.write_bytes(b"x")  # really a valid name here, and stays in the folder
    assert created.resolve().parent == tmp_path.resolve()


def test_safe_filename_part_max_chars() -> None:
    assert safe_filename_part("abcdef ghij", max_chars=7) == "abcdef"  # no trailing '_'
    assert safe_filename_part("x" * 500, max_chars=10) == "x" * 10
    with pytest.raises(ValueError):
        safe_filename_part("x", max_chars=0)


def test_next_image_path_starts_at_zero_and_creates_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "nested"
    path = next_image_path(out, 42, "a red circle")
    assert out.is_dir()
    assert path == out / "00000-42-a_red_circle.png"


def test_next_image_path_continues_after_highest(tmp_path: Path) -> None:
    for name in ["00003-1-x.png", "00010-5-y.jpg", "notes.txt", "2024-01-01.png", "00007-grid.png"]:
        (tmp_path / name).write_bytes(b"")
    path = next_image_path(tmp_path, 1234, "CON", ext=".JPG")
    assert path.name == "00011-1234-_CON.jpg"
    path.write_bytes(b"")
    assert next_image_path(tmp_path, -1, "").name == "00012--1-image.png"


def test_next_image_path_counter_grows_past_five_digits(tmp_path: Path) -> None:
    (tmp_path / "99999-1-x.png").write_bytes(b"")
    assert next_image_path(tmp_path, 2, "y").name == "100000-2-y.png"


def test_next_image_path_rejects_bad_extension(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extension"):
        next_image_path(tmp_path, 1, "x", ext="png/../../evil")


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (10, 8)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.mark.parametrize(
    ("n", "cols", "size"),
    [(1, None, (10, 8)), (4, None, (20, 16)), (5, None, (30, 16)), (9, None, (30, 24)),
     (10, None, (40, 24)), (3, 1, (10, 24)), (3, 5, (50, 8))],
)
def test_make_grid_size(n: int, cols: int | None, size: tuple[int, int]) -> None:
    assert make_grid([_solid((255, 255, 255))] * n, cols=cols).size == size


def test_make_grid_places_images_row_major_and_fills_black() -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    grid = make_grid([_solid(c) for c in colors])  # 3 columns, 2 rows
    assert grid.mode == "RGB"
    assert grid.getpixel((5, 4)) == colors[0]
    assert grid.getpixel((25, 4)) == colors[2]
    assert grid.getpixel((5, 12)) == colors[3]
    assert grid.getpixel((15, 12)) == colors[4]
    assert grid.getpixel((25, 12)) == (0, 0, 0)


def test_make_grid_mixed_modes_and_errors() -> None:
    grid = make_grid([_solid((255, 0, 0)), Image.new("RGBA", (10, 8), (0, 0, 255, 128))])
    assert grid.mode == "RGBA" and grid.getpixel((15, 4)) == (0, 0, 255, 128)
    with pytest.raises(ValueError, match="at least one"):
        make_grid([])
    with pytest.raises(ValueError, match="resize"):
        make_grid([_solid((0, 0, 0)), _solid((0, 0, 0), (8, 8))])
    with pytest.raises(ValueError, match="cols"):
        make_grid([_solid((0, 0, 0))], cols=0)
