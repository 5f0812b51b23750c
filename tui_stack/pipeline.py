"""The whole reduction from a Config: select, register, shift, scale, combine, write.

Used by `tui-stack run` and by the wizard, step by step, so both give the same result.
Frames are read one at a time; the combine streams row blocks (core.combine).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from tui_stack import __version__, compute
from tui_stack.config import Config
from tui_stack.core import background, combine, io, photometry, quality, registration, shifting, stats
from tui_stack.errors import InputError

Progress = Callable[[str, int, int], None]

MIN_XCORR_PEAK = 0.2  # below this the frame shares no star pattern with the reference


@dataclass
class FrameResult:
    path: Path
    hdu_index: int = 0
    sky: float = float("nan")
    noise: float = float("nan")
    centroid_x: float = float("nan")
    centroid_y: float = float("nan")
    shift_x: float = float("nan")
    shift_y: float = float("nan")
    xcorr_shift_x: float = float("nan")
    xcorr_shift_y: float = float("nan")
    xcorr_peak: float = float("nan")
    applied_shift_x: float = 0
    applied_shift_y: float = 0
    scale: float = float("nan")
    scale_mad: float = float("nan")
    n_scale_stars: int = 0
    star_flux: list = field(default_factory=list)
    star_flags: list = field(default_factory=list)
    rotation: float = float("nan")  # degrees, from matching stars after the shift
    transform: list | None = None  # similarity [a, b, tx, ty] when fitted (subpixel mode): see shifting
    residuals: list = field(default_factory=list)  # [x, y, dx, dy] of each matched star after the fit
    flipped: bool = False  # turned by 180 degrees (meridian flip): read reversed, then shifted
    n_matched: int = 0  # stars matched to the reference and used in the shift fit
    fit_rms: float = float("nan")  # their residual RMS after the fit, px
    digest: str = ""  # hash of the pixels: the same exposure twice is left out
    duplicate_of: str = ""
    quality: object = None  # core.quality.FrameQuality
    used: bool = True
    flags: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class CombinedResult:
    method: str
    path: Path | None
    data: np.ndarray
    n_frames: int
    stats: stats.ImageStats
    photometry: stats.PhotometryComparison
    maps: object = None  # core.combine.CombineResult, for the NUSED/NREJECTED/SIGMA extensions
    params: object = None  # core.combine.CombineParams it was made with
    weights: list | None = None  # per used frame, summing to 1; None: equal


@dataclass
class RunState:
    """Everything measured so far; the wizard fills it step by step, `run` in one go."""

    config: Config
    files: list[Path] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)
    ref_index: int = 0
    ref_star: registration.StarPosition | None = None
    ref_stars: object = None  # core.quality.Stars of the reference frame
    qualities: list = field(default_factory=list)
    comparison_stars: list[tuple[float, float]] = field(default_factory=list)
    frames: list[FrameResult] = field(default_factory=list)
    combined: list[CombinedResult] = field(default_factory=list)


def _nan_to_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _noop(stage, done, total):
    pass


def select(cfg: Config) -> list[Path]:
    """The sorted frames to work on; an unreadable file named in `exclude` is skipped, not an error."""
    names = {e for e in cfg.exclude if isinstance(e, str)}
    return io.select_files(cfg.directory, cfg.pattern, cfg.select, skip=names)


def resolve_reference(cfg: Config, files: list[Path]) -> int:
    if isinstance(cfg.frame, int):
        if cfg.frame >= len(files):
            raise InputError(
                f"config: [reference].frame = {cfg.frame} but only {len(files)} frames are selected (0-based)"
            )
        return cfg.frame
    names = [f.name for f in files]
    if cfg.frame in names:
        return names.index(cfg.frame)
    raise InputError(f"config: [reference].frame = {cfg.frame!r} is not one of the selected files")


def excluded_indices(cfg: Config, files: list[Path]) -> set[int]:
    names = [f.name for f in files]
    out = set()
    for item in cfg.exclude:
        if isinstance(item, int):
            if not 0 <= item < len(files):
                raise InputError(f"config: [input].exclude has index {item}, outside 0..{len(files) - 1}")
            out.add(item)
        elif item in names:
            out.add(names.index(item))
        elif (cfg.directory / item).exists():
            continue  # unreadable or filtered out by the header keywords: not selected anyway
        else:
            raise InputError(f"config: [input].exclude names {item!r}, which is not a selected file")
    return out


# ---------------------------------------------------------------- registration


MIN_MATCHED = 5  # stars for a many-star shift; fewer: the reference star alone, flagged
MAX_FIT_RMS = 0.5  # px: the matched stars disagree, something is wrong with the frame
ROTATION_LIMIT_DEG = 0.05  # above this a shift alone leaves stars 0.2 px off at 250 px from the centre


def _frame_measure(path: Path, cfg: Config):
    """Read a frame, its sky and its stars: what every per-frame step starts from. The sky
    is taken off in place, so `frame.data` is the sky-subtracted `sub` (the frame's digest is
    of the pixels as read)."""
    frame = io.read_frame(path)
    frame.digest = frame.pixel_digest()
    sky = background.estimate_sky(frame.data, frame.mask, cfg.sky)
    if np.isfinite(sky.level):
        frame.data -= np.float32(sky.level)  # in place: no second 64 MB frame per 4k frame in flight
    sub = frame.data
    if np.isfinite(sky.level) and sky.noise > 0:
        stars = quality.find_stars(sub, frame.mask, sky.noise)
        q = quality.frame_quality(stars, sky.level, sky.noise, cfg.saturation)
    else:
        stars, q = None, quality.FrameQuality(sky.level, sky.noise, 0, float("nan"), float("nan"), 0.0, flags=["no_data"])
    return frame, sky, sub, stars, q


def sky_subtracted(path: Path, cfg: Config) -> tuple[np.ndarray, float]:
    """A frame less its sky, NaN where it has no data, and its noise: what previews show."""
    frame = io.read_frame(path)
    sky = background.estimate_sky(frame.data, frame.mask, cfg.sky)
    img = frame.data
    img -= np.float32(sky.level)
    img[frame.mask] = np.nan
    return img, sky.noise


def assess(state: RunState, progress: Progress = _noop) -> list:
    """Quality of every frame (one pass); used to choose the reference frame automatically."""
    qs = []
    for i, path in enumerate(state.files):
        progress("assess", i, len(state.files))
        qs.append(_frame_measure(path, state.config)[4])
    progress("assess", len(state.files), len(state.files))
    quality.flag_qualities(qs)
    state.qualities = qs
    return qs


def choose_reference(state: RunState, progress: Progress = _noop) -> int:
    cfg = state.config
    if cfg.frame == "auto":
        qs = state.qualities or assess(state, progress)
        excluded = excluded_indices(cfg, state.files)
        allowed = [i for i in range(len(qs)) if i not in excluded]
        best = quality.best_reference([qs[i] for i in allowed])
        state.ref_index = allowed[best]
    else:
        state.ref_index = resolve_reference(cfg, state.files)
    return state.ref_index


AHEAD_FRAMES = 2  # frames measured while the reference is prepared (64 MB each at 4k)


class _Ahead:
    """The first frames read and measured on a spare thread while the reference is being
    prepared on one core (its stars, the cross-correlation's transform, scipy's import):
    0.2-0.3 s of a 16-frame 4k run (A/B measured). Local engine only: Dask workers read their own."""

    def __init__(self, files: list[Path], cfg: Config, indices: list[int]):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1)
        self._futures = {i: self._pool.submit(_frame_measure, files[i], cfg) for i in indices}

    def take(self, i: int):
        f = self._futures.pop(i, None)
        return None if f is None else f.result()

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True)


def register(state: RunState, progress: Progress = _noop) -> None:
    """Sky, quality, reference star and shift of every frame (one frame in memory at a time
    per thread, plus the frames measured ahead)."""
    ahead = None
    if compute.current().name == "local":
        ahead = _Ahead(state.files, state.config,
                       [i for i in range(len(state.files)) if i != state.ref_index][:AHEAD_FRAMES])
    try:
        _register(state, progress, ahead)
    finally:
        if ahead is not None:
            ahead.close()


def _register(state: RunState, progress: Progress, ahead: _Ahead | None) -> None:
    cfg = state.config
    files = state.files
    ref_frame, ref_sky, ref_sub, ref_stars, ref_q = _frame_measure(files[state.ref_index], cfg)
    state.shape = ref_frame.shape
    h, w = ref_frame.shape
    if not np.isfinite(ref_sky.level) or ref_stars is None or len(ref_stars) == 0:
        raise InputError(f"{ref_frame.path.name}: the reference frame has no stars; choose another reference frame")
    state.ref_stars = ref_stars
    if cfg.star == "auto":
        picked = quality.pick_reference_star(ref_stars, state.shape, ref_sky.level, cfg.saturation, cfg.box)
        if picked is None:
            raise InputError(
                f"{ref_frame.path.name}: no bright, unsaturated, isolated star for [reference].star = \"auto\"; "
                "give [x, y]"
            )
        sx, sy = picked
    else:
        sx, sy = cfg.star
    if not (0 <= sx < w and 0 <= sy < h):
        raise InputError(
            f"config: [reference].star = [{sx:g}, {sy:g}] is outside the {w}x{h} reference frame "
            f"{ref_frame.path.name}"
        )
    star = registration.locate_reference_star(ref_sub, ref_frame.mask, sx, sy, cfg.box, cfg.centroid, ref_sky.noise)
    if star is None:
        raise InputError(
            f"{ref_frame.path.name}: no star found in the {cfg.box} px box around "
            f"[{sx:g}, {sy:g}]; check [reference].star or enlarge [reference].box"
        )
    if cfg.saturation is not None and star.peak + ref_sky.level >= cfg.saturation:
        raise InputError(
            f"{ref_frame.path.name}: the reference star at [{star.x:.1f}, {star.y:.1f}] is saturated "
            f"(peak {star.peak + ref_sky.level:.0f} >= {cfg.saturation:g}); choose a fainter star"
        )
    state.ref_star = star
    xref = registration.XcorrReference(ref_sub, ref_frame.mask, 0.0, ref_sky.noise)
    # Stars matched in every frame: the shift fit ("stars") and the rotation check. Centroided
    # in the reference exactly as they will be in each frame.
    many = cfg.shift_method == "stars"
    box = registration.star_box(star.fwhm)
    method = cfg.centroid if many else "com"
    reg_stars = np.array(
        quality.pick_comparison_stars(ref_stars, state.shape, ref_sky.level, cfg.saturation, 6, 80 if many else 16)
    )
    reg_weights = np.array([])
    if len(reg_stars):
        reg_stars = registration.match_stars(ref_sub, ref_frame.mask, ref_sky.noise, reg_stars, 0.0, 0.0,
                                             search=7, box=box, method=method)[1]
        iy, ix = np.round(reg_stars[:, 1]).astype(int), np.round(reg_stars[:, 0]).astype(int)
        reg_weights = np.clip(ref_sub[iy, ix], 1.0, None)  # peak height: brighter centroids better
    excluded = excluded_indices(cfg, files)
    ref_measured = (ref_frame, ref_sky, ref_sub, None, ref_q)  # measured once, not twice
    early = False  # comparison-star photometry in this pass (see early_photometry)
    try:
        state.comparison_stars = comparison_stars(state, ref_sky.level)
        early = True
    except InputError:
        pass  # said again, with the frame's name, by the scale step

    def one(i: int) -> FrameResult:
        path = files[i]
        fr = FrameResult(path=path)
        if i == state.ref_index:
            frame, sky, sub, frame_stars, q = ref_measured
        else:
            frame, sky, sub, frame_stars, q = (ahead and ahead.take(i)) or _frame_measure(path, cfg)
        fr.quality = q
        if frame.shape != state.shape:
            raise InputError(
                f"{path.name}: shape {frame.shape[1]}x{frame.shape[0]} differs from the reference "
                f"({w}x{h}); frames must all have one shape"
            )
        fr.hdu_index = frame.hdu_index
        fr.digest = frame.digest
        fr.sky, fr.noise = sky.level, sky.noise
        if "no_data" in q.flags:
            fr.used = False
            fr.flags.append("no_data")
            return fr
        if i == state.ref_index:
            fr.centroid_x, fr.centroid_y = star.x, star.y
            fr.shift_x = fr.shift_y = fr.xcorr_shift_x = fr.xcorr_shift_y = 0.0
            fr.xcorr_peak = 1.0
        else:
            prepared = xref.prepare(sub, frame.mask, 0.0, sky.noise)
            dx, dy, peak = xref.offset(prepared)
            fr.xcorr_shift_x, fr.xcorr_shift_y, fr.xcorr_peak = dx, dy, peak
            # A meridian flip turns the frame by 180 degrees: it then matches the reference
            # better turned back than as it is. Turning it back is exact (no resampling): the
            # frame is read reversed on both axes from here on.
            # A correlation is at most 1, so from a straight peak of 0.5 up the turned one
            # cannot win: not computed then.
            fx, fy, fpeak = xref.offset(prepared, flip=True) if peak < 0.5 else (0.0, 0.0, 0.0)
            if fpeak > 2 * max(peak, 0.0) and fpeak >= MIN_XCORR_PEAK:
                fr.flipped = True
                fr.flags.append("meridian_flip")
                frame.data, frame.mask, sub = frame.data[::-1, ::-1], frame.mask[::-1, ::-1], sub[::-1, ::-1]
                dx, dy, peak = fx, fy, fpeak
                fr.xcorr_shift_x, fr.xcorr_shift_y, fr.xcorr_peak = dx, dy, peak
            if peak < MIN_XCORR_PEAK:
                # Clouded out (no stars), or another field (stars, but not the reference's).
                fr.used = False
                fr.flags.append("no_stars" if q.n_stars < max(5, ref_q.n_stars / 4) else "no_match")
            else:
                res = registration.measure_frame_shift(sub, frame.mask, sky.noise, star, dx, dy, cfg.centroid, xref.binning)
                fr.centroid_x, fr.centroid_y = res.centroid_x, res.centroid_y
                fr.shift_x, fr.shift_y = res.shift_x, res.shift_y
                fr.flags.extend(res.flags)
                # search around the cross-correlation's estimate: a wrong one-star centroid
                # (a brighter neighbour) cannot mislead the many-star match
                search = 2 * (2 + xref.binning) + 1
                weights = dict(zip(map(tuple, reg_stars), reg_weights))
                ref_pts, pts = registration.match_stars(sub, frame.mask, sky.noise, reg_stars, dx, dy,
                                                        search=search, box=box, method=method)
                fit = registration.fit_translation(ref_pts, pts, [weights[tuple(p)] for p in ref_pts])
                fr.n_matched, fr.fit_rms = fit.n_used, fit.rms
                if np.isfinite(fit.dx):
                    fr.residuals = _residual_table(ref_pts, pts - (ref_pts - [fit.dx, fit.dy]))
                if many and fit.n_used >= MIN_MATCHED:
                    fr.shift_x, fr.shift_y = fit.dx, fit.dy
                    fr.flags = [f for f in fr.flags if f not in ("star_off_frame", "star_not_found", "methods_disagree")]
                    if np.isfinite(res.shift_x) and np.hypot(res.shift_x - fit.dx, res.shift_y - fit.dy) > 1.0:
                        fr.flags.append("methods_disagree")  # the reference star alone says otherwise
                    if fit.rms > MAX_FIT_RMS:
                        fr.flags.append("poor_fit")
                elif many:
                    fr.flags.append("few_matches")
                if ("star_off_frame" in fr.flags or "star_not_found" in fr.flags) and fit.n_used >= 3:
                    # The reference star is not there: the other stars stand in.
                    fr.shift_x, fr.shift_y = fit.dx, fit.dy
                fr.rotation, rot_err = registration.fit_rotation(ref_pts, pts)
                if np.isfinite(fr.rotation) and abs(fr.rotation) > max(ROTATION_LIMIT_DEG, 4 * rot_err):
                    fr.flags.append("rotated")
                if many and (cfg.transform == "similarity" or "rotated" in fr.flags or "few_matches" in fr.flags):
                    # turned frames: the shift alone matches few stars, or finds a rotation
                    _fit_similarity(fr, sub, frame.mask, sky.noise, reg_stars, weights, search, box, method, (w, h),
                                    apply=cfg.shift_mode == "subpixel" and cfg.transform != "translation",
                                    star_lists=(ref_stars, frame_stars))
        if fr.used:
            if abs(fr.shift_x) >= w or abs(fr.shift_y) >= h:
                fr.used = False
                fr.flags.append("shift_exceeds_frame")
            else:
                ax, ay = shifting.applied_shift(fr.shift_x, fr.shift_y, cfg.shift_mode)
                fr.applied_shift_x, fr.applied_shift_y = ax, ay
        if i in excluded:
            fr.used = False
            fr.flags.append("excluded")
        if early:
            early_photometry(state, fr, sub, frame.mask)
        return fr

    state.frames = list(compute.current().map_in_order(one, range(len(files)), progress, "register"))
    ref_fr = state.frames[state.ref_index]
    first_of = {ref_fr.digest: ref_fr.name}
    for k, fr in enumerate(state.frames):
        if k == state.ref_index or not fr.digest:
            continue
        if fr.digest in first_of:
            fr.used = False
            fr.flags.append("duplicate")
            fr.duplicate_of = first_of[fr.digest]
        else:
            first_of[fr.digest] = fr.name
    qs = [fr.quality for fr in state.frames]
    quality.flag_qualities(qs)
    state.qualities = qs
    progress("register", len(files), len(files))


# ---------------------------------------------------------------- shifting and scaling


UNMEASURABLE = ("no_data", "no_stars", "no_match", "shift_exceeds_frame", "duplicate")


def _measurable(fr: FrameResult) -> bool:
    """The frame has a shift, so it can be shifted and measured (used or not)."""
    return not any(f in fr.flags for f in UNMEASURABLE)


def prepared_frame(state: RunState, i: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Frame i sky-subtracted and shifted onto the reference grid: (data, mask, header)."""
    fr = state.frames[i]
    frame = io.read_frame(fr.path)
    data = frame.data
    data -= np.float32(fr.sky)
    if fr.flipped:
        data, frame.mask = data[::-1, ::-1], frame.mask[::-1, ::-1]
    if fr.transform is not None and state.config.shift_mode == "subpixel":
        data, mask = shifting.transform_frame(data, frame.mask, fr.transform)
    else:
        data, mask = shifting.shift_frame(
            data, frame.mask, fr.applied_shift_x, fr.applied_shift_y, state.config.shift_mode
        )
    return data, mask, frame.header


