"""Synthetic raw frames with known calibration truth: bias, darks, flats and lights.

The camera: a bias level with a fixed pattern (column ripple, random per pixel) and a level
that drifts from frame to frame (what the overscan measures, with a row gradient), dark
current with hot pixels, a flat of vignetting, dust donuts and pixel response, with dead
pixels; frames are 16-bit integers (BZERO 32768) with an overscan strip on the right
(BIASSEC/TRIMSEC in the headers). Lights are the star field of core.synthetic (known shifts
and transparencies) seen through that camera, with photon and read noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tui_stack.core import synthetic


@dataclass
class RawSpec:
    shape: tuple[int, int] = (256, 256)  # data section, rows, cols
    overscan: int = 16  # columns of overscan on the right
    n_bias: int = 9
    n_dark: int = 7
    n_flat: int = 7
    n_lights: int = 6
    light_exptime: float = 30.0
    dark_exptime: float = 60.0
    flat_exptime: float = 2.0
    filters: tuple[str, ...] = ("V",)  # lights and flats of each
    flat_level: float = 20000.0  # ADU
    bias_level: float = 400.0
    bias_drift: float = 6.0  # ADU, frame to frame (uniform)
    dark_rate: float = 0.05  # ADU/s
    n_hot: int = 25
    hot_rate: tuple[float, float] = (3.0, 30.0)  # ADU/s
    n_dead: int = 12
    vignetting: float = 0.3  # flat at the corners = 1 - vignetting
    n_dust: int = 3
    gain: float = 1.5
    read_noise: float = 8.0  # e-
    sky: float = 800.0
    n_stars: int = 120
    max_shift: float = 30.0
    transparencies: tuple[float, ...] | None = None
    cosmic_rays: int = 0
    seed: int = 21


@dataclass
class RawTruth:
    bias: list[Path]
    dark: list[Path]
    flat: list[Path]
    lights: list[Path]
    bias_pattern: np.ndarray  # the bias of the data section without the frame's drift (master bias with overscan)
    bias_level: np.ndarray  # per frame, all kinds: the drift-included level the overscan sees
    dark_rate: np.ndarray  # ADU/s per pixel, hot pixels included
    hot: np.ndarray  # (n, 2) y, x
    flat_truth: np.ndarray  # normalised to median 1; dead pixels near 0
    dead: np.ndarray  # (n, 2) y, x
    stars_truth: synthetic.FieldTruth = field(repr=False, default=None)
    cosmic: list = field(default_factory=list)  # per light: (y, x) of the cosmic ray pixels


def camera(spec: RawSpec, rng):
    h, w = spec.shape
    yy, xx = np.mgrid[0:h, 0:w]
    pattern = (2.5 * np.sin(xx / 7.0) + rng.normal(0, 2.0, (h, w)) + 0.01 * yy).astype(np.float64)
    rate = np.full((h, w), spec.dark_rate) * rng.uniform(0.8, 1.2, (h, w))
    n = h * w
    hot_idx = rng.choice(n, spec.n_hot + spec.n_dead, replace=False)
    hot, dead = hot_idx[:spec.n_hot], hot_idx[spec.n_hot:]
    rate.reshape(-1)[hot] = rng.uniform(*spec.hot_rate, spec.n_hot)
    r2 = ((xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
    flat = 1.0 - spec.vignetting * r2
    for _ in range(spec.n_dust):  # a dust donut: a ring of shadow
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        rad, width, depth = rng.uniform(0.04, 0.08) * min(h, w), rng.uniform(1.5, 3.0), rng.uniform(0.05, 0.12)
        d = np.hypot(yy - cy, xx - cx)
        flat *= 1.0 - depth * np.exp(-0.5 * ((d - rad) / width) ** 2)
    flat *= rng.normal(1.0, 0.01, (h, w))  # pixel response
    flat /= np.median(flat)
    flat.reshape(-1)[dead] = rng.uniform(0.0, 0.1, spec.n_dead)
    as_yx = lambda idx: np.stack(np.divmod(idx, w), axis=1)  # noqa: E731
    return pattern, rate, as_yx(hot), flat, as_yx(dead)


def _expose(electrons_adu: np.ndarray, level: float, pattern: np.ndarray, spec: RawSpec, rng) -> np.ndarray:
    """Photon noise on the signal (ADU), read noise, bias; the overscan strip with the level;
    rounded 16-bit."""
    h, w = spec.shape
    sig = rng.poisson(np.clip(electrons_adu, 0, None) * spec.gain) / spec.gain
    rows = 0.01 * np.arange(h)[:, None]  # the row gradient the overscan sees too
    raw = np.empty((h, w + spec.overscan))
    raw[:, :w] = sig + level + pattern
    raw[:, w:] = level + rows
    raw += rng.normal(0, spec.read_noise / spec.gain, raw.shape)
    return np.clip(np.round(raw), 0, 65535).astype(np.uint16)


def _write(path: Path, data: np.ndarray, kind: str, exptime: float, spec: RawSpec, **extra) -> Path:
    from astropy.io import fits

    h, w = spec.shape
    hdr = fits.Header()
    hdr["IMAGETYP"] = {"bias": "Bias Frame", "dark": "Dark Frame", "flat": "Flat Field", "light": "Light Frame"}[kind]
    hdr["EXPTIME"] = exptime
    hdr["GAIN"] = (spec.gain, "e-/ADU")
    hdr["RDNOISE"] = (spec.read_noise, "e-")
    hdr["XBINNING"], hdr["YBINNING"] = 1, 1
    hdr["BIASSEC"] = f"[{w + 1}:{w + spec.overscan},1:{h}]"
    hdr["TRIMSEC"] = f"[1:{w},1:{h}]"
    hdr["SATURATE"] = 65535.0
    for k, v in extra.items():
        hdr[k] = v
    fits.PrimaryHDU(data, hdr).writeto(path, overwrite=True)  # uint16 -> int16 + BZERO 32768
    return path


def write_raw_set(directory: Path, spec: RawSpec = RawSpec()) -> RawTruth:
    """Bias, dark, flat (per filter) and light frames in `directory`, with the truth."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    pattern, rate, hot, flat, dead = camera(spec, rng)
    h, w = spec.shape
    levels = []
    out = {"bias": [], "dark": [], "flat": [], "light": []}

    def level():
        v = spec.bias_level + rng.uniform(-spec.bias_drift, spec.bias_drift)
        levels.append(v)
        return v

    zero = np.zeros((h, w))
    for i in range(spec.n_bias):
        out["bias"].append(_write(directory / f"bias_{i:03d}.fits", _expose(zero, level(), pattern, spec, rng),
                                  "bias", 0.0, spec))
    for i in range(spec.n_dark):
        out["dark"].append(_write(directory / f"dark_{i:03d}.fits",
                                  _expose(rate * spec.dark_exptime, level(), pattern, spec, rng), "dark",
                                  spec.dark_exptime, spec))
    for f in spec.filters:
        for i in range(spec.n_flat):
            lit = spec.flat_level * rng.uniform(0.9, 1.1) * flat + rate * spec.flat_exptime
            out["flat"].append(_write(directory / f"flat_{f}_{i:03d}.fits", _expose(lit, level(), pattern, spec, rng),
                                      "flat", spec.flat_exptime, spec, FILTER=f))
    fspec = synthetic.FieldSpec(n_frames=spec.n_lights, shape=spec.shape, n_stars=spec.n_stars, sky=spec.sky,
                                gain=spec.gain, read_noise=spec.read_noise, max_shift=spec.max_shift,
                                transparencies=spec.transparencies, cosmic_rays=spec.cosmic_rays, seed=spec.seed)
    stars, ref_star, comps = synthetic.plan_field(fspec)
    shifts, transp = synthetic.frame_shifts(fspec, 0)
    cosmic = []
    files = []
    for f in spec.filters:
        for i in range(spec.n_lights):
            img = np.full((h, w), spec.sky)
            for x, y, flux in stars:
                synthetic.add_star(img, x - shifts[i, 0], y - shifts[i, 1], flux * transp[i], fspec.fwhm, fspec.beta)
            img = img * flat + rate * spec.light_exptime
            raw = _expose(img, level(), pattern, spec, rng).astype(np.float64)
            hits = []
            for _ in range(spec.cosmic_rays):
                cy, cx = int(rng.integers(2, h - 2)), int(rng.integers(2, w - 3))
                raw[cy, cx:cx + 2] += rng.uniform(3e3, 2e4)
                hits += [(cy, cx), (cy, cx + 1)]
            cosmic.append(hits)
            path = _write(directory / f"light_{f}_{i:03d}.fits", np.clip(raw, 0, 65535).astype(np.uint16), "light",
                          spec.light_exptime, spec, FILTER=f, OBJECT="SYNTH FIELD",
                          TRUTH_DX=float(shifts[i, 0]),
                          TRUTH_DY=float(shifts[i, 1]), TRUTH_T=float(transp[i]),
                          **{"DATE-OBS": synthetic._date_obs("2026-11-29T02:00:00", i)})
            files.append(path)
            out["light"].append(path)
    field_truth = synthetic.FieldTruth(files[:spec.n_lights], shifts, transp, 0, ref_star, comps, stars)
    return RawTruth(out["bias"], out["dark"], out["flat"], out["light"], pattern + spec.bias_level,
                    np.array(levels), rate, hot, flat, dead, field_truth, cosmic)
