"""Aperture photometry of comparison stars, and the scale factors it gives.

Two methods (`[scale] method`):
- "growth": each frame's stars are measured in an aperture, and the sum is divided
  by the fraction of a star's light that aperture (less its annulus sky) holds in that frame,
  from a Moffat PSF fitted to the frame's bright comparison stars (their curve of growth
  extrapolated to infinity). Frames of different seeing and PSF wings then give the same
  total flux; the scale is a noise-weighted, clipped mean of the star ratios.
- "fixed" (default, SPEC.md's scale): the lab's fixed aperture, same radius in every frame, median of the star ratios.
  Exact only while every frame has the same PSF.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Per-star flags; a flagged star is left out of the scale of that frame.
SATURATED = "saturated"
CROWDED = "crowded"
OFF_FRAME = "off_frame"  # aperture reaches past the frame or into masked pixels
NO_FLUX = "no_flux"
NO_PSF = "no_psf"  # method "growth": no PSF could be fitted in this frame (no whole stamp of a clean star)


SCALE_METHODS = ("growth", "fixed")
STARS_DISAGREE = "stars_disagree"  # a frame's star ratios spread more than their noise allows


@dataclass
class StarFluxes:
    """Fluxes of the comparison stars in one frame, with a reason per star it cannot be used."""

    flux: np.ndarray  # sky-subtracted aperture sums (method "growth": divided by `fraction`)
    local_sky: np.ndarray  # per-pixel sky removed from the aperture (0 with the global sky)
    flags: list[list[str]]
    error: np.ndarray | None = None  # 1-sigma noise of each flux (sky and photon noise)
    radius: float = float("nan")  # aperture radius used, px
    fwhm: float = float("nan")  # of the frame's fitted Moffat PSF, px
    beta: float = float("nan")  # its wing index
    fraction: float = 1.0  # share of a star's light the aperture less annulus kept (1 / correction; growth: the stars' median)
    fraction_error: float = 0.0  # its relative 1-sigma uncertainty from the fitted PSF (common to all stars)
    method: str = "fixed"


@dataclass
class FrameScale:
    scale: float
    mad: float  # robust spread of the star ratios (1.4826 * MAD)
    n_used: int
    ratios: np.ndarray  # reference flux / frame flux per star, NaN where not used
    error: float = float("nan")  # 1-sigma error of the scale from the star ratios' scatter
    spread: float = float("nan")  # scatter of the star ratios over what their noise explains (1: noise)
    flags: list[str] = field(default_factory=list)


def measure_stars(
    data: np.ndarray,
    mask: np.ndarray | None,
    positions: list[tuple[float, float]],
    radius: float,
    sky_level: float,
    saturation: float | None,
    annulus: tuple[float, float] | None = None,
    statistic: str = "median",
    discs: np.ndarray | None = None,
    outlier: float | None = None,
) -> StarFluxes:
    """Aperture sums at `positions` in a sky-subtracted frame.

    `sky_level` is what was subtracted, so raw values (data + sky) can be checked
    against `saturation`. With `annulus` = (r_in, r_out) the annulus' `statistic` ("mean":
    `annulus_means`, with `discs` and `outlier`; "median": `annulus_medians`) is removed as a
    local sky as well.
    """
    pos = np.atleast_2d(np.asarray(positions, dtype=float))
    if mask is None:
        mask = np.zeros(data.shape, dtype=bool)
    flux = aperture_sums(data, mask, pos, radius)
    local = np.zeros(len(pos))
    if annulus is not None:
        local = np.nan_to_num(annulus_means(data, mask, pos, *annulus, discs, outlier) if statistic == "mean"
                              else annulus_medians(data, mask, pos, *annulus))
        flux = flux - local * np.pi * radius**2
    flags = [star_flags(data, mask, x, y, radius, sky_level, saturation) for x, y in pos]
    return StarFluxes(flux=flux, local_sky=local, flags=flags)


# photutils' aperture_photometry(method="exact") and ApertureStats(sum_method="center").median,
# written here with numpy for one reason: importing photutils.aperture costs ~1 s (its package
# init scans every installed distribution and loads astropy.table), a fifth of a whole `run`
# on 16 frames of 4096^2 (measured). The same numbers to 1e-9: tests/test_steps.py.


def _disk_corner(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed area of the disk of radius r (centre 0) inside the rectangle between (0, 0) and
    (x, y): the integral of sqrt(r^2 - t^2) capped at |y|, in closed form."""
    sign = np.sign(x) * np.sign(y)
    x, y = np.minimum(np.abs(x), r), np.minimum(np.abs(y), r)
    a = np.minimum(x, np.sqrt(r * r - y * y))  # up to here the cap |y| is below the circle

    def arc(t):  # integral of sqrt(r^2 - u^2) from 0 to t
        return 0.5 * (t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(np.minimum(t / r, 1.0)))

    return sign * (y * a + arc(x) - arc(a))


