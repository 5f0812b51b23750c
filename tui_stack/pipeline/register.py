"""Step 3, registration: each frame located against the reference (cross-correlation), then
its shift (or similarity) fitted from many matched stars; duplicates and frames that do not
match are flagged and left out. The comparison stars are measured in the same pass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_stack import compute, limits
from tui_stack.config import Config
from tui_stack.core import quality, registration, shifting
from tui_stack.errors import InputError
from tui_stack.pipeline.reference import measure_frame, reference_star
from tui_stack.pipeline.scale import comparison_stars, early_photometry
from tui_stack.pipeline.select import excluded_indices
from tui_stack.pipeline.state import FrameResult, Progress, RunState, noop

MIN_XCORR_PEAK = 0.2  # below this the frame shares no star pattern with the reference
MIN_MATCHED = 5  # stars for a many-star shift; fewer: the reference star alone, flagged
MAX_FIT_RMS = 0.5  # px: the matched stars disagree, something is wrong with the frame
ROTATION_LIMIT_DEG = 0.05  # above this a shift alone leaves stars 0.2 px off at 250 px from the centre
# Subpixel mode: a turn that moves the outermost matched stars by more than this (px) is
# resampled as a turn, however small in degrees (0.05 deg moves the corners of a 4096 px frame
# by 2.5 px; a shift there blurs the stack's edges). Integer mode keeps the limit in degrees.
TURN_PX = 0.1
# flags of the shift path, dropped when the frame is registered by its star pattern instead
SHIFT_FLAGS = ("star_off_frame", "star_not_found", "methods_disagree", "few_matches", "poor_fit", "rotated",
               "meridian_flip")
NEEDS_SUBPIXEL = ('{what}: integer mode moves pixels whole and cannot turn by other than quarter turns, or '
                  'rescale; use [shift] mode = "subpixel"')
AHEAD_FRAMES = 2  # frames measured while the reference is prepared (64 MB each at 4k)


class _Ahead:
    """The first frames read and measured on a spare thread while the reference is being
    prepared on one core (its stars, the cross-correlation's transform, scipy's import):
    0.2-0.3 s of a 16-frame 4k run (A/B measured). Local engine only: Dask workers read their own."""

    def __init__(self, files: list[Path], cfg: Config, indices: list[int]):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1)
        self._futures = {i: self._pool.submit(measure_frame, files[i], cfg) for i in indices}

    def take(self, i: int):
        f = self._futures.pop(i, None)
        return None if f is None else f.result()

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True)


@dataclass
class _Reference:
    """The reference frame as every other frame is registered against it."""

    measured: tuple  # measure_frame's (frame, sky, sub, stars, quality), stars dropped
    star: registration.StarPosition
    xref: registration.XcorrReference
    reg_stars: np.ndarray  # (n, 2) stars matched in every frame, centroided in the reference
    weights: dict  # star -> its peak height: brighter centroids count more
    box: int
    method: str  # centroid method of the matched stars
    many: bool  # [shift] method = "stars"
    stars: object  # core.quality.Stars: the star list, for the pattern vote of turned frames
    excluded: set
    early: bool  # comparison stars known: measured in this pass
    header: object = None  # the reference's header, for the WCS first guess

    _wcs: object = False  # its celestial WCS (None: none), read the first time a frame needs it

    def wcs(self):
        if self._wcs is False:
            self._wcs = registration.celestial_wcs(self.header) if _has_wcs(self.header) else None
        return self._wcs


def _has_wcs(header) -> bool:
    """Cheap test before astropy.wcs is imported (0.2-0.4 s)."""
    return header is not None and "CTYPE1" in header and "CTYPE2" in header


def register(state: RunState, progress: Progress = noop) -> None:
    """Sky, quality, reference star and shift of every frame (one frame in memory at a time
    per thread, plus the frames measured ahead)."""
    progress("register", 0, len(state.files))  # started: the reference is prepared first
    ahead = None
    if compute.current().name == "local":
        ahead = _Ahead(state.files, state.config,
                       [i for i in range(len(state.files)) if i != state.ref_index][:AHEAD_FRAMES])
    try:
        ref = _prepare_reference(state)
        frames = compute.current().map_in_order(
            lambda i: _register_frame(state, ref, i, ahead.take(i) if ahead else None),
            range(len(state.files)), progress, "register")
        state.frames = list(frames)
    finally:
        if ahead is not None:
            ahead.close()
    _flag_duplicates(state)
    qs = [fr.quality for fr in state.frames]
    quality.flag_qualities(qs, areas=[fr.area for fr in state.frames])
    state.qualities = qs
    progress("register", len(state.files), len(state.files))


def _prepare_reference(state: RunState) -> _Reference:
    cfg = state.config
    ref_frame, ref_sky, ref_sub, ref_stars, ref_q = measure_frame(state.files[state.ref_index], cfg)
    name = ref_frame.path.name
    state.shape = ref_frame.shape
    limits.check_scale(cfg, state.shape)  # apertures measured in this pass: sizes checked first
    if not np.isfinite(ref_sky.level) or ref_stars is None or len(ref_stars) == 0:
        raise InputError(f"{name}: the reference frame has no stars; choose another reference frame")
    state.ref_stars = ref_stars
    star = reference_star(ref_sub, ref_frame.mask, ref_sky.noise, ref_sky.level, cfg, name, stars=ref_stars)
    state.set_reference_star(star)
    # Stars matched in every frame: the shift fit ("stars") and the rotation check. Centroided
    # in the reference exactly as they will be in each frame.
    many = cfg.shift.method == "stars"
    box = registration.star_box(star.fwhm)
    method = cfg.reference.centroid if many else "com"
    reg_stars = np.array(quality.pick_comparison_stars(ref_stars, state.shape, ref_sky.level, cfg.scale.saturation, 6,
                                                       80 if many else 16))
    reg_weights = np.array([])
    if len(reg_stars):
        reg_stars = registration.match_stars(ref_sub, ref_frame.mask, ref_sky.noise, reg_stars, 0.0, 0.0,
                                             search=7, box=box, method=method)[1]
        iy, ix = np.round(reg_stars[:, 1]).astype(int), np.round(reg_stars[:, 0]).astype(int)
        reg_weights = np.clip(ref_sub[iy, ix], 1.0, None)  # peak height: brighter centroids better
    early = False
    try:
        state.set_comparison_stars(comparison_stars(state, ref_sky.level))
        early = True
    except InputError:
        pass  # said again, with the frame's name, by the scale step
    return _Reference(
        measured=(ref_frame, ref_sky, ref_sub, None, ref_q), star=star,
        xref=registration.XcorrReference(ref_sub, ref_frame.mask, 0.0, ref_sky.noise), reg_stars=reg_stars,
        weights=dict(zip(map(tuple, reg_stars), reg_weights)), box=box, method=method, many=many, stars=ref_stars,
        excluded=excluded_indices(cfg, state.files), early=early, header=ref_frame.header,
    )


def _register_frame(state: RunState, ref: _Reference, i: int, measured=None) -> FrameResult:
    cfg = state.config
    path = state.files[i]
    fr = FrameResult(path=path)
    if i == state.ref_index:
        measured = ref.measured  # measured once, not twice
    frame, sky, sub, frame_stars, q = measured or measure_frame(path, cfg)
    fr.quality = q
    h, w = state.shape
    as_read = (sub, frame.mask, frame.shape)  # before any turn: what fr.transform maps onto
    if frame.shape != state.shape and ("no_data" in q.flags or frame_stars is None or len(frame_stars) < 5):
        # another shape is fine for a rescaled or turned frame, found by its stars; this has none
        raise InputError(f"{path.name}: shape {frame.shape[1]}x{frame.shape[0]} differs from the reference "
                         f"({w}x{h}) and the frame has too few stars to be registered by them")
    fr.hdu_index, fr.digest = frame.hdu_index, frame.digest
    fr.sky, fr.noise = sky.level, sky.noise
    if "no_data" in q.flags:
        fr.used = False
        fr.flags.append("no_data")
        return fr
    if i == state.ref_index:
        fr.centroid_x, fr.centroid_y = ref.star.x, ref.star.y
        fr.shift_x = fr.shift_y = fr.xcorr_shift_x = fr.xcorr_shift_y = 0.0
        fr.xcorr_peak = 1.0
    else:
        located = frame.shape == state.shape  # the cross-correlation needs the reference's shape
        if located:
            sub = _locate(fr, ref, frame, sub, sky.noise)
            located = fr.xcorr_peak >= MIN_XCORR_PEAK
        if located:
            _fit_shift(fr, ref, cfg, sub, frame.mask, sky.noise)
        if not located or (ref.many and ("few_matches" in fr.flags or "poor_fit" in fr.flags)):
            # turned, mirrored or rescaled beyond what the shift finds: the star patterns say how
            turn = _register_turned(fr, ref, state, frame, as_read, sky.noise, frame_stars, located)
            many_stars = q.n_stars >= max(5, ref.measured[4].n_stars / 4)
            if turn is not None:
                sub = turn
            elif not located or many_stars:
                # stars enough, but neither the shift nor the patterns match them: another field
                if frame.shape != state.shape:
                    raise InputError(f"{path.name}: shape {frame.shape[1]}x{frame.shape[0]} differs from the "
                                     f"reference ({w}x{h}) and no star pattern of the reference was found in it")
                # Clouded out (no stars), or another field (stars, but not the reference's).
                fr.used = False
                fr.flags = [f for f in fr.flags if f not in SHIFT_FLAGS]
                fr.flags.append("no_match" if many_stars else "no_stars")
        if cfg.shift.mode == "integer" and fr.used and "rotated" in fr.flags:
            _refuse_turn(fr)
    if fr.used or fr.transform is not None:
        if fr.transform is None and (abs(fr.shift_x) >= w or abs(fr.shift_y) >= h):
            fr.used = False
            fr.flags.append("shift_exceeds_frame")
        else:
            fr.applied_shift_x, fr.applied_shift_y = shifting.applied_shift(fr.shift_x, fr.shift_y, cfg.shift.mode)
    _to_contract(fr, as_read[2])
    if fr.transform is not None:
        full = registration.Affine.from_list(fr.transform)
        fr.rotation, fr.scale_ratio, fr.mirrored = full.rotation, full.scale, full.mirrored
    if i in ref.excluded:
        fr.used = False
        fr.flags.append("excluded")
    if ref.early:
        # a transform maps onto the frame as read: measured there, at where it puts the stars
        early_photometry(state, fr, *((as_read[0], as_read[1]) if fr.transform is not None else (sub, frame.mask)))
    return fr


def _register_turned(fr: FrameResult, ref: _Reference, state: RunState, frame, as_read, noise: float, frame_stars,
                     located: bool):
    """A frame the shift alone could not register: the first guess from the two WCSs or from
    the star patterns (any turn, a mirror, another plate scale), refined by the many-star fit.
    An exact quarter turn or mirror is undone losslessly and the frame then registered as any
    other; anything else is a transform (subpixel mode) or refused (integer mode). Returns the
    frame's pixels as registered, or None if no pattern was found (fr as the shift left it)."""
    cfg = state.config
    sub0, mask0, _ = as_read
    if frame_stars is None or len(frame_stars) < 5 or not len(ref.reg_stars):
        return None
    guess = None
    if _has_wcs(frame.header) and ref.wcs() is not None:
        fw = registration.celestial_wcs(frame.header)
        guess = None if fw is None else registration.wcs_transform(ref.wcs(), fw, state.shape)
    weights = [ref.weights[tuple(p)] for p in ref.reg_stars]
    g = registration.solve_geometry(sub0, mask0, noise, np.c_[ref.stars.x, ref.stars.y],
                                    np.c_[frame_stars.x, frame_stars.y], ref.reg_stars, weights,
                                    kind="affine" if cfg.shift.transform == "affine" else "similarity",
                                    method=ref.method, guess=guess, fwhm=ref.star.fwhm)
    if g.transform is None or g.fit is None or g.fit.n_used < MIN_MATCHED:
        return None
    if located and g.fit.rms > MAX_FIT_RMS:
        return None  # no better than the shift's own fit (a trailed frame, say): that stands
    tr = g.transform
    # the pattern's answer replaces the shift's
    fr.flags = [f for f in fr.flags if f not in SHIFT_FLAGS]
    fr.flipped, fr.transform, fr.first_guess = False, None, g.source
    fr.rotation, fr.scale_ratio, fr.mirrored = tr.rotation, tr.scale, tr.mirrored
    turn = registration.dihedral_part(tr, ROTATION_LIMIT_DEG)
    if turn is not None:
        # exact: the frame turned back (array views; a non-square one cut or padded to the
        # reference's shape, pixel (0, 0) kept) and registered as any other frame
        frame.data, frame.mask = registration.on_shape(registration.reorient(sub0, turn),
                                                       registration.reorient(mask0, turn), state.shape)
        fr.xcorr_shift_x = fr.xcorr_shift_y = fr.xcorr_peak = float("nan")
        sub = _locate(fr, ref, frame, frame.data, noise)
        if fr.xcorr_peak >= MIN_XCORR_PEAK and not fr.flipped:
            if np.array_equal(turn, -np.eye(2)):  # a meridian flip the correlation missed: as one it found
                fr.flipped = True
                fr.flags.append("meridian_flip")
            else:
                fr.orientation = turn.tolist()
                if not np.array_equal(turn, np.eye(2)):  # not a frame of another size, merely
                    fr.flags.append("mirrored" if fr.mirrored else "turned")
            _fit_shift(fr, ref, cfg, sub, frame.mask, noise)
            if "few_matches" not in fr.flags:
                return sub
        fr.flags = [f for f in fr.flags if f not in SHIFT_FLAGS + ("mirrored", "turned")]
        fr.flipped, fr.orientation = False, None
    # any other turn, a mirror with a turn, another plate scale: one transform from every star
    fit = g.fit
    fr.transform = tr.as_list()
    fr.n_matched, fr.fit_rms = fit.n_used, fit.rms
    if fit.pairs is not None:
        fr.residuals = _residual_table(fit.pairs[0], fit.pairs[1] - tr.apply(fit.pairs[0]))
    h, w = state.shape
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    fr.shift_x, fr.shift_y = (centre - tr.apply(centre)[0]).tolist()  # that of the field centre
    fr.centroid_x, fr.centroid_y = tr.apply([ref.star.x, ref.star.y])[0].tolist()  # the reference star there
    fr.used = True
    fr.flags = [f for f in fr.flags if f not in ("no_match", "no_stars")]
    if abs(fr.rotation) > ROTATION_LIMIT_DEG:
        fr.flags.append("rotated")
    if fr.mirrored:
        fr.flags.append("mirrored")
    if abs(fr.scale_ratio - 1) > 1e-3:
        fr.flags.append("rescaled")
    if fit.rms > MAX_FIT_RMS:
        fr.flags.append("poor_fit")
    if cfg.shift.mode == "integer":
        if {"rotated", "mirrored", "rescaled"} & set(fr.flags):
            _refuse_turn(fr)
        else:  # within what a shift does (the WCS or the patterns found a frame with few stars): one, rounded
            fr.transform = None
    return sub0


