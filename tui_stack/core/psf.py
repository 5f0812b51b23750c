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
    # covariance of the fit's (log alpha, log(beta - 1)): how well the stars pin the shape
    cov: np.ndarray | None = None

    @property
    def fwhm(self) -> float:
        return float(2 * self.alpha * np.sqrt(2 ** (1 / self.beta) - 1))

    def enclosed(self, r) -> np.ndarray:
        """Fraction of the light within radius r."""
        return 1 - (1 + np.asarray(r, float) ** 2 / self.alpha**2) ** (1 - self.beta)

    def level(self, r) -> np.ndarray:
        """Surface brightness at radius r of a star of flux 1."""
        return (self.beta - 1) / (np.pi * self.alpha**2) * (1 + np.asarray(r, float) ** 2 / self.alpha**2) ** -self.beta

    def annulus_mean(self, annulus: tuple[float, float]) -> float:
        """The mean over the pixels whose centres lie in the annulus (r_in, r_out) of this
        profile of flux 1 integrated over pixels (what `photometry.annulus_means` reads of a
        star's own wing), averaged over where in its pixel the star falls."""
        r_in, r_out = annulus
        size = 2 * int(np.ceil(r_out)) + 3
        gy, gx = np.mgrid[0:size, 0:size].astype(float) - size // 2
        means = []
        for fx, fy in ((0.0, 0.0), (0.25, 0.1), (-0.3, 0.35), (0.45, -0.2)):
            dx, dy = gx - fx, gy - fy
            d2 = dx * dx + dy * dy
            ring = (d2 >= r_in * r_in) & (d2 < r_out * r_out)
            core = d2[ring] < (2 * self.fwhm) ** 2
            means.append(float(pixel_moffat(dx[ring], dy[ring], self.alpha, self.beta, core).mean()))
        return float(np.mean(means))

    def aperture_fraction(self, radius: float, annulus: tuple[float, float] | None, flux=None, noise: float = 0.0,
                          offset: tuple[float, float] = (0.0, 0.0), mean: bool = False):
        """Fraction of a star's total light an aperture sum of `radius` gives, less the star's
        own wing light that an annulus median (r_in, r_out) takes as sky: the aperture
        correction is its inverse. The aperture's share is measured on the profile in pixels
        (`in_pixels`), the star `offset` from the aperture's centre. Without noise the median
        of a monotonic wing is its level at the radius that halves the annulus' area; with
        `flux` (the stars' total fluxes) and the sky `noise` per pixel, one fraction per star
        from the median of wing plus noise."""
        kept = self.in_pixels(radius, offset)
        if annulus is None:
            return kept
        if mean:  # an annulus mean (linear) reads the wing's mean, whatever the noise
            return kept - float(np.pi * radius**2 * self.annulus_mean(annulus))
        if flux is None or not noise > 0:
            r_mid = np.sqrt((annulus[0] ** 2 + annulus[1] ** 2) / 2)
            return kept - float(np.pi * radius**2 * self.level(r_mid))
        flux = np.atleast_1d(np.asarray(flux, float))
        return kept - np.pi * radius**2 * self.noisy_median(flux, annulus, noise) / flux

    def in_pixels(self, radius: float, offset: tuple[float, float] = (0.0, 0.0)) -> float:
        """The share of the light an exact-overlap aperture sum of `radius` takes of this
        profile integrated over pixels (as the fit models them), the star `offset` px from the
        aperture's centre, averaged over where in its pixel the star falls. The integral
        (`enclosed`) is what a continuous aperture would take: the pixels' steps across the
        aperture's edge differ from it by 0.1-0.15% at 2 FWHM (sharp frames most), and the
        rounding of an integer shift puts the aperture up to 0.7 px off the star (0.4% more)."""
        from tui_stack.core.photometry import aperture_sums

        size = 2 * int(np.ceil(radius + np.hypot(*offset))) + 5
        c = size // 2
        phases = np.array([(0.0, 0.0), (0.25, 0.1), (-0.3, 0.35), (0.45, -0.2)])
        g = np.arange(size, dtype=float) - c
        sums = []
        for fx, fy in phases:
            img = pixel_moffat(g[None, :] - fx, g[:, None] - fy, self.alpha, self.beta)
            at = np.array([[c + fx - offset[0], c + fy - offset[1]]])
            sums.append(aperture_sums(img, np.zeros(img.shape, bool), at, float(radius))[0])
        return float(np.mean(sums))

    def fraction_error(self, radius: float, annulus: tuple[float, float] | None, offset=(0.0, 0.0),
                       mean: bool = False) -> float:
        """Relative 1-sigma uncertainty of `aperture_fraction` from the fitted shape's own (its
        covariance, through the fraction's derivatives); 0 without a covariance."""
        if self.cov is None or not np.all(np.isfinite(self.cov)):
            return 0.0
        t = np.array([np.log(self.alpha), np.log(self.beta - 1)])
        base = self.aperture_fraction(radius, annulus, offset=offset, mean=mean)
        grad = []
        for i in range(2):
            dt = t.copy()
            dt[i] += 1e-3
            other = MoffatPSF(float(np.exp(dt[0])), float(1 + np.exp(dt[1])))
            grad.append((other.aperture_fraction(radius, annulus, offset=offset, mean=mean) - base) / 1e-3)
        grad = np.array(grad)
        return float(np.sqrt(max(grad @ self.cov @ grad, 0.0)) / base)

    def noisy_median(self, flux: np.ndarray, annulus: tuple[float, float], noise: float) -> np.ndarray:
        """The median an annulus (r_in, r_out) reads of each star's wing (total `flux`) on
        Gaussian noise of `noise` per pixel: the m with half the annulus' area below it. Noise
        large against the wing's fall over the annulus (the comparison stars' wings, mostly)
        moves it from the wing's level at the area-halving radius towards its mean over the
        annulus: more than that level, by 0.1-0.3% of a broad-winged star's flux (beta 2)."""
        from scipy.special import ndtr

        t = np.linspace(annulus[0], annulus[1], 41)
        share = t / t.sum()  # of the annulus' area at each radius
        wing = flux[:, None] * self.level(t)[None, :]
        lo, hi = wing.min(axis=1) - 6 * noise, wing.max(axis=1) + 6 * noise
        for _ in range(40):  # bisection, all stars at once
            mid = 0.5 * (lo + hi)
            above = (share * ndtr((mid[:, None] - wing) / noise)).sum(axis=1) > 0.5
            lo, hi = np.where(above, lo, mid), np.where(above, mid, hi)
        return 0.5 * (lo + hi)