def _stamps(shape, pos: np.ndarray, reach: float):
    """Pixel grids around each position covering `reach`: (iy, ix) index arrays (k, s, s),
    clipped into the frame, and which of them are really inside it."""
    h, w = shape
    half = int(np.ceil(reach)) + 1
    off = np.arange(-half, half + 1)
    cx, cy = np.floor(pos[:, 0] + 0.5).astype(int), np.floor(pos[:, 1] + 0.5).astype(int)
    gy, gx = np.meshgrid(off, off, indexing="ij")
    iy, ix = cy[:, None, None] + gy, cx[:, None, None] + gx
    inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    return np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1), inside


def aperture_sums(data: np.ndarray, mask: np.ndarray, pos: np.ndarray, radius: float) -> np.ndarray:
    """Sum of each circular aperture, every pixel weighted by the exact area of its overlap
    with the circle; masked pixels and pixels off the frame count zero (photutils' exact)."""
    if radius <= 0:
        raise ValueError("aperture radius must be positive")
    iy, ix, inside = _stamps(data.shape, pos, radius)
    dx, dy = ix - pos[:, 0, None, None], iy - pos[:, 1, None, None]
    area = (_disk_corner(dx + 0.5, dy + 0.5, radius) - _disk_corner(dx - 0.5, dy + 0.5, radius)
            - _disk_corner(dx + 0.5, dy - 0.5, radius) + _disk_corner(dx - 0.5, dy - 0.5, radius))
    area = np.clip(area, 0.0, 1.0)
    values = np.where(inside & ~mask[iy, ix], data[iy, ix], 0.0)
    sums = (area * values).sum(axis=(1, 2))
    sums[(area * inside).sum(axis=(1, 2)) == 0] = np.nan  # wholly off the frame: no measurement
    return sums


def annulus_medians(data: np.ndarray, mask: np.ndarray, pos: np.ndarray, r_in: float, r_out: float) -> np.ndarray:
    """Median of the unmasked pixels whose centre lies in r_in <= d < r_out of each position,
    NaN where there is none (photutils' ApertureStats median with sum_method="center")."""
    iy, ix, inside = _stamps(data.shape, pos, r_out)
    d2 = (ix - pos[:, 0, None, None]) ** 2 + (iy - pos[:, 1, None, None]) ** 2
    use = inside & ~mask[iy, ix] & (d2 < r_out * r_out) & ~(d2 < r_in * r_in)
    return _ring_medians(data[iy, ix].astype(np.float64), use)