def comparison_stars(state: RunState, ref_sky: float) -> list:
    """The config's comparison stars, or (stars = "auto") those picked on the reference frame.
    No margin for the shifts: a star off one frame is flagged there and left out of that
    frame's scale only."""
    cfg = state.config
    if cfg.stars != "auto":
        return [tuple(s) for s in cfg.stars]
    stars = quality.pick_comparison_stars(state.ref_stars, state.shape, ref_sky, cfg.saturation, cfg.radius)
    if not stars:
        raise InputError(
            f"{state.files[state.ref_index].name}: no bright, unsaturated, isolated comparison star found for "
            '[scale].stars = "auto"; give a list of [x, y] or a smaller [scale].radius'
        )
    return stars


def _photometry_key(state: RunState, fr: FrameResult) -> tuple:
    """What a frame's comparison-star fluxes depend on besides its pixels."""
    cfg = state.config
    return (tuple(map(tuple, state.comparison_stars)), cfg.radius, cfg.annulus_radii(), cfg.saturation, cfg.phot_sky,
            fr.applied_shift_x, fr.applied_shift_y, fr.sky, fr.flipped, tuple(fr.transform or ()))


def _residual_table(ref_pts: np.ndarray, resid: np.ndarray) -> list:
    """[x, y, dx, dy] per matched star: where it is in the reference, and how far its measured
    position in the frame lies from where the fit puts it (px)."""
    return np.round(np.column_stack([ref_pts, resid]), 4).tolist()


