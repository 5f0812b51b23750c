"""Each hand-written fast path in tui_stack/core against the library call it replaces.

    python benchmarks/fast_paths.py                 # realistic sizes (~1 min on 2 busy cores, < 1 GB)
    python benchmarks/fast_paths.py --quick         # small sizes, a quick look
    python benchmarks/fast_paths.py --json out.json

For every fast path: the time of ours and of the library (best of --repeat runs, taken in
turns so a busy machine slows both alike), the speed-up, and the largest difference of the
answers. Re-run it when numpy, scipy, astropy or photutils change: a speed-up near 1 or a
difference that grows means the library caught up or the two drifted, and the fast path
should go. Sizes: a combine block of 16 frames x 512 rows x 4096 columns (128 MB; the
default memory_limit gives the median blocks of 256 rows), a 4096^2 star field, 80 stars.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from tui_stack.core import combine, gaussfit, io, photometry, quality, registration, stats, synthetic

SIZES = {
    "full": {"frames": 16, "rows": 512, "cols": 4096, "frame": 4096, "stars": 80, "repeat": 5},
    "quick": {"frames": 16, "rows": 128, "cols": 1024, "frame": 1024, "stars": 40, "repeat": 3},
}
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def best_of(ours, library, repeat: int):
    """(best time of ours, best time of the library, their last answers), run in turns."""
    t_ours, t_lib = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = library()
        t_lib.append(time.perf_counter() - t0)
    return min(t_ours), min(t_lib), a, b


def max_abs_diff(a, b) -> float:
    """Largest |a - b|; NaN in both at the same place counts as equal, NaN in one as inf."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return float("inf")
    d = np.abs(a - b)[~nan_a]
    return float(d.max()) if d.size else 0.0


# ------------------------------------------------------------------ data


