"""The drawing of the synthetic blood cells (``data=synthetic``, and the white cells of
:mod:`bench.detection.synthetic`'s smear fields).

Images of 8 classes that look roughly like May-Grünwald-Giemsa stained smear crops -- a pale
beige background, pale pink red cells, one centred white cell -- with the cues a haematologist
uses (cell size, nucleus shape and lobes, cytoplasm colour, granules). Class ranges overlap and a
share of cells is atypical. :func:`render_cell` draws one image from its ``rng`` alone;
:mod:`bench.data.synthetic` writes the dataset and caches it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)

# Bump whenever the drawing changes: it is part of the cache marker, so stale
# caches drawn by an older generator are rebuilt instead of silently reused.
GENERATOR_VERSION = 2

# Shapes are drawn at 2x and box-downsampled: PIL polygons are not
# anti-aliased, and jagged edges would be an unrealistic, too-easy cue.
_SUPERSAMPLE = 2

# Base colours (RGB) read off typical MGG-stained PBC crops.
_BACKGROUND = (232, 218, 200)
_RBC = (226, 170, 160)

# Per-class white-cell appearance. Ranges deliberately overlap between
# neighbouring classes (neutrophil/ig/monocyte, lymphocyte/erythroblast/
# basophil) so that size or colour alone does not separate them.
#   radius: cell radius as a fraction of the image width
#   cyto/nuc: base colours; granule: (colour, count, size) or None
_STYLE: dict[str, dict] = {
    "basophil": dict(radius=(0.19, 0.25), cyto=(196, 172, 205), nuc=(110, 70, 150),
                     granule=((62, 40, 105), (35, 90), (0.012, 0.022))),
    "eosinophil": dict(radius=(0.22, 0.28), cyto=(226, 196, 186), nuc=(100, 55, 135),
                       granule=((214, 112, 82), (120, 260), (0.010, 0.016))),
    "erythroblast": dict(radius=(0.15, 0.21), cyto=(196, 162, 178), nuc=(52, 28, 78),
                         granule=None),
    "ig": dict(radius=(0.24, 0.31), cyto=(204, 174, 204), nuc=(102, 62, 142),
               granule=((150, 95, 165), (60, 160), (0.006, 0.011))),
    "lymphocyte": dict(radius=(0.15, 0.21), cyto=(168, 184, 218), nuc=(74, 38, 112),
                       granule=None),
    "monocyte": dict(radius=(0.25, 0.32), cyto=(192, 186, 208), nuc=(122, 84, 155),
                     granule=((170, 150, 190), (20, 70), (0.005, 0.009))),
    "neutrophil": dict(radius=(0.22, 0.28), cyto=(222, 198, 212), nuc=(96, 52, 132),
                       granule=((185, 150, 190), (60, 160), (0.005, 0.009))),
    "platelet": dict(radius=(0.0, 0.0), cyto=(210, 192, 218), nuc=(130, 76, 160),
                     granule=None),
}


def _jitter(rng: np.random.Generator, colour, amount: float) -> tuple[int, int, int]:
    """Colour with independent per-channel noise (staining varies cell to cell)."""
    c = np.asarray(colour, float) + rng.normal(0.0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


class _Canvas:
    """Drawing surface in cell-local units (fractions of the image width).

    Every shape is given around the cell centre and then rotated and moved, so
    random position and rotation come for free. A nucleus mask is kept beside
    the image so that chromatin texture can be added to the nucleus only.
    """

    def __init__(self, image: Image.Image, centre, angle: float):
        self.image = image
        self.draw = ImageDraw.Draw(image)
        self.mask = Image.new("L", image.size, 0)
        self.mask_draw = ImageDraw.Draw(self.mask)
        self.px = image.size[0]
        self.centre = np.asarray(centre, float) * self.px
        c, s = math.cos(angle), math.sin(angle)
        self.rot = np.array([[c, -s], [s, c]])

    def to_px(self, pts) -> np.ndarray:
        return np.atleast_2d(np.asarray(pts, float)) @ self.rot.T * self.px + self.centre

    def polygon(self, pts, fill, nucleus: bool = False) -> None:
        xy = self.to_px(pts).ravel().tolist()  # flat list: the fastest form for PIL
        self.draw.polygon(xy, fill=fill)
        if nucleus:
            self.mask_draw.polygon(xy, fill=255)

    def dots(self, pts, radii, colours) -> None:
        for (x, y), r, col in zip(self.to_px(pts).tolist(), (radii * self.px).tolist(), colours):
            self.draw.ellipse((x - r, y - r, x + r, y + r), fill=col)


@functools.lru_cache(maxsize=None)
def _angles(n: int) -> np.ndarray:
    return np.linspace(0.0, 2 * np.pi, n, endpoint=False)


_HARMONICS = np.array([2.0, 3.0, 4.0])[:, None]  # low harmonics: smooth dents and bulges


def _blob(rng, cx, cy, rx, ry, wobble, n=28, angle=0.0) -> np.ndarray:
    """Closed outline of an irregular ellipse: low harmonics bend the radius."""
    t, k = _angles(n), _HARMONICS
    amp = wobble * rng.normal(0, 1.0, (3, 1)) / k
    r = 1.0 + (amp * np.cos(k * t + rng.uniform(0, 2 * np.pi, (3, 1)))).sum(0)
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)


def _in_disc(rng, n: int, radius: float) -> np.ndarray:
    """n points uniform in a disc (sqrt keeps the density even)."""
    r = radius * np.sqrt(rng.random(n))
    t = rng.uniform(0, 2 * np.pi, n)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _arc(rng, radius: float, span: float, n: int) -> np.ndarray:
    """Centre line of a curved nucleus: an arc bowed around the cell centre."""
    t = np.linspace(-span / 2, span / 2, n) + np.pi / 2
    offset = rng.normal(0, 0.1 * radius, 2)
    return np.stack([radius * np.cos(t), radius * np.sin(t) - radius * 0.6], 1) + offset


def _tube(centre_line: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Polygon of a thick curved band (kidney, horseshoe or band nucleus)."""
    d = np.gradient(centre_line, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], 1) / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
    left = centre_line + normal * half_width[:, None]
    right = centre_line - normal * half_width[:, None]
    return np.concatenate([left, right[::-1]])