def _fit_similarity(fr: FrameResult, sub, mask, noise, reg_stars, weights: dict, search: int, box: int,
                    method: str, size: tuple[int, int], apply: bool, star_lists=None) -> None:
    """Rotation + scale + shift from every registration star. The shift alone misplaces the
    outer stars of a turned frame, so the fit grows outwards from the centre: stars within a
    quarter, then half, then all of the field, each ring found where the fit so far puts it.
    A rotation found is flagged; with `apply` (subpixel mode) the frame is resampled by it."""
    w, h = size
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    dist = np.hypot(*(reg_stars - centre).T)
    reach = dist.max() if len(dist) else 0.0
    sim = registration.SimilarityFit(1 + 0j, complex(-fr.shift_x, -fr.shift_y), 0, 0, float("nan"))
    if "few_matches" in fr.flags and star_lists is not None and star_lists[1] is not None:
        # the cross-correlation itself was thrown off by the turn: start from the star lists
        ref_list, frame_list = star_lists
        n = 150
        guess = registration.coarse_similarity(np.stack([ref_list.x[:n], ref_list.y[:n]], axis=1),
                                               np.stack([frame_list.x[:n], frame_list.y[:n]], axis=1), centre,
                                               max_shift=max(w, h) / 4)
        if guess is not None:
            sim = guess
    for k, frac in enumerate((0.25, 0.5, 1.0, 1.0)):
        near = reg_stars[dist <= frac * reach]
        if len(near) < 3:
            continue
        # first ring: room for a turn of up to ~4 degrees at its edge
        wide = search + 2 * int(np.ceil(0.07 * frac * reach)) if k == 0 else search
        ref_pts, pts = registration.match_stars(sub, mask, noise, near, 0.0, 0.0, search=wide, box=box,
                                                method=method, predicted=sim.apply(near))
        fit = registration.fit_similarity(ref_pts, pts, [weights[tuple(p)] for p in ref_pts])
        if fit.n_used >= 3:
            sim = fit
    if not np.isfinite(sim.rms) or sim.n_used < MIN_MATCHED:
        return  # the shift's own result and flags stand
    fr.rotation = sim.rotation
    rot_err = float(np.degrees(sim.rms / np.sqrt(np.sum(dist**2) / 2)))
    if abs(sim.rotation) > max(ROTATION_LIMIT_DEG, 4 * rot_err) and "rotated" not in fr.flags:
        fr.flags.append("rotated")
    if not apply:
        return
    fr.transform = sim.as_list()
    fr.n_matched, fr.fit_rms = sim.n_used, sim.rms
    fr.residuals = _residual_table(ref_pts, pts - sim.apply(ref_pts))
    # the shift reported is that of the field centre
    moved = sim.apply(centre[None])[0]
    fr.shift_x, fr.shift_y = float(centre[0] - moved[0]), float(centre[1] - moved[1])
    fr.flags = [f for f in fr.flags if f not in ("poor_fit", "few_matches", "star_off_frame", "star_not_found",
                                                 "methods_disagree")]
    if sim.rms > MAX_FIT_RMS:
        fr.flags.append("poor_fit")


