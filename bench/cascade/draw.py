"""One annotated picture per field: what the chain found, readable at a glance.

Typed cells get a thick box in their class's colour and a label ``class 0.93`` on a filled tag
(``?`` after it when the classifier was unsure); boxes counted as detected only (red cells,
platelets...) a thin box in a muted colour of their label. Fields smaller than
``MIN_SIDE`` pixels are enlarged first so the tags stay legible. With ground truth, the true
cells the chain missed are drawn as thin white boxes, so misses are visible too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE = 512


def palette(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A distinct colour per name (matplotlib's tab10 / tab20), stable for a given list."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: tuple(int(255 * v) for v in cmap(i % cmap.N)[:3]) for i, n in enumerate(names)}


def picture_name(field: str) -> str:
    """fields/<field path with '/' as '__'>.png: one flat folder, no clashes between sub-folders."""
    return Path(field.replace("/", "__")).with_suffix(".png").name


def draw_field(image: Image.Image, cells: pd.DataFrame, colours: dict, missed=None) -> Image.Image:
    """The field with every cell's box and tag drawn (``cells``: this field's rows of cells.csv)."""
    scale = max(1.0, MIN_SIDE / max(image.size))
    out = image.convert("RGB")
    if scale > 1.0:
        out = out.resize((round(out.size[0] * scale), round(out.size[1] * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for box in missed if missed is not None else []:
        draw.rectangle([v * scale for v in box], outline=(255, 255, 255), width=1)
    for row in cells.itertuples(index=False):
        box = [row.xmin * scale, row.ymin * scale, row.xmax * scale, row.ymax * scale]
        if not row.classified:
            muted = tuple(int(0.55 * c + 0.45 * 128) for c in colours.get(row.detector_label, (128, 128, 128)))
            draw.rectangle(box, outline=muted, width=1)
            continue
        colour = colours.get(row.cell_type, (0, 0, 0))
        draw.rectangle(box, outline=colour, width=3)
        unsure = "?" if row.low_confidence is True else ""
        text = f"{row.cell_type} {row.confidence:.2f}{unsure}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width = right - left + 4
        x, y = min(max(0.0, box[0]), max(0.0, out.size[0] - width)), max(0.0, box[1] - (bottom - top) - 4)
        draw.rectangle([x, y, x + width, y + bottom - top + 4], fill=colour)
        draw.text((x + 2, y + 2 - top), text, fill=(255, 255, 255), font=font)
    return out
