"""Image grids with labelled rows and columns, as the web UI draws them for the X/Y/Z plot and
the prompt matrix: column labels above the columns, row labels left of the rows, black text on
white, inactive labels (a prompt matrix's left-out parts) grey and struck through.

Text uses PIL's default font (scalable when Pillow has FreeType), sized from the cell size like
the web UI's ((width + height) / 25), but never below a readable minimum, so that the labels of
small images stay legible. Lines wrap at word boundaries to the width they are given; a single
word too long for it is drawn smaller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

TEXT_COLOR = (0, 0, 0)
INACTIVE_COLOR = (153, 153, 153)
BACKGROUND = (255, 255, 255)
MIN_FONT_SIZE = 12
SMALLEST_FONT_SIZE = 6  # a word that does not fit is shrunk down to this
MAX_WIDENED_LABEL = 256  # row labels get up to this many pixels on one line, even beside small cells


@dataclass
class GridLabel:
    text: str = ""
    active: bool = True  # False: drawn grey and struck through


@dataclass
class _Line:
    text: str
    active: bool
    font: ImageFont.ImageFont
    width: int
    height: int


def font_of_size(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: one fixed-size bitmap font
        return ImageFont.load_default()


def tile_images(images: list[Image.Image], cols: int, rows: int | None = None) -> Image.Image:
    """Images row by row into cols x rows cells of the largest image's size, each at its cell's
    top left; cells left empty are black (the web UI's image grid)."""
    if not images:
        raise ValueError("a grid needs at least one image")
    rows = rows or math.ceil(len(images) / cols)
    width = max(im.width for im in images)
    height = max(im.height for im in images)
    grid = Image.new("RGB", (cols * width, rows * height))
    for i, im in enumerate(images):
        row, col = divmod(i, cols)
        grid.paste(im.convert("RGB"), (col * width, row * height))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, max_width: float) -> list[str]:
    lines = [""]
    for word in text.split():
        joined = f"{lines[-1]} {word}".strip()
        if draw.textlength(joined, font=font) <= max_width or not lines[-1]:
            lines[-1] = joined
        else:
            lines.append(word)
    return lines


def _layout(draw, labels: list[GridLabel], size: int, max_width: float) -> list[_Line]:
    lines = []
    for label in labels:
        font = font_of_size(size)
        for text in _wrap(draw, label.text, font, max_width) if label.text else []:
            line_font, line_size = font, size
            while draw.textlength(text, font=line_font) > max_width and line_size > SMALLEST_FONT_SIZE:
                line_size -= 1
                line_font = font_of_size(line_size)
            ascent, descent = line_font.getmetrics()
            lines.append(_Line(text, label.active, line_font, math.ceil(draw.textlength(text, font=line_font)),
                               ascent + descent))
    return lines


def _block_height(lines: list[_Line], spacing: int) -> int:
    return sum(line.height for line in lines) + spacing * max(0, len(lines) - 1)


def _draw_block(draw, center_x: float, top: float, lines: list[_Line], spacing: int) -> None:
    for line in lines:
        color = TEXT_COLOR if line.active else INACTIVE_COLOR
        draw.text((center_x, top), line.text, font=line.font, fill=color, anchor="ma")
        if not line.active:
            y = top + line.height / 2
            draw.line((center_x - line.width / 2, y, center_x + line.width / 2, y), fill=INACTIVE_COLOR,
                      width=max(1, line.height // 8))
        top += line.height + spacing


def annotate_grid(grid: Image.Image, cell_width: int, cell_height: int, col_labels: list[list[GridLabel]],
                  row_labels: list[list[GridLabel]], margin: int = 0) -> Image.Image:
    """`grid` (cols x rows cells of cell_width x cell_height) on a white canvas with the labels of
    each column above it and of each row left of it; `margin` pixels between cells. Labels that
    are all empty take no space."""
    cols, rows = grid.width // cell_width, grid.height // cell_height
    if (len(col_labels), len(row_labels)) != (cols, rows):
        raise ValueError(f"the grid has {cols}x{rows} cells but got {len(col_labels)} column and "
                         f"{len(row_labels)} row labels")
    size = max(MIN_FONT_SIZE, (cell_width + cell_height) // 25)
    spacing = size // 2
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_row_text = any(label.text for labels in row_labels for label in labels)
    pad_left = 0
    if has_row_text:  # the web UI's 3/4 of a cell, widened for small cells to fit a label on one line
        font = font_of_size(size)
        texts = [label.text for labels in row_labels for label in labels if label.text]
        widest_label = max(draw.textlength(text, font=font) for text in texts)
        widest_word = max(draw.textlength(word, font=font) for text in texts for word in text.split())
        pad_left = max(cell_width * 3 // 4, math.ceil(min(widest_label, MAX_WIDENED_LABEL)) + 2 * spacing,
                       math.ceil(widest_word) + 2 * spacing)
    col_lines = [_layout(draw, labels, size, cell_width) for labels in col_labels]
    row_lines = [_layout(draw, labels, size, pad_left - 2 * spacing) for labels in row_labels]
    col_heights = [_block_height(lines, spacing) for lines in col_lines]
    pad_top = max(col_heights) + 2 * spacing if any(col_heights) else 0

    result = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1),
                               grid.height + pad_top + margin * (rows - 1)), BACKGROUND)
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((col * cell_width, row * cell_height, (col + 1) * cell_width, (row + 1) * cell_height))
            result.paste(cell, (pad_left + col * (cell_width + margin), pad_top + row * (cell_height + margin)))
    draw = ImageDraw.Draw(result)
    for col, lines in enumerate(col_lines):
        center = pad_left + col * (cell_width + margin) + cell_width / 2
        _draw_block(draw, center, (pad_top - col_heights[col]) / 2, lines, spacing)
    for row, lines in enumerate(row_lines):
        top = pad_top + row * (cell_height + margin) + (cell_height - _block_height(lines, spacing)) / 2
        _draw_block(draw, pad_left / 2, top, lines, spacing)
    return result


def labels(texts: list[str]) -> list[list[GridLabel]]:
    """One label per column (or row) from plain strings."""
    return [[GridLabel(text)] for text in texts]