def early_photometry(state: RunState, fr: FrameResult, sub: np.ndarray, mask: np.ndarray) -> None:
    """Measure the comparison stars in the frame as it is, at where the registration puts
    them, while it is in memory for registration: the scale pass need not read it again.
    Integer shifts: the same apertures on the same pixels as in the shifted frame (an
    aperture off the frame is off the shifted frame too). Subpixel shifts and rotations:
    the apertures sit at fractional positions (photutils' exact overlap) on pixels never
    interpolated, so a resampling's smoothing cannot bias the flux ratios."""
    cfg = state.config
    if not state.comparison_stars or not fr.used:
        return
    ref_xy = np.array(state.comparison_stars, float)
    if fr.transform is not None and cfg.shift_mode == "subpixel":
        at = registration.SimilarityFit.from_list(fr.transform).apply(ref_xy)
    else:
        at = ref_xy - [fr.applied_shift_x, fr.applied_shift_y]
    at = [tuple(p) for p in at]
    fluxes = photometry.measure_stars(sub, mask, at, cfg.radius, fr.sky, cfg.saturation, cfg.annulus_radii())
    fr.early_fluxes = (_photometry_key(state, fr), fluxes)


def measure_scales(state: RunState, progress: Progress = _noop, shifted_dir: Path | None = None) -> None:
    """Comparison-star photometry in each shifted frame and the scale against the reference.

    With `shifted_dir`, each prepared frame is also written there as s<name>.
    """
    cfg = state.config
    ref_fr = state.frames[state.ref_index]
    if cfg.stars == "auto" and state.ref_stars is None:  # a resumed session keeps tables, not star lists
        _, _, _, state.ref_stars, _ = _frame_measure(ref_fr.path, cfg)
    state.comparison_stars = comparison_stars(state, ref_fr.sky)
    annulus = cfg.annulus_radii()
    n = len(state.frames)

    def photometry_of(i: int):
        fr = state.frames[i]
        if not _measurable(fr):
            return None
        early = getattr(fr, "early_fluxes", None)
        fluxes = early[1] if early is not None and early[0] == _photometry_key(state, fr) else None
        if fluxes is not None and shifted_dir is None:
            return fluxes  # measured in the registration pass: nothing to read
        data, mask, header = prepared_frame(state, i)
        if fluxes is None:
            fluxes = photometry.measure_stars(data, mask, state.comparison_stars, cfg.radius, fr.sky, cfg.saturation,
                                              annulus)
        if shifted_dir is not None:
            write_shifted(state, i, data, mask, header, shifted_dir / f"s{fr.name}")
        return fluxes

    ref_fluxes = photometry_of(state.ref_index)
    ref_fr = state.frames[state.ref_index]
    if ref_fluxes is None or not photometry.usable(ref_fluxes).any():
        reasons = sorted({f for flags in (ref_fluxes.flags if ref_fluxes else []) for f in flags}) or ["no flux"]
        raise InputError(
            f"{ref_fr.name}: no usable comparison star in the reference frame "
            f"({', '.join(reasons)}); choose other [scale].stars"
        )
    others = [i for i in range(n) if i != state.ref_index]
    measured = [(state.ref_index, ref_fluxes)]
    measured += zip(others, compute.current().map_in_order(photometry_of, others,
                                                           lambda st, k, t: progress("scale", k + 1, n), "scale"))
    for i, fluxes in measured:
        if fluxes is None:
            continue
        fr = state.frames[i]
        fr.star_flux = fluxes.flux.tolist()
        fr.star_flags = fluxes.flags
        sc = photometry.frame_scale(ref_fluxes, fluxes)
        fr.scale, fr.scale_mad, fr.n_scale_stars = sc.scale, sc.mad, sc.n_used
        if sc.n_used == 0:
            fr.used = False
            fr.flags.append("no_comparison_star")
    progress("scale", n, n)
    _flag_transparency(state)