# --- nuclei ------------------------------------------------------------------

def _lobed_nucleus(cv, rng, R, n_lobes, colour, lobe_r, path_r) -> None:
    """Segmented nucleus: lobes strung along an arc with thin chromatin bridges."""
    span = rng.uniform(1.6, 3.2) if n_lobes > 2 else rng.uniform(1.2, 2.0)
    centres = _arc(rng, path_r * R, span, n_lobes) + rng.normal(0, 0.04 * R, (n_lobes, 2))
    for a, b in zip(centres[:-1], centres[1:]):
        w = rng.uniform(0.03, 0.07) * R
        cv.polygon(_tube(np.stack([a, b]), np.array([w, w])), colour, nucleus=True)
    for cx, cy in centres:
        r = lobe_r * R * rng.uniform(0.8, 1.2)
        cv.polygon(_blob(rng, cx, cy, r, r * rng.uniform(0.7, 1.0), 0.12,
                         angle=rng.uniform(0, np.pi)), colour, nucleus=True)


def _band_nucleus(cv, rng, R, colour, span, width, arc_r) -> None:
    """Unsegmented curved nucleus: kidney (short, thick) to band (long, thin)."""
    n = 16
    line = _arc(rng, arc_r * R, span, n)
    taper = 0.65 + 0.35 * np.sin(np.linspace(0.0, np.pi, n))
    cv.polygon(_tube(line, width * R * taper), colour, nucleus=True)
    for end in (line[0], line[-1]):  # round the ends
        r = width * R * 0.7
        cv.polygon(_blob(rng, end[0], end[1], r, r, 0.05, n=12), colour, nucleus=True)