def _ring_medians(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """The median of each star's `use` pixels of `values` (stars, s, s), NaN where none."""
    return np.array([np.median(v[u]) if u.any() else np.nan for v, u in zip(values, use)])


def annulus_means(data: np.ndarray, mask: np.ndarray, pos: np.ndarray, r_in: float, r_out: float,
                  discs: np.ndarray | None = None, outlier: float | None = None) -> np.ndarray:
    """Mean of the unmasked pixels whose centre lies in r_in <= d < r_out of each position, NaN
    where there is none; pixels inside `discs` ((x, y, radius) rows: other stars, the same sky
    in every frame) and, with `outlier`, pixels more than that above the ring's median (this
    frame's cosmic rays) left out. Linear in the data where a median is not: the light of the
    faint stars left in the ring dims with the frame, as the star does, and cancels in a ratio
    of frames whatever their noise (a frame dimmed to half by cloud read 8-16% high on the real
    bulge field with the median)."""
    iy, ix, inside = _stamps(data.shape, pos, r_out)
    d2 = (ix - pos[:, 0, None, None]) ** 2 + (iy - pos[:, 1, None, None]) ** 2
    use = inside & ~mask[iy, ix] & (d2 < r_out * r_out) & ~(d2 < r_in * r_in)
    if discs is not None and len(discs):
        for k in range(len(pos)):
            gap = np.hypot(discs[:, 0] - pos[k, 0], discs[:, 1] - pos[k, 1])
            for x, y, r in discs[(gap < r_out + discs[:, 2]) & (gap > 1.0)]:  # not the star's own
                use[k] &= (ix[k] - x) ** 2 + (iy[k] - y) ** 2 >= r * r
    values = data[iy, ix]
    if outlier is not None:
        use &= ~(values > (_ring_medians(values, use) + outlier)[:, None, None])
    n = use.sum(axis=(1, 2))
    total = np.where(use, values, 0.0).sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def star_discs(x, y, peak, fwhm: float, noise: float) -> np.ndarray:
    """(x, y, radius) of each star out to where a Moffat of the field's FWHM (beta 2.5, broad
    wings) falls to the noise, plus a pixel: what an annulus mean leaves out, chosen once (on
    the reference) so that every frame's ring holds the same pixels."""
    x, y, peak = (np.asarray(a, float) for a in (x, y, peak))
    beta = 2.5
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    ratio = np.maximum(peak / max(noise, 1e-12), 1.0)
    return np.c_[x, y, alpha * np.sqrt(np.maximum(ratio ** (1 / beta) - 1, 0)) + 1.0]


COSMIC_SIGMA = 8.0  # a ring pixel this many sky sigmas above the ring's median is a cosmic ray


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


def measure_frame(
    data: np.ndarray,
    mask: np.ndarray | None,
    positions,
    method: str,
    radius: float | None,
    sky_level: float,
    noise: float,
    saturation: float | None,
    annulus: tuple[float, float] | None | str = "auto",
    fwhm_guess: float = 4.0,
    fwhm_radius: float = 2.0,
    offset: tuple[float, float] = (0.0, 0.0),
    statistic: str = "median",
    discs: np.ndarray | None = None,
) -> StarFluxes:
    """The comparison stars of one sky-subtracted frame, by `method` ("growth" or "fixed").

    `radius` None: 20 px with "fixed" (the lab's), `fwhm_radius` times the frame's fitted FWHM
    with "growth" (at least 4 px). `annulus` "auto": from radius + 5 to radius + 15; None: no local sky.
    With "growth" the fluxes are total fluxes: the aperture sums divided by the share of the
    light that aperture and annulus keep under the frame's fitted Moffat PSF (per star: the
    annulus median of its own wing depends on its flux against the sky noise). A frame whose PSF
    cannot be fitted gets NaN fluxes (no scale rather than a wrong one). `offset`: where the
    stars sit from the apertures' centres, px (an integer shift's rounding). `statistic`: the
    annulus "median" or "mean" (`annulus_means`: without the `discs` of other stars and this
    frame's cosmic rays; with "growth", the correction then takes the mean of the star's own wing).
    """
    from tui_stack.core import psf

    if method not in SCALE_METHODS:
        raise ValueError(f"unknown scale method {method!r}; one of {', '.join(SCALE_METHODS)}")
    pos = np.atleast_2d(np.asarray(positions, dtype=float))
    if mask is None:
        mask = np.zeros(data.shape, dtype=bool)

    def ring(r):
        return (r + 5.0, r + 15.0) if annulus == "auto" else annulus

    cosmic = COSMIC_SIGMA * noise if statistic == "mean" and noise > 0 else None

    if method == "fixed":
        r = 20.0 if radius is None else float(radius)
        fl = measure_stars(data, mask, pos, r, sky_level, saturation, ring(r), statistic, discs, cosmic)
        fl.error, fl.radius = flux_errors(fl.flux, r, sky_level, noise), r
        return fl
    # the PSF is fitted on the unsaturated stars (a neighbour in a stamp is clipped by the fit)
    good = np.array([not _saturated(data, x, y, sky_level, saturation) for x, y in pos], bool)
    # stamps of 15 px (half width) up to FWHM 6: larger ones take in neighbours' wings and
    # fit the wings too steep in crowded fields (beta 2.38 for 2.36: 0.3% on the correction)
    half = int(np.clip(np.ceil(2.5 * fwhm_guess), 15, 30))
    shape = psf.fit_moffat(data, mask, pos[good], half, noise, sky_level, fwhm_guess) if good.any() else None
    r = float(radius) if radius is not None else max(fwhm_radius * (shape.fwhm if shape else fwhm_guess), 4.0)
    fl = measure_stars(data, mask, pos, r, sky_level, saturation, ring(r), statistic, discs, cosmic)
    fl.error, fl.radius, fl.method = flux_errors(fl.flux, r, sky_level, noise), r, method
    if shape is None:
        fl.flux = np.full(len(pos), np.nan)
        fl.fraction = float("nan")
        fl.flags = [f + [NO_PSF] for f in fl.flags]
        return fl
    fl.fwhm, fl.beta = shape.fwhm, shape.beta
    mean = statistic == "mean"
    fraction = np.full(len(pos), shape.aperture_fraction(r, ring(r), offset=offset, mean=mean))
    if ring(r) is not None and noise > 0 and not mean:
        # each star's own wing under the sky noise in its annulus median, from a first total flux
        first = fl.flux / fraction
        ok = np.isfinite(first) & (first > 0)
        if ok.any():
            fraction[ok] = shape.aperture_fraction(r, ring(r), first[ok], noise, offset)
    fl.fraction = float(np.median(fraction))
    fl.fraction_error = shape.fraction_error(r, ring(r), offset, mean)
    fl.flux = fl.flux / fraction
    fl.error = fl.error / fraction
    return fl


def _saturated(data: np.ndarray, x: float, y: float, sky_level: float, saturation: float | None) -> bool:
    """A pixel at or above `saturation` within 2 px of (x, y), or the star off the frame."""
    h, w = data.shape
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    if not (np.isfinite(x) and np.isfinite(y)) or not (2 <= ix < w - 2 and 2 <= iy < h - 2):
        return True
    return saturation is not None and bool(np.nanmax(data[iy - 2:iy + 3, ix - 2:ix + 3]) + sky_level >= saturation)


def flux_errors(flux: np.ndarray, radius: float, sky_level: float, noise: float) -> np.ndarray:
    """1-sigma noise of aperture sums: the sky noise over the aperture and the star's own photon
    noise at the gain the sky implies (sky / noise^2 electrons per unit), with a 0.1% floor
    (flat field, centring) so that no one bright star outweighs all the others."""
    gain = sky_level / noise**2 if sky_level > 0 and noise > 0 else np.inf
    f = np.clip(np.nan_to_num(flux), 0, None)
    return np.sqrt(np.pi * radius**2 * noise**2 + f / gain + (1e-3 * f) ** 2)


def weighted_scale(ref: StarFluxes, frame: StarFluxes, clip: float = 4.0, disagree: float = 3.0) -> FrameScale:
    """scale = noise-weighted mean of reference flux / frame flux over the usable stars, stars
    more than `clip` times their own noise (or the robust spread, if larger) from it left out,
    again until none is. The frame is flagged STARS_DISAGREE when the star ratios scatter more
    than `disagree` times what their noise explains (a PSF that varies over the field, a
    variable star, a cloud edge)."""
    ok = usable(ref) & usable(frame)
    ok &= np.isfinite(ref.flux) & np.isfinite(frame.flux)
    ratios = np.full(len(ref.flux), np.nan)
    ratios[ok] = ref.flux[ok] / frame.flux[ok]
    if not ok.any():
        return FrameScale(float("nan"), float("nan"), 0, ratios)
    rel = np.hypot(ref.error / ref.flux, frame.error / frame.flux)
    r, e = ratios[ok], (rel * ratios)[ok]
    keep = np.ones(r.size, bool)
    centre = float(np.median(r))
    for _ in range(10):
        chi = (r - centre) / e
        spread = 1.4826 * float(np.median(np.abs(chi[keep]))) if keep.sum() > 2 else 1.0
        new = np.abs(chi) <= clip * max(spread, 1.0)
        if not new.any():
            break
        w = 1 / e[new] ** 2
        centre = float(np.sum(w * r[new]) / w.sum())
        if (new == keep).all():
            break
        keep = new
    used = np.flatnonzero(ok)[~keep]
    ratios[used] = np.nan  # clipped: shown as not used
    w = 1 / e[keep] ** 2
    n = int(keep.sum())
    chi2 = float(np.sum(w * (r[keep] - centre) ** 2) / (n - 1)) if n > 1 else 1.0
    spread = float(np.sqrt(chi2))
    # the two frames' corrections are each common to all their stars: no average over stars lowers them
    error = float(np.sqrt(max(chi2, 1.0) / w.sum() + (centre * ref.fraction_error) ** 2
                          + (centre * frame.fraction_error) ** 2))
    mad = float(1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))) if n > 1 else 0.0
    flags = [STARS_DISAGREE] if n >= 3 and spread > disagree else []
    return FrameScale(centre, mad, n, ratios, error, spread, flags)


def scale_of(ref: StarFluxes, frame: StarFluxes) -> FrameScale:
    """The frame's scale by the method its fluxes were measured with."""
    return weighted_scale(ref, frame) if frame.method == "growth" else frame_scale(ref, frame)