def _flag_transparency(state: RunState) -> None:
    """Quality flags from the whole set (clouded, trailed, ...) onto the frames' flags."""
    qs = [fr.quality for fr in state.frames]
    if any(q is None for q in qs):
        return
    quality.flag_qualities(qs, [fr.scale for fr in state.frames])
    for fr in state.frames:
        fr.flags = [f for f in fr.flags if f not in quality.QUALITY_FLAGS] + fr.quality.flags


def _shifted_header(header, fr: FrameResult, state: RunState):
    hdr = header.copy()
    for key in ("BZERO", "BSCALE", "BLANK"):
        hdr.remove(key, ignore_missing=True)
    if fr.transform is not None and state.config.shift_mode == "subpixel":
        # resampled onto the reference grid: the reference's WCS is now this frame's
        import warnings

        from astropy.wcs import WCS

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for key in WCS(hdr).to_header():
                    hdr.remove(key, ignore_missing=True)
        except Exception:
            pass  # no usable WCS to replace
        hdr.extend([c for c in _reference_header(state).cards if c.keyword not in hdr or c.keyword.startswith(
            ("CRPIX", "CRVAL", "CD", "PC", "CDELT", "CTYPE", "CUNIT", "WCS", "LON", "LAT", "RADESYS", "EQUINOX"))],
            update=True)
        hdr["TSXFORM"] = (" ".join(f"{v:.9g}" for v in fr.transform), "a b tx ty: x'=ax-by+tx y'=bx+ay+ty")
    elif "CRPIX1" in hdr and "CRPIX2" in hdr:
        if fr.flipped:
            _turn_wcs(hdr, state.shape)
        hdr["CRPIX1"] = hdr["CRPIX1"] + fr.applied_shift_x
        hdr["CRPIX2"] = hdr["CRPIX2"] + fr.applied_shift_y
    hdr["TSVERS"] = (__version__, "tui-stack version")
    hdr["TSREF"] = (state.files[state.ref_index].name, "reference frame")
    hdr["TSSKY"] = (float(fr.sky), "sky level subtracted (ADU)")
    hdr["TSDX"] = (float(fr.applied_shift_x), "x shift applied (px)")
    hdr["TSDY"] = (float(fr.applied_shift_y), "y shift applied (px)")
    hdr["TSMODE"] = (state.config.shift_mode, "shift mode")
    hdr.add_history(f"tui-stack {__version__}: sky-subtracted and shifted from {fr.name}; NaN = no data")
    return hdr


