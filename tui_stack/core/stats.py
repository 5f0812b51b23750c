"""Statistics of a combined image: the lab's median and region std, photometry vs the reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_REGION = (400, 500, 400, 500)  # y0, y1, x0, x1: the lab's [400:500, 400:500]


@dataclass
class ImageStats:
    median: float
    std: float
    region: tuple[int, int, int, int]
    n_pixels: int


def region_within(shape, region=DEFAULT_REGION) -> tuple[int, int, int, int]:
    """The lab's region if it fits; otherwise a 100 px square (or less) at the centre."""
    y0, y1, x0, x1 = region
    h, w = shape
    if y1 <= h and x1 <= w:
        return region
    sy, sx = min(100, h), min(100, w)
    cy, cx = h // 2, w // 2
    return (cy - sy // 2, cy - sy // 2 + sy, cx - sx // 2, cx - sx // 2 + sx)


def image_stats(data: np.ndarray, region=DEFAULT_REGION) -> ImageStats:
    """Median of the whole image and std in `region` ([y0, y1, x0, x1]), NaN pixels ignored."""
    region = region_within(data.shape, tuple(region))
    y0, y1, x0, x1 = region
    cut = data[y0:y1, x0:x1]
    good = cut[np.isfinite(cut)]
    return ImageStats(
        median=float(np.nanmedian(data)),
        std=float(np.std(good)) if good.size else float("nan"),
        region=region,
        n_pixels=int(good.size),
    )


@dataclass
class PhotometryComparison:
    stars: list[tuple[float, float]]
    reference_flux: list[float]
    combined_flux: list[float]
    ratio_median: float


def compare_photometry(ref_flux, combined_flux, stars) -> PhotometryComparison:
    """combined / reference flux per star and the median ratio (1 when the scaling is right)."""
    ref = np.asarray(ref_flux, dtype=float)
    comb = np.asarray(combined_flux, dtype=float)
    ok = np.isfinite(ref) & np.isfinite(comb) & (ref > 0)
    ratio = float(np.median(comb[ok] / ref[ok])) if ok.any() else float("nan")
    return PhotometryComparison([tuple(map(float, s)) for s in stars], ref.tolist(), comb.tolist(), ratio)
