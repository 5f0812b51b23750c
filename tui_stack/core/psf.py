"""A frame's point-spread function as one Moffat profile fitted to its bright isolated stars,
and what it says about aperture photometry: the fraction of a star's light an aperture with
an annulus sky keeps (its aperture correction)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MoffatPSF:
    """I(r) = flux (beta - 1) / (pi alpha^2) (1 + r^2 / alpha^2)^-beta, with total `flux`."""

    alpha: float
    beta: float
    n_stars: int = 0
    flux: np.ndarray | None = None  # total flux of each star fitted (NaN where not fitted)

    @property
    def fwhm(self) -> float:
        return float(2 * self.alpha * np.sqrt(2 ** (1 / self.beta) - 1))

    def enclosed(self, r) -> np.ndarray:
        """Fraction of the light within radius r."""
        return 1 - (1 + np.asarray(r, float) ** 2 / self.alpha**2) ** (1 - self.beta)

    def level(self, r) -> np.ndarray:
        """Surface brightness at radius r of a star of flux 1."""
        return (self.beta - 1) / (np.pi * self.alpha**2) * (1 + np.asarray(r, float) ** 2 / self.alpha**2) ** -self.beta

    def aperture_fraction(self, radius: float, annulus: tuple[float, float] | None) -> float:
        """Fraction of a star's total light an aperture sum of `radius` gives, less the star's
        own wing light that an annulus median (r_in, r_out) takes as sky: the aperture
        correction is its inverse."""
        kept = float(self.enclosed(radius))
        if annulus is not None:
            # the median of a monotonic wing over the annulus: its level at the radius that
            # halves the annulus' area (the sky noise on top does not move a median of it)
            r_mid = np.sqrt((annulus[0] ** 2 + annulus[1] ** 2) / 2)
            kept -= float(np.pi * radius**2 * self.level(r_mid))
        return kept


def fwhm_of(alpha: float, beta: float) -> float:
    return float(2 * alpha * np.sqrt(2 ** (1 / beta) - 1))


def alpha_of(fwhm: float, beta: float) -> float:
    return float(fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1)))


def _stamps(data, mask, positions, half):
    """Whole (2 half + 1)^2 stamps around the positions with at most a tenth of them masked:
    (stamps with masked pixels 0, good-pixel masks, centres in stamp coordinates, indices)."""
    h, w = data.shape
    stamps, goods, centres, keep = [], [], [], []
    for k, (x, y) in enumerate(positions):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if cx - half < 0 or cy - half < 0 or cx + half >= w or cy + half >= h:
            continue
        sl = (slice(cy - half, cy + half + 1), slice(cx - half, cx + half + 1))
        good = ~mask[sl] & np.isfinite(data[sl])
        if good.mean() < 0.9:
            continue
        stamps.append(np.where(good, data[sl], 0.0).astype(np.float64))
        goods.append(good)
        centres.append((x - cx, y - cy))
        keep.append(k)
    return stamps, goods, centres, keep


def _fit_star(stamp, weight, grid, centre, alpha, beta, free_shape: bool):
    """One star's Moffat: flux, centre and flat background (and alpha, beta with
    `free_shape`) by weighted least squares; returns (flux, x, y, background, alpha, beta, chi)."""
    from scipy.optimize import least_squares

    gx, gy = grid
    g = weight > 0
    px, py, wt, d = gx[g], gy[g], weight[g], stamp[g]
    edge = np.hypot(px, py) > px.max() - 2
    b0 = float(np.median(d[edge])) if edge.any() else 0.0
    f0 = max(float((d - b0).sum()), 1.0)
    t0 = [np.log(f0), centre[0], centre[1], b0] + ([np.log(alpha), np.log(beta - 1)] if free_shape else [])

    def parts(t):
        a, b = (np.exp(t[4]), 1 + np.exp(t[5])) if free_shape else (alpha, beta)
        dx, dy = px - t[1], py - t[2]
        u = 1 + (dx * dx + dy * dy) / (a * a)
        fp = np.exp(t[0]) * (b - 1) / (np.pi * a * a) * u**-b
        return a, b, dx, dy, u, fp

    def resid(t):
        fp = parts(t)[5]
        return (d - fp - t[3]) * wt

    def jac(t):
        a, b, dx, dy, u, fp = parts(t)
        cols = [fp, fp * 2 * b * dx / (a * a * u), fp * 2 * b * dy / (a * a * u), np.ones_like(fp)]
        if free_shape:
            cols += [fp * (-2 + 2 * b * (dx * dx + dy * dy) / (a * a * u)), fp * (1 - (b - 1) * np.log(u))]
        return -np.column_stack(cols) * wt[:, None]

    res = least_squares(resid, t0, jac=jac, method="lm", x_scale="jac", max_nfev=50)
    a, b = (np.exp(res.x[4]), 1 + np.exp(res.x[5])) if free_shape else (alpha, beta)
    chi = np.zeros_like(stamp)
    chi[g] = res.fun
    return float(np.exp(res.x[0])), float(res.x[1]), float(res.x[2]), float(res.x[3]), float(a), float(b), chi


def fit_moffat(
    data: np.ndarray,
    mask: np.ndarray | None,
    positions,
    half: int,
    noise: float,
    sky_level: float = 0.0,
    fwhm_guess: float = 4.0,
    n_bright: int = 12,
    fluxes: bool = True,
) -> MoffatPSF | None:
    """One Moffat (alpha, beta) shared by the stars at `positions` in a sky-subtracted frame,
    fitted over (2 half + 1)^2 stamps, each star with its own flux, centre and flat background.

    The shape comes from the `n_bright` brightest stars (by their stamp sums): each is first
    fitted on its own, pixels more than 5 sigma off that fit (a neighbour, a cosmic ray) are
    left out, then alpha and beta are fitted to them all at once. With `fluxes`, every star's
    total flux under that shape is fitted too. Pixels are weighted by their noise: the sky
    `noise` and the star's photon noise at the gain the sky implies (`sky_level` / noise^2).
    None when no star has a whole stamp.
    """
    from scipy.optimize import least_squares

    pos = np.atleast_2d(np.asarray(positions, float))
    if mask is None:
        mask = np.zeros(data.shape, bool)
    if not (np.isfinite(noise) and noise > 0):
        return None
    stamps, goods, centres, keep = _stamps(data, mask, pos, half)
    if not stamps:
        return None
    off = np.arange(-half, half + 1, dtype=float)
    gy, gx = np.meshgrid(off, off, indexing="ij")
    gain = sky_level / noise**2 if sky_level > 0 and noise > 0 else np.inf
    # photon noise from a smoothed stamp: weights from the noisy pixels themselves favour the low
    # ones and bias the fitted wings (beta 2.02 for 2.00, measured)
    from scipy.ndimage import uniform_filter

    order = np.argsort([-s.sum() for s in stamps])[:n_bright]
    weights = {k: np.where(goods[k], 1.0 / np.sqrt(noise**2 + np.clip(uniform_filter(stamps[k], 3), 0, None) / gain), 0.0)
               for k in (range(len(stamps)) if fluxes else order)}
    beta0 = 3.0
    alpha0 = alpha_of(fwhm_guess, beta0)
    fits = []
    for k in order:
        try:
            f, x, y, b, a, be, chi = _fit_star(stamps[k], weights[k], (gx, gy), centres[k], alpha0, beta0, True)
        except ValueError:  # nothing finite to fit (a stamp of masked pixels)
            continue
        if not np.isfinite([x, y, a, be]).all():
            continue
        weights[k] = np.where(np.abs(chi) > 5, 0.0, weights[k])
        fits.append((k, x, y, a, be))
    if not fits:
        return None
    # the shared shape: centres as each star's own fit put them; flux and background are
    # linear given the shape, so solved exactly inside each evaluation
    S = np.array([stamps[k] for k, *_ in fits])
    W = np.array([weights[k] for k, *_ in fits])
    X = np.array([x for _, x, _, _, _ in fits])[:, None, None]
    Y = np.array([y for _, _, y, _, _ in fits])[:, None, None]
    W2 = W * W
    s11, s1d = W2.sum(axis=(1, 2)), (W2 * S).sum(axis=(1, 2))

    def resid(t):
        a, b = np.exp(t[0]), 1 + np.exp(t[1])
        prof = (b - 1) / (np.pi * a * a) * (1 + ((gx - X) ** 2 + (gy - Y) ** 2) / (a * a)) ** -b
        wp = W2 * prof
        spp, sp1, spd = (wp * prof).sum(axis=(1, 2)), wp.sum(axis=(1, 2)), (wp * S).sum(axis=(1, 2))
        det = spp * s11 - sp1 * sp1
        flux = (spd * s11 - sp1 * s1d) / det  # weighted least squares of flux and background, star by star
        bg = (spp * s1d - sp1 * spd) / det
        return ((S - flux[:, None, None] * prof - bg[:, None, None]) * W).ravel()

    shapes = np.array([(a, be) for _, _, _, a, be in fits])
    t0 = [np.log(np.median(shapes[:, 0])), np.log(np.median(shapes[:, 1]) - 1)]
    try:
        res = least_squares(resid, t0, method="lm", x_scale="jac", max_nfev=40)
    except ValueError:
        return None
    alpha, beta = float(np.exp(res.x[0])), float(1 + np.exp(res.x[1]))
    if not (np.isfinite(alpha) and np.isfinite(beta)) or beta > 50:
        return None
    flux = np.full(len(pos), np.nan)
    if fluxes:
        # each star's total flux under the shape, with its own centre and background
        for k, idx in enumerate(keep):
            try:
                flux[idx] = _fit_star(stamps[k], weights[k], (gx, gy), centres[k], alpha, beta, False)[0]
            except ValueError:
                pass
    return MoffatPSF(alpha=alpha, beta=beta, n_stars=len(fits), flux=flux)