def _turn_wcs(hdr, shape) -> None:
    """The WCS of a frame turned by 180 degrees: pixel p (1-based) is now N+1-p on both axes,
    so CRPIX -> N+1-CRPIX and the linear part (CD, or CDELT with PC) changes sign."""
    h, w = shape
    hdr["CRPIX1"], hdr["CRPIX2"] = w + 1 - hdr["CRPIX1"], h + 1 - hdr["CRPIX2"]
    cd = [k for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2") if k in hdr]
    if cd:
        keys = cd
    elif "CDELT1" in hdr or "CDELT2" in hdr:
        for k in ("CDELT1", "CDELT2"):
            hdr.setdefault(k, 1.0)
        keys = ["CDELT1", "CDELT2"]
    else:
        keys = ["PC1_1", "PC1_2", "PC2_1", "PC2_2"]
        for k in keys:
            hdr.setdefault(k, 1.0 if k in ("PC1_1", "PC2_2") else 0.0)
    for k in keys:
        hdr[k] = -hdr[k]


def write_shifted(state: RunState, i: int, data, mask, header, path: Path) -> None:
    from astropy.io import fits

    out = np.where(mask, np.float32(np.nan), data).astype(np.float32)
    io.write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(out, _shifted_header(header, state.frames[i], state))]))


# ---------------------------------------------------------------- combine


def combine_sources(state: RunState, shifted_dir: Path | None) -> list:
    """Row-block sources of the used frames: original files with the integer shift as a slice
    offset, or (subpixel mode) the shifted frames written to `shifted_dir`."""
    sources = []
    for fr in state.frames:
        if not fr.used:
            continue
        if state.config.shift_mode == "integer":
            sources.append(
                combine.FileSource(
                    fr.path, fr.hdu_index, state.shape, fr.applied_shift_x, fr.applied_shift_y, fr.sky, fr.scale,
                    flip=fr.flipped,
                )
            )
        else:
            sources.append(combine.FileSource(shifted_dir / f"s{fr.name}", 0, state.shape, 0, 0, 0.0, fr.scale))
    return sources


def header_number(value, path: Path, hdu_index: int = 0) -> float:
    """A number from the config, or the value of the header keyword it names."""
    if not isinstance(value, str):
        return float(value)
    from astropy.io import fits

    hdr = fits.getheader(path, hdu_index)
    if value not in hdr or not isinstance(hdr[value], (int, float)):
        raise InputError(f"{path.name}: header keyword {value} (for ccdclip) is missing or not a number; "
                         "give the value in [combine]")
    return float(hdr[value])


def combine_params(cfg: Config, method: str, ref_path: Path, sky: float = 0.0) -> combine.CombineParams:
    gain = rdnoise = 1.0
    if method == "ccdclip":
        gain, rdnoise = header_number(cfg.gain, ref_path), header_number(cfg.rdnoise, ref_path)
    return combine.CombineParams(
        method=method, nlow=cfg.nlow, nhigh=cfg.nhigh, sigma=cfg.sigma, maxiters=cfg.maxiters,
        lsigma=cfg.lsigma, hsigma=cfg.hsigma, pclip=cfg.pclip, gain=gain, rdnoise=rdnoise,
        snoise=cfg.snoise, sky=float(sky), nkeep=cfg.nkeep, mclip=cfg.mclip,
        gesd_outliers=cfg.gesd_outliers, gesd_alpha=cfg.gesd_alpha,
    )


def exposure_times(paths, key: str) -> np.ndarray:
    """The exposure time of each frame from its header (primary or image HDU)."""
    from astropy.io import fits

    values = []
    for path, idx in paths:
        hdr = fits.getheader(path, idx)
        v = hdr.get(key, fits.getheader(path, 0).get(key) if idx else None)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise InputError(f"{Path(path).name}: header keyword {key} is missing or not a positive number")
        values.append(float(v))
    return np.array(values)


def frame_weights(state: RunState, method: str) -> np.ndarray | None:
    """Weights of the used frames for the averaging methods (median takes none): the exposure
    time, or the inverse variance of the sky noise after scaling, 1 / (noise x scale)^2."""
    cfg = state.config
    used = [fr for fr in state.frames if fr.used]
    if cfg.weights == "none" or method == "median":
        return None
    if cfg.weights == "exposure":
        return exposure_times([(fr.path, fr.hdu_index) for fr in used], cfg.exposure_key)
    noise = np.array([fr.noise * fr.scale for fr in used])
    if not np.all(np.isfinite(noise) & (noise > 0)):
        raise InputError("weights = \"noise\" needs the sky noise of every frame (measure the shifts first)")
    return 1.0 / noise**2