def _refuse_turn(fr: FrameResult) -> None:
    """Integer mode cannot turn a frame by other than quarter turns, nor rescale it."""
    fr.used = False
    fr.flags.append("needs_subpixel")
    what = [f"turned by {fr.rotation:.3f} deg"] if abs(fr.rotation) > ROTATION_LIMIT_DEG else []
    if fr.mirrored:
        what.append("mirrored")
    if abs(fr.scale_ratio - 1) > 1e-3:
        what.append(f"scale ratio {fr.scale_ratio:.4f}")
    fr.message = NEEDS_SUBPIXEL.format(what=", ".join(what) or "turned")


def _to_contract(fr: FrameResult, shape_read) -> None:
    """fr.transform onto the frame as read (the contract) where the frame was registered turned
    back: a lossless quarter turn or mirror (integer mode: with the integer shift applied), or a
    meridian flip with a similarity fitted on the frame turned back."""
    turn = None if fr.orientation is None else np.asarray(fr.orientation, float)
    if turn is None and fr.flipped and fr.transform is not None:
        turn = -np.eye(2)
    if turn is None:
        return
    local = (registration.Affine.from_list(fr.transform) if fr.transform is not None
             else registration.Affine.shift(fr.applied_shift_x, fr.applied_shift_y))
    to_frame = registration.Affine(turn, registration.reorient_offset(turn, shape_read))
    fr.transform = local.then(to_frame).as_list()
    fr.flipped = False  # the transform says it all


