"""Which interpolation kernel resamples frames best: measured, not assumed.

    python benchmarks/kernels.py            # ~1 min; prints the table (and --json FILE)

Each kernel of core.shifting (and scipy's cubic spline with its prefilter, what the subpixel
mode used before, IRAF's spline3) resamples synthetic star fields through shifts with
every fractional part and a turn of 0.7 degrees, and is compared with the same field
rendered directly where the map puts it (the truth):

- alignment: centroid (2-D Gaussian fit) of each star in the resampled frame minus in the
  truth; the systematic offset is the mean over all stars and maps (goal < 0.01 px), the
  scatter its RMS;
- flux: the whole field's sum (inside a 10 px margin; stars 70 px in) resampled / truth - 1, worst map (goal
  1e-4); and per star, the aperture sum (radius 3 FWHM), mean and worst star;
- noise: standard deviation of resampled white noise / the input's, at phase 0.5 (the most
  smoothing) and averaged over phases (lower = smoother, resolution lost);
- ringing: an undersampled bright star (FWHM 1.3 px) moved by half a pixel: the deepest
  negative pixel and the largest error against the truth, as fractions of its peak;
- speed: one 4096^2 frame through the block resampler (shift; 1 degree similarity).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui_stack.core import gaussfit, shifting, synthetic  # noqa: E402

SPLINE = "spline3 (scipy, before)"


def render(shape, stars, fwhm, beta=3.0):
    img = np.zeros(shape, np.float64)
    for x, y, f in stars:
        synthetic.add_star(img, x, y, f, fwhm, beta)
    return img.astype(np.float32)


def resample(kernel, img, m):
    """img through the contract's map m (ref (x, y) -> frame), NaN where masked."""
    if kernel == SPLINE:
        from scipy import ndimage

        out = ndimage.affine_transform(img, np.array([[m[4], m[3]], [m[1], m[0]]]), (m[5], m[2]), order=3,
                                       mode="constant", cval=np.nan, prefilter=True)
        return out.astype(np.float32)
    out, mask = shifting.warp_frame(img, None, m, kernel=kernel)
    out[mask] = np.nan
    return out


def maps(shape):
    h, w = shape
    out = [[1, 0, -dx, 0, 1, -dy] for dx, dy in [(0.1, 0.6), (0.25, 0.25), (0.5, 0.5), (0.7, 0.3), (0.9, 0.85),
                                                  (3.33, -2.45)]]
    th = np.radians(0.7)
    c, s = np.cos(th), np.sin(th)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    out.append([c, -s, cx - c * cx + s * cy + 1.3, s, c, cy - s * cx - c * cy - 0.4])
    return out


def star_field(rng, shape, n, margin=20):
    h, w = shape
    xs, ys = rng.uniform(margin, w - margin, n), rng.uniform(margin, h - margin, n)
    return [(x, y, f) for x, y, f in zip(xs, ys, rng.uniform(2e4, 2e5, n))]


def isolated(stars, d=14):
    xy = np.array([(x, y) for x, y, _ in stars])
    dist = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(dist, np.inf)
    return [s for s, dmin in zip(stars, dist.min(axis=1)) if dmin > d]


def apertures(img, xy, r):
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    out = []
    for x, y in xy:
        sel = (xx - x) ** 2 + (yy - y) ** 2 <= r * r
        out.append(float(np.sum(img[sel], dtype=np.float64)) if np.all(np.isfinite(img[sel])) else np.nan)
    return np.array(out)


