"""centroid_2dg for many stars at once.

photutils' centroid_2dg fits a 2-D Gaussian to one cut-out with astropy's TRF fitter: about
7 ms a star, nearly all of it Python overhead that holds the GIL, so the registration of a
4k frame on 80 stars took 0.58 s and two threads did not help. Here the same least-squares
problem (a Gaussian of free amplitude, centre and elliptical width, no constant, on the same
box with its edge level removed, the same moment-based start) is solved for all stars
together by Levenberg-Marquardt with an analytic Jacobian in numpy: 20x faster on 200 stars
(registration of 8 crowded 1024^2 frames: 3.3 s -> 0.85 s, shifts equal to 1e-10 px). The
centres agree with photutils' to 1e-4 px for more than 95% of stars; where the two optimisers
stop at different points ours has the lower residual (tests/test_registration.py checks both).
"""

from __future__ import annotations

import numpy as np


def cutouts(data: np.ndarray, mask: np.ndarray | None, xs, ys, box: int):
    """(k, box, box) float64 cut-outs centred on the rounded positions, their edge median
    removed (as registration.centroid_at), masked pixels flagged; and the corners (x0, y0).
    Callers pass only positions whose box lies inside the frame."""
    half = box // 2
    xc = np.rint(np.asarray(xs, float)).astype(int) - half
    yc = np.rint(np.asarray(ys, float)).astype(int) - half
    off = np.arange(box)
    rows = yc[:, None, None] + off[None, :, None]
    cols = xc[:, None, None] + off[None, None, :]
    cut = data[rows, cols].astype(np.float64)
    bad = np.zeros(cut.shape, bool) if mask is None else mask[rows, cols]
    edge = np.concatenate([cut[:, 0], cut[:, -1], cut[:, 1:-1, 0], cut[:, 1:-1, -1]], axis=1)
    cut -= np.median(edge, axis=1)[:, None, None]
    return cut, bad, xc, yc


def _start(cut: np.ndarray, bad: np.ndarray):
    """photutils' start: moments of the cut-out less its minimum (masked pixels 0)."""
    k, n, _ = cut.shape
    lowest = np.where(bad, np.inf, cut).reshape(k, -1).min(axis=1)
    shifted = np.where(bad, 0.0, cut - lowest[:, None, None])
    y, x = np.indices((n, n), dtype=np.float64)
    total = shifted.sum(axis=(1, 2))
    total = np.where(total > 0, total, 1.0)
    xm = (shifted * x).sum(axis=(1, 2)) / total
    ym = (shifted * y).sum(axis=(1, 2)) / total
    dx, dy = x[None] - xm[:, None, None], y[None] - ym[:, None, None]
    mxx = (shifted * dx * dx).sum(axis=(1, 2)) / total
    myy = (shifted * dy * dy).sum(axis=(1, 2)) / total
    mxy = (shifted * dx * dy).sum(axis=(1, 2)) / total
    det = mxx * myy - mxy**2
    ok = det > 1e-6
    det = np.where(ok, det, 1.0)
    # Q = 1/2 d^T Sigma^-1 d = a dx^2 + b dx dy + c dy^2
    a = np.where(ok, myy / (2 * det), 0.25)
    b = np.where(ok, -mxy / det, 0.0)
    c = np.where(ok, mxx / (2 * det), 0.25)
    amp = shifted.reshape(k, -1).max(axis=1)
    return np.stack([amp, xm, ym, a, b, c], axis=1)


def _model(p, x, y):
    amp, xm, ym, a, b, c = (p[:, i, None, None] for i in range(6))
    dx, dy = x - xm, y - ym
    e = np.exp(-(a * dx * dx + b * dx * dy + c * dy * dy))
    return amp * e, e, dx, dy


def fit_gaussians(cut: np.ndarray, bad: np.ndarray, iterations: int = 100, params: bool = False) -> np.ndarray:
    """(k, 2) centres (x, y) in cut-out pixels; NaN where the fit fails (`params`: the
    fitted (k, 6) amplitude, x, y, a, b, c and the cost too)."""
    k, n, _ = cut.shape
    y, x = np.indices((n, n), dtype=np.float64)
    w = (~bad).astype(np.float64)
    p = _start(cut, bad)
    lam = np.full(k, 1e-3)

    cost = _cost(p, cut, w, x, y)
    active = np.isfinite(cost)
    for _ in range(iterations):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        pa = p[idx]
        f, e, dx, dy = _model(pa, x, y)
        amp, a, b, c = (pa[:, i, None, None] for i in (0, 3, 4, 5))
        r = (f - cut[idx]) * w[idx]
        jac = np.stack([e, f * (2 * a * dx + b * dy), f * (b * dx + 2 * c * dy),
                        -f * dx * dx, -f * dx * dy, -f * dy * dy], axis=-1).reshape(len(idx), n * n, 6)
        jac *= w[idx].reshape(len(idx), n * n, 1)
        jtj = np.einsum("kpi,kpj->kij", jac, jac)
        g = np.einsum("kpi,kp->ki", jac, r.reshape(len(idx), n * n))
        damp = jtj + lam[idx, None, None] * np.eye(6) * np.diagonal(jtj, axis1=1, axis2=2)[:, :, None]
        try:
            step = np.linalg.solve(damp, -g[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.stack([_safe_solve(m, -v) for m, v in zip(damp, g)])
        trial = pa + step
        new_cost = _cost(trial, cut[idx], w[idx], x, y)
        better = np.isfinite(new_cost) & (new_cost < cost[idx])
        p[idx[better]] = trial[better]
        # converged: a Gauss-Newton-like step (little damping) that no longer lowers the cost
        done = better & (lam[idx] < 1e-2) & ((cost[idx] - new_cost) <= 1e-12 * cost[idx])
        cost[idx[better]] = new_cost[better]
        lam[idx] = np.where(better, lam[idx] / 3, lam[idx] * 4)
        active[idx[done | (lam[idx] > 1e12)]] = False
    centres = p[:, 1:3].copy()
    ok = (p[:, 3] > 0) & (p[:, 5] > 0) & (4 * p[:, 3] * p[:, 5] > p[:, 4] ** 2) & (p[:, 0] > 0)
    centres[~ok] = np.nan
    return (centres, p, cost) if params else centres


def _cost(p, cut, w, x, y):
    """Weighted squared residual of each star's fit."""
    f = _model(p, x, y)[0]
    return (w * (f - cut) ** 2).sum(axis=(1, 2))


def _safe_solve(m, v):
    try:
        return np.linalg.solve(m, v)
    except np.linalg.LinAlgError:
        return np.zeros_like(v)


def centroids_2dg(data: np.ndarray, mask: np.ndarray | None, xs, ys, box: int) -> np.ndarray:
    """centroid_2dg in a `box` px box at each (x, y): (k, 2) frame positions, NaN where it fails.
    Every box must lie inside the frame."""
    if len(xs) == 0:
        return np.empty((0, 2))
    cut, bad, x0, y0 = cutouts(data, mask, xs, ys, box)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # rejected trial steps
        c = fit_gaussians(cut, bad)
    return c + np.stack([x0, y0], axis=1)