# 3-point Gauss-Legendre nodes and weights over a unit pixel
_GL_T, _GL_W = (np.array([-np.sqrt(0.15), 0.0, np.sqrt(0.15)]), np.array([5.0, 8.0, 5.0]) / 18)


def pixel_moffat(dx, dy, alpha: float, beta: float, core=None):
    """The Moffat of flux 1 integrated over unit pixels centred (dx, dy) from it, as a CCD
    records it (sampling at pixel centres puts sharp stars' cores 7% of the peak off, and the
    fitted wings 2-7% too steep): 3 x 3 Gauss-Legendre points (within 1e-4 of the peak) where
    `core` (default everywhere), to second order (I + laplacian(I) / 24) elsewhere."""
    dx, dy = np.broadcast_arrays(np.asarray(dx, float), np.asarray(dy, float))
    norm = (beta - 1) / (np.pi * alpha * alpha)
    s = (dx * dx + dy * dy) / (alpha * alpha)
    u = 1 + s
    out = norm * u**-beta * (1 - beta * (1 - beta * s) / (6 * alpha * alpha * u * u))
    core = np.ones(dx.shape, bool) if core is None else np.broadcast_to(core, dx.shape)
    if core.any():
        cx, cy = dx[core], dy[core]
        acc = np.zeros(cx.shape)
        for ti, wi in zip(_GL_T, _GL_W):
            for tj, wj in zip(_GL_T, _GL_W):
                acc += wi * wj * (1 + ((cx + ti) ** 2 + (cy + tj) ** 2) / (alpha * alpha)) ** -beta
        out[core] = norm * acc
    return out


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