def measure(kernels, seed=3):
    rng = np.random.default_rng(seed)
    shape = (400, 400)
    rows = {k: {"offset_x": [], "offset_y": [], "flux": [], "total": []} for k in kernels}
    for fwhm in (2.0, 3.0, 4.5):
        stars = isolated(star_field(rng, shape, 120, margin=70))  # whole wings inside: sums compare
        img = render(shape, stars, fwhm)
        for m in maps(shape):
            inv = np.linalg.inv(np.array([[m[0], m[1]], [m[3], m[4]]]))
            # the truth: each star where the map puts it on the output grid
            moved = []
            for x, y, f in stars:
                ox, oy = inv @ (np.array([x, y]) - [m[2], m[5]])
                moved.append((ox, oy, f))
            truth = render(shape, moved, fwhm)
            keep = [(x, y) for x, y, _ in moved if 15 < x < shape[1] - 15 and 15 < y < shape[0] - 15]
            xs, ys = np.array(keep).T
            ct = gaussfit.centroids_2dg(truth, None, xs, ys, 11)
            ft = apertures(truth, keep, 3 * fwhm)
            for k in kernels:
                out = resample(k, img, m)
                good = np.isfinite(out)
                ck = gaussfit.centroids_2dg(np.where(good, out, 0), ~good, xs, ys, 11)
                d = np.asarray(ck) - np.asarray(ct)
                rows[k]["offset_x"] += d[:, 0].tolist()
                rows[k]["offset_y"] += d[:, 1].tolist()
                rows[k]["flux"] += (apertures(out, keep, 3 * fwhm) / ft - 1).tolist()
                both = good & (np.abs(truth) >= 0)
                both[:10], both[-10:], both[:, :10], both[:, -10:] = False, False, False, False
                rows[k]["total"].append(float(out[both].sum(dtype=np.float64) / truth[both].sum(dtype=np.float64) - 1))
    noise = rng.normal(0, 1, (300, 300)).astype(np.float32)
    spike = render((64, 64), [(32.0, 32.0, 1e5)], 1.3)
    for k in kernels:
        r = rows[k]
        ox, oy, fl = (np.array(r[key]) for key in ("offset_x", "offset_y", "flux"))
        fl = fl[np.isfinite(fl)]
        total = np.array(r.pop("total"))
        r["flux_total"] = float(np.max(np.abs(total)))
        r.update(systematic_px=float(max(abs(np.nanmean(ox)), abs(np.nanmean(oy)))),
                 scatter_px=float(np.sqrt(np.nanmean(ox**2 + oy**2))),
                 flux_mean=float(np.mean(fl)), flux_worst=float(np.max(np.abs(fl))))
        for key in ("offset_x", "offset_y", "flux"):
            del r[key]
        stds = [np.nanstd(resample(k, noise, [1, 0, -p, 0, 1, -p])) for p in np.linspace(0.05, 0.95, 10)]
        r["noise_half"] = float(np.nanstd(resample(k, noise, [1, 0, -0.5, 0, 1, -0.5])))
        r["noise_mean"] = float(np.mean(stds))
        moved = resample(k, spike, [1, 0, -0.5, 0, 1, -0.5])
        truth = render((64, 64), [(32.5, 32.5, 1e5)], 1.3)
        r["ringing"] = float(-np.nanmin(moved) / truth.max())
        r["peak_error"] = float(np.nanmax(np.abs(moved - truth)) / truth.max())
    return rows


def speed(kernels, size=4096, repeat=3):
    """Seconds to resample a 4096^2 frame (blocks of 64 rows, one thread), best of `repeat`;
    the block resampler through both forms of its passes, taking turns: compiled
    (core/_resample.c; "shift_s", "similarity_s") and numpy ("..._numpy_s")."""
    rng = np.random.default_rng(0)
    img = rng.normal(100, 10, (size, size)).astype(np.float32)
    read = shifting.box_reader(img)
    th = np.radians(1.0)
    c, s = np.cos(th), np.sin(th)
    keep = shifting.COMPILED
    forms = {"": keep, "_numpy": None} if keep is not None else {"_numpy": None}
    out = {}
    for k in kernels:
        times = {}
        for name, m in (("shift", [1, 0, -0.3, 0, 1, 0.6]), ("similarity", [c, -s, 5.3, s, c, -7.2])):
            if k == SPLINE:
                t = time.perf_counter()
                resample(k, img, m)
                times[name] = time.perf_counter() - t
                continue
            w = shifting.Warp(m, k, size)
            for _ in range(repeat):
                for form, passes in forms.items():
                    shifting.COMPILED = passes
                    t = time.perf_counter()
                    for y0 in range(0, size, 64):
                        w.render(read, y0, min(size, y0 + 64), 0, size)
                    dt = time.perf_counter() - t
                    shifting.COMPILED = keep
                    times[name + form] = min(dt, times.get(name + form, np.inf))
        out[k] = times
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args()
    kernels = [SPLINE, *shifting.KERNELS]
    rows = measure(kernels)
    if not args.no_speed:
        for k, t in speed(kernels).items():
            rows[k].update({f"{name}_s": v for name, v in t.items()})
    cols = ["systematic_px", "scatter_px", "flux_total", "flux_mean", "flux_worst", "noise_half", "noise_mean", "ringing",
            "peak_error", "shift_s", "similarity_s", "shift_numpy_s", "similarity_numpy_s"]
    print("| kernel | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for k in kernels:
        print(f"| {k} | " + " | ".join(f"{rows[k][c]:.2e}" if c in rows[k] else "" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
