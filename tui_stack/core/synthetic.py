"""Deterministic synthetic star fields with known shifts and transparencies (demo and tests).

Stars are Moffat profiles on a flat sky, with Poisson and read noise, saturation at
65535 and cosmic rays. Frame i shows every star at (x - shift_x[i], y - shift_y[i]),
so the shift that lines it up with the reference frame is (shift_x[i], shift_y[i])
exactly, as SPEC.md defines shifts; its star fluxes are multiplied by
transparency[i], so the true scale is transparency[ref] / transparency[i].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SATURATION = 65535.0


@dataclass
class FieldSpec:
    n_frames: int = 10
    shape: tuple[int, int] = (1024, 1024)  # rows, cols
    n_stars: int = 400
    fwhm: float = 3.5
    beta: float = 3.0
    sky: float = 1000.0
    gain: float = 1.5  # e-/ADU
    read_noise: float = 8.0  # e-
    max_shift: float = 12.0
    subpixel: bool = True
    transparencies: tuple[float, ...] | None = None
    cosmic_rays: int = 30
    seed: int = 2362
    # Brighter star this far (px) from the reference star, as in the lab's failing case.
    bright_neighbour: float | None = None
    # Extra frame with PICTTYPE=2 that a header filter must leave out.
    with_flat: bool = False
    # Frames whose stars are trailed along x by `trail_px` (a guiding error).
    trailed: tuple[int, ...] = ()
    trail_px: float = 8.0
    # Rotation of each frame about the frame centre, degrees (None: no rotation).
    rotations: tuple[float, ...] | None = None
    # Explicit (x, y) shift per frame instead of random ones.
    shifts: tuple[tuple[float, float], ...] | None = None
    # Each star drawn out to this many px (None: 6 FWHM, more for bright stars, 12-60): the
    # seeing sets need whole wings, their curves of growth are measured out to 40 px.
    star_reach: int | None = None
    # > 1: stars integrated over their pixels (n x n points within 6 FWHM), not sampled at centres
    oversample: int = 1


@dataclass
class FieldTruth:
    files: list[Path]
    shifts: np.ndarray  # (n, 2) x, y: reference position - frame position
    transparencies: np.ndarray
    ref_index: int
    ref_star: tuple[float, float]
    comparison_stars: list[tuple[float, float]]
    stars: np.ndarray = field(repr=False)  # (m, 3) x, y, flux in the reference frame

    @property
    def scales(self) -> np.ndarray:
        return self.transparencies[self.ref_index] / self.transparencies


def _moffat_alpha(fwhm, beta):
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def add_star(img: np.ndarray, x: float, y: float, flux: float, fwhm: float, beta: float,
             half: int | None = None, oversample: int = 1) -> None:
    """A Moffat star sampled at pixel centres, or (`oversample` n > 1) averaged over n x n
    points of each pixel within 6 FWHM, as a CCD integrates the light over its pixels."""
    alpha = _moffat_alpha(fwhm, beta)
    half = int(min(60, max(12, 6 * fwhm * (flux / 1e5) ** 0.25))) if half is None else half
    h, w = img.shape
    x0, x1 = max(0, int(x) - half), min(w, int(x) + half + 1)
    y0, y1 = max(0, int(y) - half), min(h, int(y) + half + 1)
    if x0 >= x1 or y0 >= y1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    r2 = (xx - x) ** 2 + (yy - y) ** 2
    amp = flux * (beta - 1) / (np.pi * alpha**2)
    star = amp * (1 + r2 / alpha**2) ** (-beta)
    if oversample > 1:
        core = r2 < (6 * fwhm) ** 2
        sub = (np.arange(oversample) + 0.5) / oversample - 0.5
        dx = (xx[core] - x)[:, None, None] + sub[None, None, :]
        dy = (yy[core] - y)[:, None, None] + sub[None, :, None]
        star[core] = (amp * (1 + (dx * dx + dy * dy) / alpha**2) ** (-beta)).mean(axis=(1, 2))
    img[y0:y1, x0:x1] += star


def plan_field(spec: FieldSpec):
    """Star catalogue, reference star and comparison stars, in reference-frame pixels."""
    rng = np.random.default_rng(spec.seed)
    h, w = spec.shape
    ref_star = (round(0.55 * w) + 0.3, round(0.45 * h) + 0.6)
    comps = [
        (round(0.25 * w) + 0.2, round(0.25 * h) + 0.7),
        (round(0.75 * w) + 0.6, round(0.30 * h) + 0.1),
        (round(0.30 * w) + 0.5, round(0.75 * h) + 0.4),
        (round(0.72 * w) + 0.8, round(0.72 * h) + 0.3),
        (round(0.50 * w) + 0.1, round(0.85 * h) + 0.9),
    ]
    special = [ref_star] + comps
    stars = []
    # Fluxes from a power law: many faint stars, few bright (some saturate).
    fluxes = 2e3 * (1 - rng.random(spec.n_stars)) ** (-1 / 0.8)
    fluxes = np.minimum(fluxes, 3e6)
    for f in fluxes:
        for _ in range(20):
            x, y = rng.uniform(5, w - 5), rng.uniform(5, h - 5)
            if all(np.hypot(x - sx, y - sy) > 30 for sx, sy in special):
                stars.append((x, y, f))
                break
    stars.append((*ref_star, 4e5))
    for i, c in enumerate(comps):
        stars.append((*c, 2.5e5 + 5e4 * i))
    if spec.bright_neighbour:
        stars.append((ref_star[0] + spec.bright_neighbour * 0.8, ref_star[1] - spec.bright_neighbour * 0.6, 9e5))
    return np.array(stars), ref_star, comps


def frame_shifts(spec: FieldSpec, ref_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(spec.seed + 1)
    n = spec.n_frames
    shifts = rng.uniform(-spec.max_shift, spec.max_shift, size=(n, 2))
    if spec.shifts is not None:
        shifts = np.array(spec.shifts, dtype=float).reshape(n, 2)
    if not spec.subpixel:
        shifts = np.round(shifts)
    shifts -= shifts[ref_index]
    if spec.transparencies is not None:
        t = np.asarray(spec.transparencies, dtype=float)
        if t.size != n:
            raise ValueError("transparencies must have one value per frame")
    else:
        t = np.clip(rng.normal(0.92, 0.06, n), 0.75, 1.0)
        t[ref_index] = 1.0
        if n >= 4:
            t[n // 2 + 1] = 0.55  # a cloud passed
    return shifts, t


def render_frame(
    stars: np.ndarray, shift, transparency: float, spec: FieldSpec, rng, sky: float | None = None,
    rotation: float = 0.0, trail: float = 0.0,
):
    """One noisy frame: the stars at (x - shift_x, y - shift_y), fluxes times transparency.

    With `rotation` (degrees) positions are first turned about the frame centre; with
    `trail` each star is smeared over that many px along x."""
    h, w = spec.shape
    img = np.full((h, w), spec.sky if sky is None else sky, dtype=np.float64)
    xs, ys = stars[:, 0].copy(), stars[:, 1].copy()
    if rotation:
        c, s_ = np.cos(np.radians(rotation)), np.sin(np.radians(rotation))
        cx, cy = (w - 1) / 2, (h - 1) / 2
        xs, ys = cx + c * (xs - cx) - s_ * (ys - cy), cy + s_ * (xs - cx) + c * (ys - cy)
    steps = np.linspace(-trail / 2, trail / 2, 9) if trail else np.zeros(1)
    for x, y, f in zip(xs, ys, stars[:, 2]):
        for t in steps:
            add_star(img, x - shift[0] + t, y - shift[1], f * transparency / len(steps), spec.fwhm, spec.beta,
                     spec.star_reach, spec.oversample)
    electrons = rng.poisson(np.clip(img, 0, None) * spec.gain).astype(np.float64)
    electrons += rng.normal(0.0, spec.read_noise, size=img.shape)
    adu = electrons / spec.gain
    for _ in range(spec.cosmic_rays):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        adu[cy, cx : cx + rng.integers(1, 3)] += rng.uniform(2e3, 3e4)
    return np.clip(np.round(adu), 0, SATURATION).astype(np.float32)


def _date_obs(start: str, i: int) -> str:
    """Frame i's DATE-OBS: one every 2 minutes from `start` (an ISO time)."""
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(start) + timedelta(minutes=2 * i)).isoformat()