def _lone(stamp: np.ndarray, weight: np.ndarray, centre, fwhm: float, threshold: float = 5.0) -> bool:
    """No other star in the stamp: nothing above `threshold` sigma, more than 1.2 FWHM from the
    star, in what the star's point mirror lacks (a star is the same on both sides of its centre,
    whatever its profile; a neighbour is on one side only), through a filter matched to a
    Gaussian of `fwhm` (the stars' own fits')."""
    from scipy.ndimage import correlate1d, map_coordinates

    size = stamp.shape[0]
    mid = size // 2
    gy, gx = np.mgrid[0:size, 0:size].astype(float) - mid
    at = [2 * centre[1] - gy + mid, 2 * centre[0] - gx + mid]
    good = weight > 0
    mirror = map_coordinates(np.where(good, stamp, np.nan), at, order=1, mode="constant", cval=np.nan)
    wm = map_coordinates(weight, at, order=1, mode="constant", cval=0.0)
    ok = good & np.isfinite(mirror) & (wm > 0)
    inv_var = np.where(ok, 1 / (1 / np.where(ok, weight, 1.0) ** 2 + 1 / np.where(ok, wm, 1.0) ** 2), 0.0)
    h = int(np.ceil(1.5 * fwhm))
    k = np.exp(-np.arange(-h, h + 1, dtype=float) ** 2 / (2 * (fwhm / 2.3548) ** 2))

    def smooth(a, k1):  # the Gaussian filter, separable
        return correlate1d(correlate1d(a, k1, axis=0, mode="constant"), k1, axis=1, mode="constant")

    num = smooth(np.where(ok, stamp - np.nan_to_num(mirror), 0.0) * inv_var, k)
    den = smooth(inv_var, k * k)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(den > 0, num / np.sqrt(den), 0.0)
    far = np.hypot(gx - centre[0], gy - centre[1]) > 1.2 * fwhm
    return not bool((snr[far] > threshold).any())