def block(size: dict, margins: bool, seed: int = 1) -> np.ndarray:
    """(frames, rows, cols) float32 planes as combine reads them: sky-subtracted, scaled,
    noise, stars' cores in some pixels, cosmic rays; with `margins` the columns a shift
    of up to 8 px leaves empty are NaN."""
    rng = np.random.default_rng(seed)
    n, h, w = size["frames"], size["rows"], size["cols"]
    planes = rng.normal(0.0, 12.0, (n, h, w)).astype(np.float32)
    planes += (rng.random((h, w), np.float32) ** 8 * 3000)[None]  # the same sources in every frame
    for p in planes:
        hits = rng.integers(0, h * w, h * w // 2000)
        p.reshape(-1)[hits] += rng.uniform(500, 30000, hits.size).astype(np.float32)
    if margins:
        for p, dx in zip(planes, rng.integers(-8, 9, n)):
            if dx > 0:
                p[:, :dx] = np.nan
            elif dx < 0:
                p[:, dx:] = np.nan
    return planes


_FRAMES = {}


def frame(size: dict):
    """A sky-subtracted float32 star field of frame^2 px (Moffat stars, noise): (data, noise, stars)."""
    n = size["frame"]
    if n not in _FRAMES:
        spec = synthetic.FieldSpec(shape=(n, n), n_stars=int(150 * (n / 1024) ** 2), sky=0.0)
        stars, _, _ = synthetic.plan_field(spec)
        img = np.zeros((n, n), np.float32)
        for x, y, f in stars:
            synthetic.add_star(img, x, y, f, spec.fwhm, spec.beta)
        img += np.random.default_rng(5).normal(0.0, 12.0, img.shape).astype(np.float32)
        _FRAMES[n] = img, 12.0, stars
    return _FRAMES[n]


def bright_stars(size: dict, margin: int = 30) -> np.ndarray:
    """(k, 2) positions of the `stars` brightest unsaturated stars away from the edges, as the
    pipeline picks them (from its own star search)."""
    data, noise, _ = frame(size)
    found = quality.find_stars(data, None, noise)
    n = data.shape[0]
    ok = (found.x > margin) & (found.x < n - margin) & (found.y > margin) & (found.y < n - margin)
    ok &= found.peak < 30000
    return np.stack([found.x[ok], found.y[ok]], axis=1)[: size["stars"]]


# ------------------------------------------------------------------ cases


@case
def median_clean(size):
    planes = block(size, margins=False)
    t1, t2, a, b = best_of(lambda: combine._median_planes(planes, False)[0], lambda: np.median(planes, axis=0),
                           size["repeat"])
    return "median, sorting network, no masked values", "np.median(axis=0)", t1, t2, max_abs_diff(a, b), ""


@case
def median_sorted(size):
    planes = block(size, margins=False)
    n = len(planes)

    def library():  # the general path's way: each pixel's values made contiguous, then sorted
        s = np.sort(np.ascontiguousarray(planes.transpose(1, 2, 0)), axis=-1)
        return ((s[..., (n - 1) // 2].astype(np.float64) + s[..., n // 2]) / 2).astype(np.float32)

    t1, t2, a, b = best_of(lambda: combine._median_planes(planes, False)[0], library, size["repeat"])
    return "median, sorting network, no masked values", "turned block + np.sort(axis=-1)", t1, t2, \
        max_abs_diff(a, b), ""


@case
def median_margins(size):
    planes = block(size, margins=True)
    t1, t2, a, b = best_of(lambda: combine._median_planes(planes, False)[0], lambda: np.nanmedian(planes, axis=0),
                           size["repeat"])
    return "median, sorting network, shift margins NaN", "np.nanmedian(axis=0)", t1, t2, max_abs_diff(a, b), ""


@case
def minmax(size):
    planes = block(size, margins=False)
    params = combine.CombineParams("minmax", nlow=2, nhigh=2)
    n = len(planes)

    def library():
        return np.sort(planes, axis=0)[2 : n - 2].mean(axis=0, dtype=np.float64).astype(np.float32)

    t1, t2, a, b = best_of(lambda: combine._minmax_planes(planes, params, False)[0], library, size["repeat"])
    return "minmax 2/2, sorting network", "np.sort(axis=0) + mean", t1, t2, max_abs_diff(a, b), "float32 sums"


@case
def sigmaclip(size):
    from astropy.stats import sigma_clip

    planes = block(size, margins=False)
    params = combine.CombineParams("sigmaclip", sigma=3.0, maxiters=1)

    def library():  # what ccdproc.combine(sigma_clip=True, sigma_clip_func=median) does
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clipped = sigma_clip(planes, sigma=3.0, maxiters=1, cenfunc="median", stdfunc="std", axis=0)
        return clipped.mean(axis=0).filled(np.nan)

    t1, t2, a, b = best_of(lambda: combine._sigmaclip_planes(planes, params, False)[0], library, size["repeat"])
    return "sigmaclip, network first pass", "astropy sigma_clip(axis=0) + mean", t1, t2, max_abs_diff(a, b), \
        "ADU, float32 sums"


@case
def aperture_sums(size):
    from photutils.aperture import CircularAperture, aperture_photometry

    data, _, _ = frame(size)
    mask = np.zeros(data.shape, bool)
    pos = bright_stars(size)

    def library():
        return aperture_photometry(data, CircularAperture(pos, 8.0), mask=mask, method="exact")["aperture_sum"].value

    t1, t2, a, b = best_of(lambda: photometry.aperture_sums(data, mask, pos, 8.0), library, size["repeat"])
    rel = max_abs_diff(a, b) / float(np.max(np.abs(b)))
    return f"exact aperture sums, {len(pos)} stars r=8", "photutils aperture_photometry(exact)", t1, t2, rel, \
        "relative"


@case
def annulus_medians(size):
    from photutils.aperture import ApertureStats, CircularAnnulus

    data, _, _ = frame(size)
    mask = np.zeros(data.shape, bool)
    pos = bright_stars(size)

    def library():
        return ApertureStats(data, CircularAnnulus(pos, 12.0, 20.0), mask=mask, sum_method="center").median

    t1, t2, a, b = best_of(lambda: photometry.annulus_medians(data, mask, pos, 12.0, 20.0), library, size["repeat"])
    return f"annulus median, {len(pos)} stars 12-20 px", "photutils ApertureStats(center).median", t1, t2, \
        max_abs_diff(a, b), "ADU"


def _import_time(module: str, repeat: int) -> float:
    """Seconds to import `module` in a fresh interpreter that has numpy already."""
    code = f"import numpy, time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
               for _ in range(repeat))


@case
def aperture_import(size):
    t1 = _import_time("tui_stack.core.photometry", size["repeat"])
    t2 = _import_time("photutils.aperture", size["repeat"])
    return "import of the photometry module", "import photutils.aperture", t1, t2, None, "once per run"


@case
def centroids(size):
    from photutils.centroids import centroid_2dg

    data, _, _ = frame(size)
    pos = bright_stars(size)
    box = registration.fit_box_for(3.5)
    half = box // 2

    def library():  # registration.centroid_at's way through photutils, one star at a time
        out = []
        for x, y in np.rint(pos).astype(int):
            cut = data[y - half : y + half + 1, x - half : x + half + 1].astype(np.float64)
            cut = cut - np.median(np.concatenate([cut[0], cut[-1], cut[1:-1, 0], cut[1:-1, -1]]))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cx, cy = centroid_2dg(cut)
            out.append((cx + x - half, cy + y - half))
        return np.array(out)

    t1, t2, a, b = best_of(lambda: gaussfit.centroids_2dg(data, None, pos[:, 0], pos[:, 1], box), library,
                           size["repeat"])
    d = np.hypot(*(a - b).T)
    return f"2-D Gaussian centroids, {len(pos)} stars box {box}", "photutils centroid_2dg per star", t1, t2, \
        float(np.nanmax(d)), f"px; {np.mean(d < 1e-4):.0%} within 1e-4 px"


@case
def peaks(size):
    from photutils.detection import find_peaks

    data, noise, _ = frame(size)
    thr = 10 * noise
    border = quality.STAMP // 2 + 1  # as find_stars

    def library():
        t = find_peaks(data, thr, box_size=7, border_width=border)
        return set() if t is None else set(zip(t["x_peak"].tolist(), t["y_peak"].tolist()))

    def ours():
        xs, ys, _ = quality.local_peaks(data, None, thr, box=7, border=border)
        return set(zip(xs.tolist(), ys.tolist()))

    t1, t2, a, b = best_of(ours, library, size["repeat"])
    n = data.shape[0]
    return f"peak finding, {n}x{n} box 7", "photutils find_peaks", t1, t2, float(len(a ^ b)), \
        f"peaks not in both, of {len(b)}"


@case
def fits_read(size):
    from astropy.io import fits

    data, _, _ = frame(size)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "frame.fits"
        fits.PrimaryHDU(data).writeto(path)

        def ours():
            with io.open_fits(path, memmap=False) as hdul:
                return io._read_float32(hdul[0])

        def library():
            with fits.open(path, memmap=False) as hdul:
                return np.asarray(hdul[0].data, dtype=np.float32)

        io.read_frame(path)  # both read from the page cache
        t1, t2, a, b = best_of(ours, library, size["repeat"])
    n = data.shape[0]
    return f"float32 FITS read, {n}x{n}", "astropy read + astype", t1, t2, max_abs_diff(a, b), ""


@case
def image_median(size):
    n = size["frame"]
    data = block({**size, "frames": 1, "rows": n, "cols": n}, margins=True, seed=3)[0]
    data[: n // 100] = np.nan  # shifted frames leave rows empty too
    t1, t2, a, b = best_of(lambda: stats.nanmedian(data), lambda: np.nanmedian(data), size["repeat"])
    return f"image median, {n}x{n} with NaN", "np.nanmedian", t1, t2, max_abs_diff(a, b), ""


@case
def xcorr_binning(size):
    from astropy.nddata import block_reduce

    data, noise, _ = frame(size)
    b = max(2, registration.xcorr_binning(data.shape))  # 4 for 4096^2; 1024^2 (--quick) is not binned in a run

    def library():  # _prepare_for_xcorr with astropy's binning instead of its own
        img = block_reduce(data, b) if b > 1 else data.copy()
        img = img - np.float32(3.0 * noise * b)
        np.clip(img, 0.0, None, out=img)
        np.sqrt(img, out=img)
        img -= img.mean(dtype=np.float64)
        return img

    t1, t2, x, y = best_of(lambda: registration._prepare_for_xcorr(data, None, 0.0, noise, b), library,
                           size["repeat"])
    n = data.shape[0]
    return f"xcorr image, {b}x{b} binning of {n}x{n}", "astropy block_reduce(sum)", t1, t2, max_abs_diff(x, y), \
        "sqrt(ADU)"


# ------------------------------------------------------------------ main


def versions() -> dict:
    import astropy
    import bottleneck
    import photutils
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "astropy": astropy.__version__, "photutils": photutils.__version__, "bottleneck": bottleneck.__version__}


def fmt_diff(d) -> str:
    return "-" if d is None else "0" if d == 0 else f"{d:.3g}"


def table(rows: list[dict]) -> str:
    head = ("fast path", "replaces", "ours (s)", "library (s)", "speed-up", "max difference")
    lines = [[r["fast_path"], r["library"], f"{r['ours_s']:.4f}", f"{r['library_s']:.4f}", f"{r['speedup']:.1f}x",
              fmt_diff(r["max_diff"]) + (f" ({r['note']})" if r["note"] else "")] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (16 x 128x1024 block, 1024^2 frame, 40 stars)")
    ap.add_argument("--repeat", type=int, help="runs of each, best taken (default 5; 3 with --quick)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--only", help="comma-separated case names (" + ", ".join(c.__name__ for c in CASES) + ")")
    args = ap.parse_args(argv)
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.repeat:
        size["repeat"] = args.repeat
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for fn in CASES:
        if only and fn.__name__ not in only:
            continue
        name, library, t1, t2, diff, note = fn(size)
        rows.append({"case": fn.__name__, "fast_path": name, "library": library, "ours_s": t1, "library_s": t2,
                     "speedup": t2 / t1 if t1 > 0 else float("inf"), "max_diff": diff, "note": note})
        print(f"  {name}: {t1:.4f} s vs {t2:.4f} s", file=sys.stderr, flush=True)
    info = {"versions": versions(), "sizes": size, "machine": platform.machine(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg()}
    print(" ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print(f"sizes: {size}; load average {info['load_average'][0]:.1f} on {info['cpus']} cpus")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({**info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
