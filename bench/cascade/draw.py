"""One annotated picture per field: what the chain found, readable at a glance.

Typed cells get a thick box in their class's colour and a label ``class 0.93`` on a filled tag
(``?`` after it when the classifier was unsure); boxes counted as detected only (red cells,
platelets...) a thin box in a muted colour of their label. Fields smaller than
``MIN_SIDE`` pixels are enlarged first so the tags stay legible. With ground truth, the true
cells the chain missed are drawn as thin white boxes, so misses are visible too. A legend strip
below the field says all of this: a swatch per class and label in the colour drawn, truth vs
prediction, and what ``?`` means.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE = 512
MISSED = (255, 255, 255)  # the truth's cells the chain did not find


def palette(names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """A distinct colour per name (matplotlib's tab10 / tab20), stable for a given list."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: tuple(int(255 * v) for v in cmap(i % cmap.N)[:3]) for i, n in enumerate(names)}


def picture_colours(classes: Sequence[str], detector_labels: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """The colour of each class and of each detector label that is no class (drawn muted)."""
    colours = palette(list(classes))
    return {**colours, **{lab: c for lab, c in palette(list(detector_labels)).items() if lab not in colours}}


def muted(colour) -> tuple[int, int, int]:
    """The thin box of a cell counted as detected only: its label's colour, greyed."""
    return tuple(int(0.55 * c + 0.45 * 128) for c in colour)


def legend_entries(colours: dict, truth: bool, typed: Sequence[str] | None = None) -> list[tuple[str, tuple | None]]:
    """(text, swatch colour) per line of the legend: predicted classes (thick boxes), detector labels
    counted only (thin, muted), the truth's missed cells (white), and what ``?`` means."""
    typed = list(colours) if typed is None else list(typed)
    entries = [(f"{name}: predicted, typed", colours[name]) for name in colours if name in typed]
    entries += [(f"{name}: predicted, detected only", muted(colours[name])) for name in colours if name not in typed]
    if truth:
        entries.append(("true cell the chain missed (ground truth)", MISSED))
    entries.append(("'?' after a score: low confidence", None))
    return entries


def draw_legend(width: int, entries: list[tuple[str, tuple | None]]) -> Image.Image:
    """A dark strip ``width`` wide with a swatch and its text per entry, as many per row as fit."""
    font = ImageFont.load_default()
    sizes = [ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font) for text, _ in entries]
    cells = [(18 + right - left + 14, text, colour) for (left, _, right, _), (text, colour) in zip(sizes, entries)]
    rows, row, used = [], [], 0
    for cell in cells:
        if row and used + cell[0] > width - 8:
            rows.append(row)
            row, used = [], 0
        row.append(cell)
        used += cell[0]
    rows.append(row)
    strip = Image.new("RGB", (width, 8 + 18 * len(rows)), (40, 40, 40))
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        x, y = 6, 6 + 18 * r
        for cell_width, text, colour in row:
            if colour is not None:
                draw.rectangle([x, y + 1, x + 11, y + 12], fill=tuple(colour))
            draw.text((x + 16, y), text, fill=(255, 255, 255), font=font)
            x += cell_width
    return strip


def picture_name(field: str) -> str:
    """fields/<field path with '/' as '__'>.png: one flat folder, no clashes between sub-folders."""
    return Path(field.replace("/", "__")).with_suffix(".png").name


def draw_field(image: Image.Image, cells: pd.DataFrame, colours: dict, missed=None,
               legend: list[tuple[str, tuple | None]] | None = None) -> Image.Image:
    """The field with every cell's box and tag drawn (``cells``: this field's rows of cells.csv), the
    ``legend`` strip below it when given."""
    scale = max(1.0, MIN_SIDE / max(image.size))
    out = image.convert("RGB")
    if scale > 1.0:
        out = out.resize((round(out.size[0] * scale), round(out.size[1] * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for box in missed if missed is not None else []:
        draw.rectangle([v * scale for v in box], outline=MISSED, width=1)
    for row in cells.itertuples(index=False):
        box = [row.xmin * scale, row.ymin * scale, row.xmax * scale, row.ymax * scale]
        if not row.classified:
            draw.rectangle(box, outline=muted(colours.get(row.detector_label, (128, 128, 128))), width=1)
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
    if not legend:
        return out
    strip = draw_legend(out.size[0], legend)
    framed = Image.new("RGB", (out.size[0], out.size[1] + strip.size[1]))
    framed.paste(out, (0, 0))
    framed.paste(strip, (0, out.size[1]))
    return framed