def _round_nucleus(cv, rng, R, colour, frac, shift) -> None:
    """Compact round nucleus, slightly eccentric (lymphocyte, erythroblast)."""
    off = rng.normal(0, shift * R, 2)
    r = frac * R
    cv.polygon(_blob(rng, off[0], off[1], r, r * rng.uniform(0.85, 1.0), 0.08), colour, nucleus=True)


def _nucleus_kind(name: str, rng) -> str:
    """Nucleus morphology; ~15% of cells borrow a neighbour's (real overlap:
    band neutrophils vs ig, hypo-segmented eosinophils, reactive lymphocytes)."""
    usual = {"neutrophil": "segmented", "eosinophil": "bilobed", "basophil": "bilobed",
             "ig": "band", "monocyte": "kidney", "lymphocyte": "round", "erythroblast": "round"}[name]
    atypical = {"neutrophil": "band", "ig": "segmented", "monocyte": "band",
                "eosinophil": "band", "lymphocyte": "kidney", "basophil": "round",
                "erythroblast": "round"}[name]
    return atypical if rng.random() < 0.15 else usual


def _draw_nucleus(cv, rng, name: str, R: float, colour) -> None:
    kind = _nucleus_kind(name, rng)
    if kind == "segmented":
        _lobed_nucleus(cv, rng, R, int(rng.integers(3, 6)), colour,
                       lobe_r=rng.uniform(0.22, 0.3), path_r=rng.uniform(0.4, 0.55))
    elif kind == "bilobed":
        _lobed_nucleus(cv, rng, R, 2 + int(rng.random() < 0.15), colour,
                       lobe_r=rng.uniform(0.3, 0.38), path_r=rng.uniform(0.42, 0.55))
    elif kind == "band":
        _band_nucleus(cv, rng, R, colour, span=rng.uniform(2.0, 3.6),
                      width=rng.uniform(0.14, 0.24), arc_r=rng.uniform(0.42, 0.55))
    elif kind == "kidney":
        _band_nucleus(cv, rng, R, colour, span=rng.uniform(1.0, 2.2),
                      width=rng.uniform(0.26, 0.4), arc_r=rng.uniform(0.3, 0.45))
    elif name == "lymphocyte":
        _round_nucleus(cv, rng, R, colour, frac=rng.uniform(0.72, 0.86), shift=0.06)
    else:  # erythroblast (very compact) or an atypical round basophil nucleus
        _round_nucleus(cv, rng, R, colour, frac=rng.uniform(0.5, 0.66), shift=0.1)


# --- whole scene ---------------------------------------------------------------

def _background(rng, px: int) -> Image.Image:
    """Flat pale beige field; exposure varies per image in _finish. Mostly a
    shared brightness shift: independent channel noise tints it green/grey."""
    return Image.new("RGB", (px, px), _jitter(rng, np.add(_BACKGROUND, rng.normal(0, 5)), 2.5))


def _red_cells(cv, rng, bg, crowd: int) -> None:
    """Pale pink erythrocytes with a lighter central pallor, scattered around."""
    for _ in range(crowd):
        cx, cy = rng.uniform(-0.55, 0.55, 2)
        r = rng.uniform(0.11, 0.16)
        cv.polygon(_blob(rng, cx, cy, r, r * rng.uniform(0.85, 1.0), 0.04, n=24,
                         angle=rng.uniform(0, np.pi)), _jitter(rng, _RBC, 6))
        pallor = tuple(int(0.45 * a + 0.55 * b) for a, b in zip(bg, _RBC))
        rp = r * rng.uniform(0.25, 0.45)
        cv.polygon(_blob(rng, cx, cy, rp, rp, 0.1, n=16), pallor)


def _platelets(cv, rng, style) -> None:
    """One to three small clumps of purple granular fragments, no white cell."""
    for _ in range(int(rng.integers(1, 4))):
        c = rng.normal(0, 0.1, 2)
        k = int(rng.integers(3, 10))
        halo = _jitter(rng, style["cyto"], 8)
        for x, y in c + _in_disc(rng, k, rng.uniform(0.03, 0.08)):
            r = rng.uniform(0.018, 0.035)
            cv.polygon(_blob(rng, x, y, r * 1.3, r, 0.2, n=12), halo)
        frags = c + _in_disc(rng, 3 * k, rng.uniform(0.03, 0.08))
        radii = rng.uniform(0.006, 0.014, len(frags))
        cv.dots(frags, radii, [_jitter(rng, style["nuc"], 14) for _ in frags])