def _locate(fr: FrameResult, ref: _Reference, frame, sub: np.ndarray, noise: float) -> np.ndarray:
    """The cross-correlation's offset (and whether the frame is turned by 180 degrees); returns
    the frame's pixels the right way round."""
    prepared = ref.xref.prepare(sub, frame.mask, 0.0, noise)
    dx, dy, peak = ref.xref.offset(prepared)
    # A meridian flip turns the frame by 180 degrees: it then matches the reference better
    # turned back than as it is. Turning it back is exact (no resampling): the frame is read
    # reversed on both axes from here on. A correlation is at most 1, so from a straight
    # peak of 0.5 up the turned one cannot win: not computed then.
    fx, fy, fpeak = ref.xref.offset(prepared, flip=True) if peak < 0.5 else (0.0, 0.0, 0.0)
    if fpeak > 2 * max(peak, 0.0) and fpeak >= MIN_XCORR_PEAK:
        fr.flipped = True
        fr.flags.append("meridian_flip")
        frame.data, frame.mask, sub = frame.data[::-1, ::-1], frame.mask[::-1, ::-1], sub[::-1, ::-1]
        dx, dy, peak = fx, fy, fpeak
    fr.xcorr_shift_x, fr.xcorr_shift_y, fr.xcorr_peak = dx, dy, peak
    return sub


