"""Aperture photometry of comparison stars, and the scale factors it gives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Per-star flags; a flagged star is left out of the scale of that frame.
SATURATED = "saturated"
CROWDED = "crowded"
OFF_FRAME = "off_frame"  # aperture reaches past the frame or into masked pixels
NO_FLUX = "no_flux"


@dataclass
class StarFluxes:
    """Fluxes of the comparison stars in one frame, with a reason per star it cannot be used."""

    flux: np.ndarray  # sky-subtracted aperture sums
    local_sky: np.ndarray  # per-pixel sky removed from the aperture (0 with the global sky)
    flags: list[list[str]]


@dataclass
class FrameScale:
    scale: float
    mad: float  # robust spread of the star ratios (1.4826 * MAD)
    n_used: int
    ratios: np.ndarray  # reference flux / frame flux per star, NaN where not used


def measure_stars(
    data: np.ndarray,
    mask: np.ndarray | None,
    positions: list[tuple[float, float]],
    radius: float,
    sky_level: float,
    saturation: float | None,
    annulus: tuple[float, float] | None = None,
) -> StarFluxes:
    """Aperture sums at `positions` in a sky-subtracted frame.

    `sky_level` is what was subtracted, so raw values (data + sky) can be checked
    against `saturation`. With `annulus` = (r_in, r_out) the median in that annulus
    is removed as a local sky as well.
    """
    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    pos = np.atleast_2d(np.asarray(positions, dtype=float))
    if mask is None:
        mask = np.zeros(data.shape, dtype=bool)
    aper = CircularAperture(pos, r=radius)
    table = aperture_photometry(data, aper, mask=mask, method="exact")
    flux = np.asarray(table["aperture_sum"], dtype=float)
    local = np.zeros(len(pos))
    if annulus is not None:
        ann = CircularAnnulus(pos, r_in=annulus[0], r_out=annulus[1])
        stats = ApertureStats(data, ann, mask=mask, sum_method="center")
        local = np.nan_to_num(np.asarray(stats.median, dtype=float))
        flux = flux - local * aper.area
    flags = [star_flags(data, mask, x, y, radius, sky_level, saturation) for x, y in pos]
    return StarFluxes(flux=flux, local_sky=local, flags=flags)


def star_flags(
    data: np.ndarray, mask: np.ndarray, x: float, y: float, radius: float, sky_level: float, saturation: float | None
) -> list[str]:
    """Why a star's flux cannot be trusted here: off the frame, saturated, crowded."""
    from scipy import ndimage

    h, w = data.shape
    r = int(np.ceil(radius))
    x0, x1, y0, y1 = int(np.floor(x)) - r, int(np.floor(x)) + r + 2, int(np.floor(y)) - r, int(np.floor(y)) + r + 2
    if x - radius < 0 or y - radius < 0 or x + radius > w - 1 or y + radius > h - 1:
        return [OFF_FRAME]
    cut = data[y0:y1, x0:x1]
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    if mask[y0:y1, x0:x1][inside].any():
        return [OFF_FRAME]
    flags = []
    if saturation is not None and np.max(cut[inside]) + sky_level >= saturation:
        flags.append(SATURATED)
    # A neighbour peak at least half as high as the star, inside the aperture, biases
    # the ratio when seeing changes: leave such stars out.
    smooth = ndimage.gaussian_filter(cut.astype(np.float32), 1.0)
    centre = (yy - y) ** 2 + (xx - x) ** 2 <= 9.0
    star_peak = smooth[centre].max()
    peaks = (smooth == ndimage.maximum_filter(smooth, size=5)) & inside & ~centre
    if star_peak > 0 and np.any(smooth[peaks] >= 0.5 * star_peak):
        flags.append(CROWDED)
    return flags


def usable(fluxes: StarFluxes) -> np.ndarray:
    return np.array([not f for f in fluxes.flags]) & np.isfinite(fluxes.flux) & (fluxes.flux > 0)


def frame_scale(ref: StarFluxes, frame: StarFluxes) -> FrameScale:
    """scale = median over usable stars of reference flux / frame flux (SPEC convention)."""
    ok = usable(ref) & usable(frame)
    ratios = np.full(len(ref.flux), np.nan)
    ratios[ok] = ref.flux[ok] / frame.flux[ok]
    if not ok.any():
        return FrameScale(float("nan"), float("nan"), 0, ratios)
    r = ratios[ok]
    med = float(np.median(r))
    mad = float(1.4826 * np.median(np.abs(r - med))) if r.size > 1 else 0.0
    return FrameScale(med, mad, int(ok.sum()), ratios)