def _lm(fun, theta: np.ndarray, iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on a batch of independent problems: `fun(theta, rows)` -> residuals
    (k, n) and Jacobian (k, n, p) of problems `rows` at their parameters theta (k, p). Written
    with numpy (batched normal equations) rather than scipy.optimize.least_squares: one call
    for all the stars, no per-problem Python overhead and no import of scipy.optimize (~0.15 s
    per run, measured). A problem leaves the batch when its step is below 1e-7 of its
    parameters or its damping passes 1e8 (of 24 stars most stop after 5 steps, one or two run
    on for 40). Returns (theta, residuals)."""
    theta = np.array(theta, float)
    active = np.arange(len(theta))
    r, J = fun(theta, active)
    cost = np.einsum("mn,mn->m", r, r)
    lam = np.full(len(theta), 1e-3)
    eye = np.eye(theta.shape[1])
    for _ in range(iterations):
        Ja, ra, la = J[active], r[active], lam[active]
        Jt = Ja.transpose(0, 2, 1)
        A = Jt @ Ja  # batched BLAS: 3x faster than einsum here (24 stars x 961 px x 6)
        g = (Jt @ ra[..., None])[..., 0]
        diag = np.einsum("mii->mi", A)
        try:
            step = -np.linalg.solve(A + la[:, None, None] * (diag[:, :, None] * eye + 1e-12 * eye), g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            break
        trial = theta[active] + step
        r2, J2 = fun(trial, active)
        cost2 = np.einsum("mn,mn->m", r2, r2)
        better = np.isfinite(cost2) & (cost2 < cost[active])
        moved = active[better]
        theta[moved], r[moved], J[moved], cost[moved] = trial[better], r2[better], J2[better], cost2[better]
        lam[active] = np.where(better, la / 3, la * 4)
        done = np.all(np.abs(step) <= 1e-7 * (1 + np.abs(theta[active])), axis=1) | (lam[active] > 1e8)
        active = active[~done]
        if not active.size:
            break
    return theta, r


def _fit_stars(stamps: np.ndarray, weights: np.ndarray, grid, centres: np.ndarray, alpha: float, beta: float):
    """Each star's own Moffat (flux, centre, flat background, alpha, beta) by weighted least
    squares, all stars at once; returns (x, y, alpha, beta, chi) with x, y, alpha, beta (m,)
    and chi the weighted residuals (m, s, s)."""
    gx, gy = grid[0].ravel(), grid[1].ravel()
    d, w = stamps.reshape(len(stamps), -1), weights.reshape(len(stamps), -1)
    edge = np.hypot(gx, gy) > gx.max() - 2
    b0 = np.array([np.median(di[edge & (wi > 0)]) if (edge & (wi > 0)).any() else 0.0 for di, wi in zip(d, w)])
    f0 = np.maximum(((d - b0[:, None]) * (w > 0)).sum(axis=1), 1.0)
    theta0 = np.column_stack([np.log(f0), centres[:, 0], centres[:, 1], b0,
                              np.full(len(d), np.log(alpha)), np.full(len(d), np.log(beta - 1))])

    def fun(t, rows):
        a, b = np.exp(t[:, 4:5]), 1 + np.exp(t[:, 5:6])
        dx, dy = gx - t[:, 1:2], gy - t[:, 2:3]
        u = 1 + (dx * dx + dy * dy) / (a * a)
        fp = np.exp(t[:, 0:1]) * (b - 1) / (np.pi * a * a) * u**-b
        wr = w[rows]
        r = (d[rows] - fp - t[:, 3:4]) * wr
        cols = [fp, fp * 2 * b * dx / (a * a * u), fp * 2 * b * dy / (a * a * u), np.ones_like(fp),
                fp * (-2 + 2 * b * (dx * dx + dy * dy) / (a * a * u)), fp * (1 - (b - 1) * np.log(u))]
        return r, -np.stack(cols, axis=2) * wr[:, :, None]

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        theta, r = _lm(fun, theta0)  # a trial step that overflows is rejected, not an error
    return theta[:, 1], theta[:, 2], np.exp(theta[:, 4]), 1 + np.exp(theta[:, 5]), r.reshape(stamps.shape)


def fit_moffat(
    data: np.ndarray,
    mask: np.ndarray | None,
    positions,
    half: int,
    noise: float,
    sky_level: float = 0.0,
    fwhm_guess: float = 4.0,
    n_bright: int = 12,
) -> MoffatPSF | None:
    """One Moffat (alpha, beta) shared by the stars at `positions` in a sky-subtracted frame,
    fitted over (2 half + 1)^2 stamps, each star with its own flux, centre and flat background.

    The shape comes from the `n_bright` brightest stars (by their stamp sums) that have no other
    star in their stamp (`_lone`), if at least half that many have none (else the brightest:
    a field where every star has neighbours). The 2 n_bright brightest are first fitted each
    on its own (a star whose fit moved more than a pixel from its position found another star
    and is left out); stars with faint neighbours too weak for the clip below pulled the fitted
    beta 0.5-1.4% low (5% for 4.5 next to a bright one). On the chosen stars pixels more than
    5 sigma off their own fit (a cosmic ray) are left out, then alpha and beta are fitted to
    them all at once, the model integrated over each pixel as a CCD does (`pixel_moffat`).
    Pixels are weighted by their noise: the sky `noise` and the star's photon noise at the gain
    the sky implies (`sky_level` / noise^2). `cov` holds the shape's covariance. None when no
    star has a whole stamp.
    """
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

    weights = [np.where(g, 1.0 / np.sqrt(noise**2 + np.clip(uniform_filter(st, 3), 0, None) / gain), 0.0)
               for st, g in zip(stamps, goods)]
    # each of the brightest stars fitted on its own: its centre, then whether another star shares
    # its stamp; the shape is fitted to the brightest stars that are alone, where enough are
    pool = np.argsort([-st.sum() for st in stamps])[:2 * n_bright]
    S = np.array([stamps[k] for k in pool])
    W = np.array([weights[k] for k in pool])
    beta0 = 3.0
    given = np.array([centres[k] for k in pool])
    x, y, a, be, chi = _fit_stars(S, W, (gx, gy), given, alpha_of(fwhm_guess, beta0), beta0)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(a) & np.isfinite(be) & (W > 0).any(axis=(1, 2))
    # a star whose own fit moved a pixel has settled on a brighter neighbour in its stamp: its
    # centre and clipped pixels belong to the other star (beta 4.86% low for 4.5, noise-free)
    ok &= np.hypot(x - given[:, 0], y - given[:, 1]) < 1.0
    fw = float(np.median([fwhm_of(ai, bi) for ai, bi in zip(a[ok], be[ok])])) if ok.any() else fwhm_guess
    lone = np.array([bool(o) and _lone(S[i], W[i], (x[i], y[i]), fw) for i, o in enumerate(ok)])
    if lone.sum() >= max(n_bright // 2, 1):
        ok &= lone
        ok &= np.cumsum(ok) <= n_bright
    else:  # a field where (nearly) every star has a neighbour: the brightest, as they come
        ok &= np.arange(len(ok)) < n_bright
    if not ok.any():
        return None
    S, W, a, be = S[ok], np.where(np.abs(chi[ok]) > 5, 0.0, W[ok]), a[ok], be[ok]
    X, Y = x[ok][:, None, None], y[ok][:, None, None]
    # pixels whose curvature needs the full pixel integral: within 2 FWHM of the centres
    reach = 2 * max(float(np.median([fwhm_of(ai, bi) for ai, bi in zip(a, be)])), 2.0)
    core = ((gx - X) ** 2 + (gy - Y) ** 2 < reach * reach) & (W > 0)
    # the shared shape: centres as each star's own fit put them; flux and background are
    # linear given the shape, so solved exactly inside each evaluation
    W2 = W * W
    s11, s1d = W2.sum(axis=(1, 2)), (W2 * S).sum(axis=(1, 2))

    def resid(t):
        a, b = np.exp(t[0]), 1 + np.exp(t[1])
        prof = pixel_moffat(gx - X, gy - Y, a, b, core)
        wp = W2 * prof
        spp, sp1, spd = (wp * prof).sum(axis=(1, 2)), wp.sum(axis=(1, 2)), (wp * S).sum(axis=(1, 2))
        det = spp * s11 - sp1 * sp1
        flux = (spd * s11 - sp1 * s1d) / det  # weighted least squares of flux and background, star by star
        bg = (spp * s1d - sp1 * spd) / det
        return ((S - flux[:, None, None] * prof - bg[:, None, None]) * W).ravel()

    def fun(t, rows=None):  # one problem of two parameters, Jacobian by forward differences
        t = t[0]
        r = resid(t)
        cols = []
        for i in range(2):
            h = 1e-6 * max(1.0, abs(t[i]))
            dt = t.copy()
            dt[i] += h
            cols.append((resid(dt) - r) / h)
        return r[None], np.stack(cols, axis=1)[None]

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        theta, _ = _lm(fun, np.array([[np.log(np.median(a)), np.log(np.median(be) - 1)]]))
        r, J = fun(theta)
    alpha, beta = float(np.exp(theta[0, 0])), float(1 + np.exp(theta[0, 1]))
    if not (np.isfinite(alpha) and np.isfinite(beta)) or beta > 50:
        return None
    dof = max(int((W > 0).sum()) - 2 - 2 * len(S), 1)  # each star's flux and background solved inside
    try:
        cov = np.linalg.inv(J[0].T @ J[0]) * max(float(r[0] @ r[0]) / dof, 1.0)
    except np.linalg.LinAlgError:
        cov = None
    return MoffatPSF(alpha=alpha, beta=beta, n_stars=int(ok.sum()), cov=cov)