def combine_frames(
    state: RunState, method: str | None = None, shifted_dir: Path | None = None, progress: Progress = _noop
) -> CombinedResult:
    cfg = state.config
    method = method or cfg.method
    used = [fr for fr in state.frames if fr.used]
    if not used:
        raise InputError("no usable frames left to combine (see the flags of each frame)")
    params = combine_params(cfg, method, state.files[state.ref_index], np.median([fr.sky for fr in used]))
    weights = frame_weights(state, method)
    result = compute.current().combine(
        combine_sources(state, shifted_dir),
        params,
        memory_limit=cfg.memory_limit,
        progress=lambda d, t: progress(f"combine {method}", d, t),
        maps=cfg.maps,
        weights=weights,
    )
    st = stats.image_stats(result.data)
    comb_mask = ~np.isfinite(result.data)
    comb_flux = photometry.measure_stars(
        np.where(comb_mask, 0.0, result.data), comb_mask, state.comparison_stars, cfg.radius, 0.0, None, cfg.annulus_radii()
    )
    ref_flux = state.frames[state.ref_index].star_flux
    phot = stats.compare_photometry(ref_flux, comb_flux.flux, state.comparison_stars)
    combined = CombinedResult(method, None, result.data, len(used), st, phot, result, params,
                              None if weights is None else list(weights / weights.sum()))
    state.combined = [c for c in state.combined if c.method != method] + [combined]
    return combined


def write_combined(state: RunState, combined: CombinedResult, out_dir: Path) -> Path:
    from astropy.io import fits

    ref_hdr = _reference_header(state)
    hdr = fits.Header()
    if ref_hdr is not None:
        hdr.extend(ref_hdr, unique=True)
    hdr["TSVERS"] = (__version__, "tui-stack version")
    params = combined.params or combine_params(state.config, combined.method, state.files[state.ref_index])
    for key, _, value, comment in combine.method_parameters(params):
        hdr[key] = (value, comment)
    hdr["NCOMBINE"] = (combined.n_frames, "frames combined")
    hdr["TSREF"] = (state.files[state.ref_index].name, "reference frame")
    hdr["TSMODE"] = (state.config.shift_mode, "shift mode")
    hdr["TSWEIGHT"] = (state.config.weights if combined.weights else "none", "weights of the average")
    used = [fr for fr in state.frames if fr.used]
    weights = combined.weights or [None] * len(used)
    for k, (fr, wt) in enumerate(zip(used, weights), 1):
        hdr[f"IMCMB{k:03d}"] = fr.name
        hdr.add_history(
            f"{fr.name} shift=({fr.applied_shift_x:g},{fr.applied_shift_y:g}) sky={fr.sky:.2f} scale={fr.scale:.5f}"
            + (f" weight={wt:.5f}" if wt is not None else "")
        )
    path = out_dir / f"combined_{combined.method}.fits"
    hdus = [fits.PrimaryHDU(combined.data.astype(np.float32), hdr)] + (io.map_hdus(combined.maps) if combined.maps else [])
    io.write_fits_atomic(path, fits.HDUList(hdus))
    combined.path = path
    return path


def _reference_header(state: RunState):
    """The reference frame's descriptive keywords and WCS (the combined image and every
    resampled frame are on its grid). Read once per file version, not once per frame."""
    path = state.files[state.ref_index]
    return _reference_header_of(path, state.frames[state.ref_index].hdu_index, path.stat().st_mtime_ns).copy()


@lru_cache(maxsize=4)
def _reference_header_of(path: Path, hdu_index: int, mtime_ns: int):
    from astropy.io import fits

    with fits.open(path) as hdul:
        src = hdul[hdu_index].header
        keep = fits.Header()
        for key in ("OBJECT", "TELESCOP", "INSTRUME", "FILTER", "DATE-OBS", "EXPTIME", "GAIN", "RDNOISE"):
            if key in src:
                keep[key] = (src[key], src.comments[key])
        if not any(str(k).startswith("CTYPE") for k in src):
            return keep  # no WCS to carry (and astropy.wcs costs 0.2-0.4 s to import)
        try:
            import warnings

            from astropy.wcs import WCS

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # astropy's notes on fixing DATE-OBS etc.
                wcs = WCS(src)
            if wcs.has_celestial:
                keep.extend(wcs.to_header(), unique=True)
        except Exception:
            pass  # a broken WCS in the input is not worth failing the run for
    return keep


# ---------------------------------------------------------------- report