def _frame_header(spec: FieldSpec, date_obs: str, read_noise: float):
    """What a camera writes for a light frame of the demo field."""
    from astropy.io import fits

    hdr = fits.Header()
    hdr["OBJECT"] = "DEMO FIELD"
    hdr["DATE-OBS"] = date_obs
    hdr["EXPTIME"] = 30.0
    hdr["FILTER"] = "V"
    hdr["PICTTYPE"] = 1
    hdr["IMAGETYP"] = "object"
    hdr["GAIN"] = (spec.gain, "e-/ADU")
    hdr["RDNOISE"] = (read_noise, "e-")
    hdr["SATURATE"] = SATURATION
    return hdr


def _plan(directory, spec: FieldSpec, ref_index: int):
    """What every frame of a field shares: its folder (made), stars, shifts, transparencies and
    the noise generator, drawn in one order so a spec always gives the same frames."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plan = plan_field(spec)
    shifts, transp = frame_shifts(spec, ref_index)
    return directory, plan, shifts, transp, np.random.default_rng(spec.seed + 2)


def _truth_cards(hdr, shift, transparency: float) -> None:
    hdr["TRUTH_DX"] = (float(shift[0]), "true shift x (ref - frame), px")
    hdr["TRUTH_DY"] = (float(shift[1]), "true shift y (ref - frame), px")
    hdr["TRUTH_T"] = (float(transparency), "true transparency")


def _write(path: Path, data: np.ndarray, hdr) -> Path:
    from astropy.io import fits

    fits.PrimaryHDU(data, hdr).writeto(path, overwrite=True)
    return path


def write_field(directory: Path, spec: FieldSpec = FieldSpec(), prefix: str = "demo_", ref_index: int = 0) -> FieldTruth:
    """Write the frames as FITS (float32, integer-valued ADU) with truth in each header."""
    from astropy.io import fits

    directory, (stars, ref_star, comps), shifts, transp, rng = _plan(directory, spec, ref_index)
    files = []
    for i in range(spec.n_frames):
        rot = spec.rotations[i] if spec.rotations is not None else 0.0
        trail = spec.trail_px if i in spec.trailed else 0.0
        data = render_frame(stars, shifts[i], transp[i], spec, rng, rotation=rot, trail=trail)
        hdr = _frame_header(spec, _date_obs("2026-11-26T02:00:00", i), spec.read_noise)
        # A TAN WCS, same sky point at reference pixel - shift in this frame.
        hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
        hdr["CRVAL1"], hdr["CRVAL2"] = 109.67, -24.95
        hdr["CRPIX1"] = spec.shape[1] / 2 + 1 - shifts[i, 0]
        hdr["CRPIX2"] = spec.shape[0] / 2 + 1 - shifts[i, 1]
        hdr["CDELT1"], hdr["CDELT2"] = -0.4 / 3600, 0.4 / 3600
        _truth_cards(hdr, shifts[i], transp[i])
        files.append(_write(directory / f"{prefix}{i + 1:03d}.fits", data, hdr))
    if spec.with_flat:
        flat = np.full(spec.shape, 20000.0, dtype=np.float32)
        hdr = fits.Header({"PICTTYPE": 2, "IMAGETYP": "flat", "EXPTIME": 2.0, "FILTER": "V"})
        fits.PrimaryHDU(flat, hdr).writeto(directory / f"{prefix}flat.fits", overwrite=True)
    return FieldTruth(files, shifts, transp, ref_index, ref_star, comps, stars)


# ---------------------------------------------------------------- turned, mirrored, rescaled frames (#17)


@dataclass
class FrameGeometry:
    """How one frame lies on the sky relative to the reference frame: frame position =
    scale * R(rotation) * M (reference position - reference centre) + frame centre - shift,
    with M a top-bottom mirror when `mirror`; `binning` then sums b x b pixels (scale / b)."""

    rotation: float = 0.0  # degrees
    scale: float = 1.0  # plate-scale ratio, frame px per reference px before binning
    mirror: bool = False
    shift: tuple[float, float] = (0.0, 0.0)
    binning: int = 1
    field_offset: tuple[float, float] | None = None  # another field: stars of its own, this far away (ref px)
    stretch_y: float = 1.0  # optics whose scale differs along the axes: y scaled by this too

    def transform(self, ref_shape, frame_shape):
        """[a, b, c, d, e, f]: reference (x, y) -> frame (x', y'), the transform contract."""
        s = self.scale / self.binning
        th = np.radians(self.rotation)
        m = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        if self.mirror:
            m = m @ np.diag([1.0, -1.0])
        m = np.diag([1.0, self.stretch_y]) @ m
        cr = np.array([(ref_shape[1] - 1) / 2, (ref_shape[0] - 1) / 2])
        cf = np.array([(frame_shape[1] - 1) / 2, (frame_shape[0] - 1) / 2])
        t = cf - np.asarray(self.shift, float) - m @ cr
        return [m[0, 0], m[0, 1], t[0], m[1, 0], m[1, 1], t[1]]


def frame_shape_for(geometry: FrameGeometry, ref_shape) -> tuple[int, int]:
    """The reference's sensor, binned (another plate scale keeps the sensor's shape)."""
    h, w = ref_shape
    return (h // geometry.binning, w // geometry.binning)


def write_geometry_field(directory: Path, spec: FieldSpec, geometries: list[FrameGeometry],
                         prefix: str = "geo_", wcs: bool = True) -> FieldTruth:
    """Frames of one star field seen through the given geometries (frame 0 is the reference:
    give it FrameGeometry()). The sky is 1.6x the reference frame on each axis, so turned
    frames have stars in their corners. Each header has TRUTH_TX, the true transform
    reference -> frame as 6 numbers, and (with `wcs`) a TAN WCS consistent with it."""
    import dataclasses

    from astropy.io import fits

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    h, w = spec.shape
    pad = 0.3
    sky_spec = dataclasses.replace(spec, shape=(int(h * (1 + 2 * pad)), int(w * (1 + 2 * pad))),
                                   n_stars=int(spec.n_stars * (1 + 2 * pad) ** 2))
    stars, ref_star, comps = plan_field(sky_spec)
    off = np.array([pad * w, pad * h])
    stars[:, :2] -= off
    ref_star = tuple(np.asarray(ref_star) - off)
    comps = [tuple(np.asarray(c) - off) for c in comps]
    _, transp = frame_shifts(dataclasses.replace(spec, n_frames=len(geometries), transparencies=spec.transparencies))
    rng = np.random.default_rng(spec.seed + 2)
    files, transforms = [], []
    cd = np.array([[-0.4, 0.0], [0.0, 0.4]]) / 3600
    for i, g in enumerate(geometries):
        fshape = frame_shape_for(g, spec.shape)
        tr = np.array(g.transform(spec.shape, fshape))
        m, t = np.array([[tr[0], tr[1]], [tr[3], tr[4]]]), np.array([tr[2], tr[5]])
        pos, flux = stars[:, :2].copy(), stars[:, 2]
        if g.field_offset is not None:  # another part of the sky: other stars
            other, _, other_comps = plan_field(dataclasses.replace(sky_spec, seed=spec.seed + 1000 + i))
            other = other[: len(other) - 1 - len(other_comps) - (1 if spec.bright_neighbour else 0)]  # not ours
            pos, flux = other[:, :2] - off, other[:, 2]
        b = g.binning
        # rendered on b x b finer pixels, then summed: a pixel centre of the binned frame is
        # (b - 1) / 2 fine pixels in from its bin's corner
        fine = (pos @ m.T + t) * b + (b - 1) / 2
        fspec = dataclasses.replace(spec, shape=(fshape[0] * b, fshape[1] * b), fwhm=spec.fwhm * g.scale,
                                    sky=spec.sky / b**2)
        img = render_frame(np.column_stack([fine, flux]), (0.0, 0.0), transp[i], fspec, rng)
        if b > 1:
            img = img.reshape(fshape[0], b, fshape[1], b).sum(axis=(1, 3)).clip(0, SATURATION).astype(np.float32)
        hdr = _frame_header(spec, _date_obs("2026-11-26T03:00:00", i), spec.read_noise * b)
        if wcs and g.field_offset is None:
            # sky = CD_ref (p_ref - crpix_ref) with p_ref = m^-1 (p_frame - t)
            mi = np.linalg.inv(m)
            crpix = m @ np.array([w / 2, h / 2]) + t  # 0-based
            frame_cd = cd @ mi
            hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
            hdr["CRVAL1"], hdr["CRVAL2"] = 109.67, -24.95
            hdr["CRPIX1"], hdr["CRPIX2"] = crpix[0] + 1, crpix[1] + 1
            hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = frame_cd.ravel()
        hdr["TRUTH_TX"] = " ".join(f"{v:.10g}" for v in tr)  # the true transform ref -> frame
        hdr["TRUTH_T"] = (float(transp[i]), "true transparency")
        path = directory / f"{prefix}{i + 1:03d}.fits"
        fits.PrimaryHDU(img, hdr).writeto(path, overwrite=True)
        files.append(path)
        transforms.append(tr)
    # shifts: reference - frame position of the reference's centre (for frames at scale 1)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    shifts = np.array([centre - (np.array([[tr[0], tr[1]], [tr[3], tr[4]]]) @ centre + [tr[2], tr[5]])
                       for tr in transforms])
    truth = FieldTruth(files, shifts, np.asarray(transp), 0, ref_star, comps, stars)
    truth.transforms = [list(map(float, tr)) for tr in transforms]
    return truth


# ---------------------------------------------------------------- seeing that changes (issue 22)


def seeing_psfs(n_frames: int, seed: int = 22, fwhm=(2.5, 6.0), beta=(2.0, 4.5)) -> tuple[np.ndarray, np.ndarray]:
    """A FWHM (px) and Moffat beta per frame, spread over the given ranges so that the set
    holds both ends of each (sharp and soft frames, steep and broad wings) in a random order."""
    rng = np.random.default_rng(seed)
    fw = rng.permutation(np.linspace(*fwhm, n_frames))
    be = rng.permutation(np.linspace(*beta, n_frames))
    return fw, be


def write_seeing_field(directory: Path, spec: FieldSpec, fwhms, betas, prefix: str = "demo_",
                       ref_index: int = 0, noise_draw: int = 0) -> FieldTruth:
    """Like write_field, but frame i has its own PSF: FWHM fwhms[i] px, Moffat beta betas[i]
    (recorded as TRUTH_FW and TRUTH_BE in its header). `noise_draw` > 0: the same frames with
    other noise (what a measurement's own noise moves)."""
    from dataclasses import replace

    if len(fwhms) != spec.n_frames or len(betas) != spec.n_frames:
        raise ValueError("fwhms and betas must have one value per frame")
    directory, (stars, ref_star, comps), shifts, transp, rng = _plan(directory, spec, ref_index)
    if noise_draw:
        rng = np.random.default_rng([spec.seed + 2, noise_draw])
    files = []
    for i in range(spec.n_frames):
        one = replace(spec, fwhm=float(fwhms[i]), beta=float(betas[i]))
        data = render_frame(stars, shifts[i], transp[i], one, rng)
        hdr = _frame_header(spec, _date_obs("2026-11-26T03:00:00", i), spec.read_noise)
        hdr["OBJECT"] = "SEEING FIELD"
        _truth_cards(hdr, shifts[i], transp[i])
        hdr["TRUTH_FW"] = (float(fwhms[i]), "true FWHM, px")
        hdr["TRUTH_BE"] = (float(betas[i]), "true Moffat beta")
        files.append(_write(directory / f"{prefix}{i + 1:03d}.fits", data, hdr))
    return FieldTruth(files, shifts, transp, ref_index, ref_star, comps, stars)


SEEING_SETS = {"sparse": 400, "crowded": 1500, "same": 400}


def seeing_set(kind: str, n_frames: int = 8, size: int = 1024) -> tuple[FieldSpec, np.ndarray, np.ndarray]:
    """The sets of issue 22 (benchmarks/run.py --scales and the tests): `n_frames` frames of
    size^2 with subpixel offsets, transparency 0.6-1 (the reference 1), 400 ("sparse") or 1,500
    ("crowded") stars, FWHM 2.5-6 px and Moffat beta 2-4.5 varying from frame to frame, or
    ("same") every frame at FWHM 3.5, beta 3; stars integrated over their pixels, as a CCD
    records them. Returns (spec, fwhms, betas) for write_seeing_field."""
    n = SEEING_SETS[kind]
    t = np.r_[1.0, np.random.default_rng(n).uniform(0.6, 1.0, n_frames - 1)]
    spec = FieldSpec(n_frames=n_frames, shape=(size, size), n_stars=round(n * (size / 1024) ** 2),
                     seed=2200 + n, transparencies=tuple(t), star_reach=60, oversample=5)
    if kind == "same":
        return spec, np.full(n_frames, 3.5), np.full(n_frames, 3.0)
    fw, be = seeing_psfs(n_frames, seed=n)
    return spec, fw, be
