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
        median=nanmedian(data),
        std=float(np.std(good)) if good.size else float("nan"),
        region=region,
        n_pixels=int(good.size),
    )


def nanmedian(data: np.ndarray) -> float:
    """np.nanmedian(data), exactly, without partitioning the whole image: the ranks of the
    median are found between two values bracketing it in a sample, so only the ~1% of pixels
    between them are partitioned (16M pixels: 0.25 s -> 0.05 s, measured). When the bracket
    misses (unlucky sample), numpy's own answer."""
    flat = data.reshape(-1)
    if flat.size < 1_000_000:
        return float(np.nanmedian(flat))
    n = int(np.count_nonzero(~np.isnan(flat)))
    if n == 0:
        return float("nan")
    good = flat  # NaN fail every comparison below: no need to copy them out
    sample = good[:: max(1, good.size // 100_000)]
    sample = np.sort(sample[~np.isnan(sample)])
    m = sample.size
    if m < 1000:
        return float(np.nanmedian(flat))
    # the median's rank in a sample of m is within ~sqrt(m)/2 of m/2; 5 of those either way
    lo, hi = sample[max(0, m // 2 - 5 * int(np.sqrt(m)))], sample[min(m - 1, m // 2 + 5 * int(np.sqrt(m)))]
    below = int(np.count_nonzero(good < lo))
    middle = good[(good >= lo) & (good <= hi)]
    k1, k2 = (n - 1) // 2 - below, n // 2 - below
    if not (0 <= k1 and k2 < middle.size):
        return float(np.nanmedian(flat))
    part = np.partition(middle, (k1, k2))
    return float(np.mean(part[[k1, k2]]))  # as numpy: the mean of the middle two, in the data's type


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