def _white_cell(cv, rng, name: str, style) -> None:
    """Cytoplasm, granules, nucleus; basophil granules are drawn over the nucleus."""
    R = rng.uniform(*style["radius"])
    cv.polygon(_blob(rng, 0, 0, R, R * rng.uniform(0.88, 1.0), 0.05, n=40), _jitter(rng, style["cyto"], 9))
    if name == "monocyte" and rng.random() < 0.5:  # vacuoles
        pts = _in_disc(rng, int(rng.integers(2, 7)), 0.8 * R)
        cv.dots(pts, rng.uniform(0.01, 0.025, len(pts)), [_jitter(rng, (225, 220, 230), 5)] * len(pts))
    granule = style["granule"]
    over = name == "basophil"
    if granule and not over:
        _granules(cv, rng, R, granule)
    _draw_nucleus(cv, rng, name, R, _jitter(rng, style["nuc"], 10))
    if granule and over:
        _granules(cv, rng, R, granule)


def _granules(cv, rng, R, granule) -> None:
    colour, count, size = granule
    n = int(rng.integers(*count))
    pts = _in_disc(rng, n, 0.92 * R)
    cols = np.clip(np.asarray(_jitter(rng, colour, 10)) + rng.normal(0, 8, (n, 3)), 0, 255).astype(int)
    cv.dots(pts, rng.uniform(*size, n), [tuple(c) for c in cols.tolist()])


def _finish(img: Image.Image, mask: Image.Image, rng, size: int) -> Image.Image:
    """Downsample, then chromatin texture, optics blur, stain jitter, sensor noise.

    Everything after the drawing runs at the final size: it is most of the
    per-image cost, and the supersampling is only needed for smooth edges.
    """
    img, mask = img.reduce(_SUPERSAMPLE), mask.reduce(_SUPERSAMPLE)  # box average
    a = np.asarray(img, np.float32)
    g = max(2, size // 3)
    noise = Image.fromarray((rng.random((g, g), np.float32) * 255).astype(np.uint8))
    tex = noise.resize((size, size), Image.BILINEAR)
    m = np.asarray(mask, np.float32)[..., None] * np.asarray(tex, np.float32)[..., None]
    a *= 1.0 - m * (0.35 / 255.0 / 255.0)  # mottled chromatin, nucleus only
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    # Focus varies per image; a box blur is 3x cheaper than a Gaussian here.
    img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 1.0) * size / 96))
    a = np.asarray(img, np.float32)
    # Per-slide stain/exposure: mostly a shared gain (keeps the beige hue), a
    # little per channel (stain batches differ in purple vs pink balance).
    a = a * (rng.normal(1.0, 0.03) + rng.normal(0.0, 0.015, 3)) + rng.normal(0, 4)
    a += (rng.random(a.shape, np.float32) - 0.5) * 10.0  # sensor noise (uniform: 4x cheaper)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


def render_cell(class_name: str, rng: np.random.Generator, size: int) -> Image.Image:
    """Draw one RGB ``size`` x ``size`` smear crop of ``class_name`` using only ``rng``."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}; expected one of {CLASS_NAMES}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    px = size * _SUPERSAMPLE
    img = _background(rng, px)
    bg = img.getpixel((px // 2, px // 2))
    centre = 0.5 + rng.uniform(-0.07, 0.07, 2)
    cv = _Canvas(img, centre, rng.uniform(0, 2 * np.pi))
    _red_cells(cv, rng, bg, int(rng.integers(4, 10)))
    style = _STYLE[class_name]
    if class_name == "platelet":
        _platelets(cv, rng, style)
    else:
        _white_cell(cv, rng, class_name, style)
    return _finish(img, cv.mask, rng, size)