def _fit_shift(fr: FrameResult, ref: _Reference, cfg: Config, sub, mask, noise: float) -> None:
    """The reference star's shift, then the many-star fit around the cross-correlation's
    estimate (a wrong one-star centroid, a brighter neighbour, cannot mislead it), the
    rotation check and, for turned frames, the similarity."""
    dx, dy = fr.xcorr_shift_x, fr.xcorr_shift_y
    res = registration.measure_frame_shift(sub, mask, noise, ref.star, dx, dy, cfg.reference.centroid,
                                           ref.xref.binning)
    fr.centroid_x, fr.centroid_y = res.centroid_x, res.centroid_y
    fr.shift_x, fr.shift_y = res.shift_x, res.shift_y
    fr.flags.extend(res.flags)
    search = 2 * (2 + ref.xref.binning) + 1
    ref_pts, pts = registration.match_stars(sub, mask, noise, ref.reg_stars, dx, dy, search=search, box=ref.box,
                                            method=ref.method)
    fit = registration.fit_translation(ref_pts, pts, [ref.weights[tuple(p)] for p in ref_pts])
    fr.n_matched, fr.fit_rms = fit.n_used, fit.rms
    if np.isfinite(fit.dx):
        fr.residuals = _residual_table(ref_pts, pts - (ref_pts - [fit.dx, fit.dy]))
    if ref.many and fit.n_used >= MIN_MATCHED:
        fr.shift_x, fr.shift_y = fit.dx, fit.dy
        fr.flags = [f for f in fr.flags if f not in ("star_off_frame", "star_not_found", "methods_disagree")]
        if np.isfinite(res.shift_x) and np.hypot(res.shift_x - fit.dx, res.shift_y - fit.dy) > 1.0:
            fr.flags.append("methods_disagree")  # the reference star alone says otherwise
        if fit.rms > MAX_FIT_RMS:
            fr.flags.append("poor_fit")
    elif ref.many:
        fr.flags.append("few_matches")
    if ("star_off_frame" in fr.flags or "star_not_found" in fr.flags) and fit.n_used >= 3:
        fr.shift_x, fr.shift_y = fit.dx, fit.dy  # the reference star is not there: the others stand in
    fr.rotation, rot_err = registration.fit_rotation(ref_pts, pts)
    if np.isfinite(fr.rotation) and abs(fr.rotation) > max(ROTATION_LIMIT_DEG, 4 * rot_err):
        fr.flags.append("rotated")
    h, w = sub.shape
    reach = np.hypot(*(np.asarray(ref_pts, float).reshape(-1, 2) - [(w - 1) / 2, (h - 1) / 2]).T).max(initial=0.0)
    small_turn = (cfg.shift.mode == "subpixel" and np.isfinite(fr.rotation) and abs(fr.rotation) > 4 * rot_err
                  and np.radians(abs(fr.rotation)) * reach > TURN_PX)
    if ref.many and (cfg.shift.transform in ("similarity", "affine") or "rotated" in fr.flags or small_turn
                     or "few_matches" in fr.flags or "poor_fit" in fr.flags):
        # turned frames: the shift alone matches few stars, or finds a rotation, or fits them
        # poorly (a turn below ROTATION_LIMIT_DEG still moves the corners of a wide frame by
        # a pixel): the similarity from the same stars, before any pattern search
        _fit_similarity(fr, sub, mask, noise, ref.reg_stars, ref.weights, search, ref.box, ref.method, (w, h),
                        apply=cfg.shift.mode == "subpixel" and cfg.shift.transform != "translation")
        if cfg.shift.transform == "affine" and fr.transform is not None:
            # optics with a scale of their own along each axis: the similarity refined to an affine map
            fit = registration.refine_transform(sub, mask, noise, ref.reg_stars, registration.Affine.from_list(
                fr.transform), kind="affine", weights=[ref.weights[tuple(p)] for p in ref.reg_stars],
                search=search, box=ref.box, method=ref.method, iterations=1)
            if fit.ok and fit.n_used >= MIN_MATCHED:
                fr.transform, fr.n_matched, fr.fit_rms = fit.transform.as_list(), fit.n_used, fit.rms
                fr.residuals = _residual_table(fit.pairs[0], fit.pairs[1] - fit.transform.apply(fit.pairs[0]))