def report_dict(state: RunState) -> dict:
    ref = state.ref_star
    frames = []
    for fr in state.frames:
        frames.append(
            {
                "file": fr.name,
                "centroid_x": _nan_to_none(round(fr.centroid_x, 4)),
                "centroid_y": _nan_to_none(round(fr.centroid_y, 4)),
                "shift_x": _nan_to_none(round(fr.shift_x, 4)),
                "shift_y": _nan_to_none(round(fr.shift_y, 4)),
                "applied_shift_x": fr.applied_shift_x,
                "applied_shift_y": fr.applied_shift_y,
                "sky": _nan_to_none(round(fr.sky, 3)),
                "scale": _nan_to_none(round(fr.scale, 6)),
                "used": fr.used,
                "flags": list(fr.flags),
                "xcorr_shift_x": _nan_to_none(round(fr.xcorr_shift_x, 3)),
                "xcorr_shift_y": _nan_to_none(round(fr.xcorr_shift_y, 3)),
                "scale_mad": _nan_to_none(round(fr.scale_mad, 6)),
                "n_scale_stars": fr.n_scale_stars,
                "rotation_deg": _nan_to_none(round(fr.rotation, 5)),
                "transform": fr.transform,
                "flipped": fr.flipped,
                "n_matched": fr.n_matched,
                "fit_rms": _nan_to_none(round(fr.fit_rms, 4)),
                **_quality_entry(fr.quality),
            }
        )
    out = {
        "version": __version__,
        "reference": {
            "index": state.ref_index,
            "file": state.files[state.ref_index].name,
            "star": {"x": round(ref.x, 4), "y": round(ref.y, 4)} if ref else None,
        },
        "frames": frames,
    }
    if state.combined:
        chosen = [c for c in state.combined if c.method == state.config.method]
        c = chosen[0] if chosen else state.combined[-1]
        out["combined"] = _combined_entry(c)
        out["photometry"] = {
            "stars": [list(s) for s in c.photometry.stars],
            "reference_flux": [_nan_to_none(v) for v in c.photometry.reference_flux],
            "combined_flux": [_nan_to_none(v) for v in c.photometry.combined_flux],
            "ratio_median": _nan_to_none(c.photometry.ratio_median),
        }
        if len(state.combined) > 1:
            out["all_combined"] = [_combined_entry(x) for x in state.combined]
    return out


def _quality_entry(q) -> dict:
    if q is None:
        return {}
    return {
        "quality": {
            "noise": _nan_to_none(round(q.noise, 3)),
            "n_stars": q.n_stars,
            "fwhm": _nan_to_none(round(q.fwhm, 3)),
            "elongation": _nan_to_none(round(q.elongation, 3)),
            "transparency": _nan_to_none(round(q.transparency, 4)),
        }
    }


def _combined_entry(c: CombinedResult) -> dict:
    return {
        "file": c.path.name if c.path else f"combined_{c.method}.fits",
        "method": c.method,
        "n_frames": c.n_frames,
        "median": _nan_to_none(c.stats.median),
        "std": _nan_to_none(c.stats.std),
        "std_region": list(c.stats.region),
        "ratio_median": _nan_to_none(c.photometry.ratio_median),
        "parameters": {name: v for _, name, v, _ in combine.method_parameters(c.params)[1:]} if c.params else {},
        "weights": None if c.weights is None else [round(float(w), 6) for w in c.weights],
    }


# ---------------------------------------------------------------- outputs


def prepare_output_dir(state: RunState) -> Path:
    cfg = state.config
    out = cfg.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    try:
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".tui-stack-probe-")
        probe.close()
    except OSError as exc:
        raise InputError(f"{out}: output directory is not writable ({exc.strerror})") from None
    inputs = {p.resolve() for p in state.files}
    planned = [out / f"combined_{cfg.method}.fits", out / "report.json"]
    if cfg.write_shifted:
        planned += [out / f"s{p.name}" for p in state.files]
    for p in planned:
        if p.resolve() in inputs:
            raise InputError(f"{p}: output would overwrite an input file; choose another [output].directory")
    return out


def write_shifted_frames(state: RunState, directory: Path, progress: Progress = _noop) -> None:
    """s<name> for every frame that has a shift (a pass over the frames)."""
    todo = [i for i, fr in enumerate(state.frames) if _measurable(fr)]
    for k, i in enumerate(todo):
        progress("write shifted", k, len(todo))
        data, mask, header = prepared_frame(state, i)
        write_shifted(state, i, data, mask, header, directory / f"s{state.frames[i].name}")
    progress("write shifted", len(todo), len(todo))


def write_outputs(state: RunState, out: Path, progress: Progress = _noop, shifted_written: bool = False) -> None:
    """Shifted frames (if asked and not yet written), every combined image, report.json."""
    if state.config.write_shifted and not shifted_written:
        write_shifted_frames(state, out, progress)
    for c in state.combined:
        write_combined(state, c, out)
    io.write_text_atomic(out / "report.json", json.dumps(report_dict(state), indent=2) + "\n")


def _output_names(out: Path) -> set:
    return {p.name for p in out.iterdir() if p.name.startswith(("s", "combined_", "report.json"))}


def run(cfg: Config, progress: Progress = _noop) -> RunState:
    """The whole pipeline, writing the outputs of SPEC.md.

    If it stops half-way (Ctrl-C, disk full, bad frame), the outputs it had written are
    removed again: what is left in the output directory is a whole run or nothing new.
    """
    state = RunState(config=cfg)
    state.files = select(cfg)
    out = prepare_output_dir(state)
    before = _output_names(out)
    inputs = {p.name for p in state.files if p.parent == out}
    tmp = None
    engine = None
    if cfg.scheduler != compute.current().name:
        engine = compute.open_compute(cfg.scheduler, cfg.address, cfg.workers)
    try:
        with compute.using(engine or compute.current()):
            tmp = _run_steps(state, out, progress)
    except BaseException:
        for name in _output_names(out) - before - inputs:
            (out / name).unlink(missing_ok=True)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if engine is not None:
            engine.close()
    return state


def _run_steps(state: RunState, out: Path, progress: Progress):
    cfg = state.config
    tmp = None
    try:
        choose_reference(state, progress)
        register(state, progress)
        if cfg.write_shifted:
            shifted_dir = out
        elif cfg.shift_mode == "subpixel":
            tmp = Path(tempfile.mkdtemp(prefix=".tui-stack-tmp-", dir=out))
            shifted_dir = tmp
        else:
            shifted_dir = None
        # Shifted frames are written in the photometry pass: one read of each frame, not two.
        measure_scales(state, progress, shifted_dir)
        combine_frames(state, cfg.method, shifted_dir, progress)
        write_outputs(state, out, progress, shifted_written=True)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp
