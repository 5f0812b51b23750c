"""How well can any method measure the issue-22 sets' scales? The Cramer-Rao bound.

For each frame of a seeing set (tui_stack.core.synthetic.seeing_set) the Fisher information of
its stars' pixels (Moffat integrated over pixels, sky + photon + read noise, as the frames are
drawn) gives the smallest variance an unbiased estimate can have:

- PSF known: each star's flux alone (with its centre and flat background);
- PSF fitted: the frame's (alpha, beta) fitted from the same stars too, as `growth` must; the
  shape's uncertainty is common to every star of the frame, so no number of stars averages it.

Stars: the `--stars` brightest unsaturated in every frame, each alone on a stamp of
`--half` px half-width (no neighbours, no cosmic rays: a lower bound). The scale of frame j is
the noise-weighted mean over stars of ln(F_ref / F_j); its error holds the reference frame's
part, common to every frame. Last: the chance that an estimator at the bound (unbiased, efficient)
meets issue 22's goal (0.1% RMS and 0.2% worst over the 7 frames) on one noise draw.

    python benchmarks/scale_bound.py [--sets sparse,crowded] [--stars 60] [--half 20] [--known-sky]
"""

from __future__ import annotations

import argparse

import numpy as np

from tui_stack.core import synthetic
from tui_stack.core.psf import alpha_of, pixel_moffat


def star_fisher(flux: float, fwhm: float, beta: float, spec, half: int, known_sky: bool):
    """Fisher matrix of (flux, x, y[, background], ln alpha, ln beta) for one star on its stamp,
    and its peak (ADU, sky included)."""
    g = np.arange(-half, half + 1, dtype=float)
    gx, gy = g[None, :], g[:, None]
    alpha = alpha_of(fwhm, beta)
    x0, y0 = 0.3, 0.2  # a star off its pixel's centre

    def model(f, x, y, bg, a, b):
        return f * pixel_moffat(gx - x, gy - y, a, b) + bg

    p = (flux, x0, y0, spec.sky, alpha, beta)
    m = model(*p)
    var = (np.clip(m, 0, None) * spec.gain + spec.read_noise**2) / spec.gain**2
    steps = (flux * 1e-4, 1e-3, 1e-3, 1e-2, alpha * 1e-4, beta * 1e-4)
    scale = (1, 1, 1, 1, alpha, beta)  # derivatives by ln alpha, ln beta
    J = []
    for i, h in enumerate(steps):
        hi, lo = list(p), list(p)
        hi[i] += h
        lo[i] -= h
        J.append(((model(*hi) - model(*lo)) / (2 * h) * scale[i]).ravel())
    J = np.array(J)
    if known_sky:
        J = np.delete(J, 3, axis=0)
    return (J / var.ravel()) @ J.T, float(m.max())


def frame_terms(infos, fluxes):
    """Per star: var(ln F) with the PSF known, d ln F / d(shape) after the star's own
    parameters are solved; and the shape's covariance from all the stars."""
    nl = infos[0].shape[0] - 2
    A = [I[:nl, :nl] for I in infos]
    B = [I[:nl, nl:] for I in infos]
    Ai = [np.linalg.inv(a) for a in A]
    shape_cov = np.linalg.inv(sum(I[nl:, nl:] for I in infos) - sum(b.T @ ai @ b for b, ai in zip(B, Ai)))
    known = np.array([ai[0, 0] / f**2 for ai, f in zip(Ai, fluxes)])
    lever = np.array([(ai @ b)[0] / f for ai, b, f in zip(Ai, B, fluxes)])
    return known, lever, shape_cov


def bound(kind: str, n_stars: int, half: int, known_sky: bool, draws: int = 100000):
    spec, fwhms, betas = synthetic.seeing_set(kind)
    stars, _, _ = synthetic.plan_field(spec)
    _, transp = synthetic.frame_shifts(spec, 0)
    flux = stars[:, 2]
    infos = {}
    unsaturated = np.ones(len(flux), bool)
    for j, (fw, be) in enumerate(zip(fwhms, betas)):
        for k, f in enumerate(flux):
            infos[j, k], peak = star_fisher(f * transp[j], fw, be, spec, half, known_sky)
            unsaturated[k] &= peak < 0.92 * synthetic.SATURATION
    use = np.flatnonzero(unsaturated)
    use = use[np.argsort(-flux[use])][:n_stars]
    terms = [frame_terms([infos[j, k] for k in use], flux[use] * transp[j]) for j in range(len(fwhms))]
    kr, lr, sr = terms[0]
    w_ref = (1 / kr) / np.sum(1 / kr)
    ref_part = np.sqrt(np.sum(w_ref**2 * kr) + (w_ref @ lr) @ sr @ (w_ref @ lr))
    rows = []
    for j in range(1, len(fwhms)):
        k, lev, s = terms[j]
        w = 1 / (k + kr)
        w /= w.sum()
        known = np.sqrt(np.sum(w**2 * (k + kr)))
        shape = np.sqrt((w @ lev) @ s @ (w @ lev) + (w @ lr) @ sr @ (w @ lr))
        rows.append((fwhms[j], betas[j], known, shape, np.hypot(known, shape)))
    rows = np.array(rows)
    total = rows[:, 4]
    own = np.sqrt(np.clip(total**2 - ref_part**2, 0, None))
    rng = np.random.default_rng(1)
    e = rng.normal(size=(draws, 1)) * ref_part + rng.normal(size=(draws, len(own))) * own
    rms, worst = np.sqrt((e**2).mean(axis=1)), np.abs(e).max(axis=1)
    return rows, ref_part, len(use), {
        "expected RMS": float(np.sqrt(np.mean(total**2))),
        "RMS of a median draw, RMS": float(np.median(rms)),
        "P(RMS <= 0.1%)": float((rms <= 1e-3).mean()),
        "P(worst <= 0.2%)": float((worst <= 2e-3).mean()),
        "P(both)": float(((rms <= 1e-3) & (worst <= 2e-3)).mean()),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sparse,crowded")
    ap.add_argument("--stars", type=int, default=60, help="brightest unsaturated stars used (growth: 60)")
    ap.add_argument("--half", type=int, default=20, help="stamp half-width, px")
    ap.add_argument("--known-sky", action="store_true", help="the sky level known, not fitted per star")
    args = ap.parse_args(argv)
    for kind in args.sets.split(","):
        rows, ref_part, n, goal = bound(kind, args.stars, args.half, args.known_sky)
        print(f"{kind}: {n} stars, stamps of {2 * args.half + 1} px, sky {'known' if args.known_sky else 'fitted per star'}")
        print("  frame  FWHM  beta   PSF known  PSF's part  PSF fitted   (1-sigma error of the scale, %)")
        for j, (fw, be, known, shape, total) in enumerate(rows, start=1):
            print(f"  {j:5d} {fw:5.2f} {be:5.2f}   {100 * known:9.3f}  {100 * shape:10.3f}  {100 * total:10.3f}")
        print(f"  the reference frame's part (common to all): {100 * ref_part:.3f}%")
        print("  at the bound: " + ", ".join(f"{k.removesuffix(', RMS')} {100 * v:.3f}%" if k.endswith("RMS") else f"{k} {v:.2f}"
                                             for k, v in goal.items()))


if __name__ == "__main__":
    main()