def _flag_duplicates(state: RunState) -> None:
    """The same exposure under two names is used once."""
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


def _residual_table(ref_pts: np.ndarray, resid: np.ndarray) -> list:
    """[x, y, dx, dy] per matched star: where it is in the reference, and how far its measured
    position in the frame lies from where the fit puts it (px)."""
    return np.round(np.column_stack([ref_pts, resid]), 4).tolist()


def _fit_similarity(fr: FrameResult, sub, mask, noise, reg_stars, weights: dict, search: int, box: int,
                    method: str, size: tuple[int, int], apply: bool) -> None:
    """Rotation + scale + shift from every registration star. The shift alone misplaces the
    outer stars of a turned frame, so the fit grows outwards from the centre: stars within a
    quarter, then half, then all of the field, each ring found where the fit so far puts it.
    A rotation found is flagged; with `apply` (subpixel mode) the frame is resampled by it."""
    w, h = size
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    dist = np.hypot(*(reg_stars - centre).T)
    reach = dist.max() if len(dist) else 0.0
    sim = registration.SimilarityFit(1 + 0j, complex(-fr.shift_x, -fr.shift_y), 0, 0, float("nan"))
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
    fr.transform = registration.Affine.from_list(sim.as_list()).as_list()  # the contract's 6 numbers
    fr.n_matched, fr.fit_rms = sim.n_used, sim.rms
    fr.residuals = _residual_table(ref_pts, pts - sim.apply(ref_pts))
    # the shift reported is that of the field centre
    moved = sim.apply(centre[None])[0]
    fr.shift_x, fr.shift_y = float(centre[0] - moved[0]), float(centre[1] - moved[1])
    fr.flags = [f for f in fr.flags if f not in ("poor_fit", "few_matches", "star_off_frame", "star_not_found",
                                                 "methods_disagree")]
    if sim.rms > MAX_FIT_RMS:
        fr.flags.append("poor_fit")

