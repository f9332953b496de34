"""The loss curve of a run as a PNG, drawn with Pillow (no plotting library): the raw per-step
losses in grey, their moving average in blue, the step and loss ranges written on the axes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 48


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < 2 or window < 2:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def loss_curve(losses: list[float], path: Path, title: str = "loss") -> Path:
    """Write the curve of `losses` (one per step) to `path` atomically; returns the path."""
    from t2i.atomic import atomic_file

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    values = np.asarray([v for v in losses if np.isfinite(v)], dtype=np.float64)
    x0, y0, x1, y1 = MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN
    draw.rectangle((x0, y0, x1, y1), outline="black")
    draw.text((x0, 4), f"{title}: {len(values)} steps", fill="black")
    if len(values) >= 2:
        smooth = _moving_average(values, max(2, len(values) // 50))
        low, high = float(np.percentile(values, 1)), float(np.percentile(values, 99))
        high = high if high > low else low + 1e-6

        def points(series: np.ndarray) -> list[tuple[float, float]]:
            xs = x0 + (x1 - x0) * np.arange(len(series)) / (len(series) - 1)
            ys = y1 - (y1 - y0) * (np.clip(series, low, high) - low) / (high - low)
            return list(zip(xs.tolist(), ys.tolist()))

        draw.line(points(values), fill=(190, 190, 190), width=1)
        draw.line(points(smooth), fill=(30, 80, 230), width=2)
        draw.text((4, y0), f"{high:.4g}", fill="black")
        draw.text((4, y1 - 10), f"{low:.4g}", fill="black")
        draw.text((x0, y1 + 6), "1", fill="black")
        draw.text((x1 - 40, y1 + 6), str(len(values)), fill="black")
        draw.text(((x0 + x1) // 2 - 40, y1 + 6), f"last {smooth[-1]:.4g}", fill=(30, 80, 230))
    with atomic_file(path) as f:
        image.save(f, format="PNG")
    return path
