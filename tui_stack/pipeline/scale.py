"""Step 4, scale: comparison-star photometry in every frame and the scale against the reference,
then the quality flags of the whole set.

[scale] method "growth": total fluxes from aperture sums and each frame's own PSF
(core.photometry.measure_frame), scale = noise-weighted clipped mean of reference / frame flux;
"fixed" (default, SPEC.md): the lab's fixed aperture, scale = median of the star ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_stack import compute, limits
from tui_stack.core import photometry, quality, registration
from tui_stack.config import FIXED_RADIUS
from tui_stack.errors import InputError
from tui_stack.pipeline.reference import measure_frame
from tui_stack.pipeline.shift import own_pixels, prepared_frame, write_shifted
from tui_stack.pipeline.state import FrameResult, Progress, RunState, measurable, noop


FEW_SCALE_STARS = "few_scale_stars"  # a scale from 1 or 2 of 3 or more comparison stars: no check on either


def comparison_stars(state: RunState, ref_sky: float) -> list:
    """The config's comparison stars, or (stars = "auto") those picked on the reference frame.
    No margin for the shifts: a star off one frame is flagged there and left out of that
    frame's scale only."""
    cfg = state.config
    if cfg.scale.stars != "auto":
        return [tuple(s) for s in cfg.scale.stars]
    # isolated over the lab's aperture whatever the method: a neighbour biases a ratio as the seeing changes
    # and twice the lab's 30 stars with "growth": its scale is noise-limited (0.11% -> 0.08% RMS
    # on the 1024^2 sets of benchmarks/run.py --scales)
    isolation = cfg.scale.aperture() or FIXED_RADIUS
    n_max = 60 if cfg.scale.method == "growth" else 30
    stars = quality.pick_comparison_stars(state.ref_stars, state.shape, ref_sky, cfg.scale.saturation, isolation, n_max)
    if not stars:
        raise InputError(
            f"{state.files[state.ref_index].name}: no bright, unsaturated, isolated comparison star found for "
            '[scale].stars = "auto"; give a list of [x, y] or a smaller [scale].radius'
        )
    return stars

def comparison_star_at(sub: np.ndarray, noise: float, x: float, y: float) -> tuple[float, float] | None:
    """The star nearest (x, y) within a small box on the sky-subtracted reference (NaN: no data),
    as a comparison star chosen by hand; None where there is none."""
    star = registration.locate_reference_star(np.nan_to_num(sub), ~np.isfinite(sub), x, y, 15, "com", noise)
    return None if star is None else (round(star.x, 2), round(star.y, 2))


def _photometry_key(state: RunState, fr: FrameResult) -> tuple:
    """What a frame's comparison-star fluxes depend on besides its pixels."""
    cfg = state.config
    return (tuple(map(tuple, state.comparison_stars)), cfg.scale.method, cfg.scale.radius, cfg.scale.annulus_radii(),
            cfg.scale.saturation, cfg.scale.sky, fr.applied_shift_x, fr.applied_shift_y, fr.sky, fr.flipped,
            tuple(fr.transform or ()))


def _measure(state: RunState, fr: FrameResult, data: np.ndarray, mask: np.ndarray, at,
             area: float = 1.0) -> photometry.StarFluxes:
    """The comparison stars at `at` in one sky-subtracted frame, by the config's method.
    `area`: the frame's pixels per reference pixel (a binned or rescaled frame measured on its
    own pixels): the apertures cover the same sky as in the reference, and the fluxes come
    back as the frame resampled onto the reference grid has them (its own / area), which is
    what the scale multiplies."""
    cfg = state.config
    guess = fr.quality.fwhm if fr.quality is not None and np.isfinite(fr.quality.fwhm) else 4.0
    radius, annulus = cfg.scale.aperture(), cfg.scale.annulus_radii()
    if area != 1.0:
        k = float(np.sqrt(area))
        radius = None if radius is None else radius * k
        annulus = tuple(r * k for r in annulus) if isinstance(annulus, tuple) else annulus
    # integer shifts: each aperture sits where the rounded shift puts it, the star where the
    # measured one does (a shift's fraction off; transforms and subpixel shifts: on the star)
    offset = (0.0, 0.0)
    if fr.transform is None and not fr.flipped:
        off = (fr.applied_shift_x - fr.shift_x, fr.applied_shift_y - fr.shift_y)
        offset = off if all(np.isfinite(off)) and max(map(abs, off)) <= 1 else offset
    fluxes = photometry.measure_frame(data, mask, at, cfg.scale.method, radius, fr.sky, fr.noise,
                                      cfg.scale.saturation, annulus, fwhm_guess=guess, offset=offset,
                                      statistic=cfg.scale.sky_statistic(), discs=other_stars(state, fr))
    if area != 1.0:
        fluxes.flux = fluxes.flux / area
        fluxes.error = None if fluxes.error is None else fluxes.error / area
        fluxes.radius = fluxes.radius / np.sqrt(area)  # in reference pixels, as every frame's
    return fluxes

def other_stars(state: RunState, fr: FrameResult | None) -> np.ndarray | None:
    """The reference's stars as discs an annulus mean leaves out, where `fr` has them on its
    own pixels (None: on the reference grid, as the stack): chosen once, the same in every
    frame, so the sky stays linear in each frame's data. None where the sky is a median."""
    stars = state.ref_stars
    if state.config.scale.sky_statistic() != "mean" or stars is None or not len(stars) or not np.isfinite(stars.noise):
        return None
    discs = photometry.star_discs(stars.x, stars.y, stars.peak, float(np.nanmedian(stars.fwhm)), stars.noise)
    if fr is None:
        return discs
    if fr.transform is not None:
        tr = registration.Affine.from_list(fr.transform)
        return np.c_[tr.apply(discs[:, :2]), discs[:, 2] * np.sqrt(tr.area)]
    return np.c_[discs[:, :2] - [fr.applied_shift_x, fr.applied_shift_y], discs[:, 2]]


def own_photometry(state: RunState, fr: FrameResult, sub: np.ndarray, mask: np.ndarray) -> photometry.StarFluxes:
    """The comparison stars measured on the frame's own pixels (sky-subtracted, as read) at
    where the registration puts them. Integer shifts: the same apertures on the same pixels as
    in the shifted frame (an aperture off the frame is off the shifted frame too). Subpixel
    shifts and rotations: the apertures sit at fractional positions (photutils' exact overlap)
    on pixels never interpolated, so a resampling's smoothing cannot bias the flux ratios."""
    ref_xy = np.array(state.comparison_stars, float)
    area = 1.0
    if fr.transform is not None:  # on the frame as read (integer mode: a lossless turn, the same pixels)
        tr = registration.Affine.from_list(fr.transform)
        at, area = tr.apply(ref_xy), tr.area
    else:
        at = ref_xy - [fr.applied_shift_x, fr.applied_shift_y]
    return _measure(state, fr, sub, mask, [tuple(p) for p in at], area)


def early_photometry(state: RunState, fr: FrameResult, sub: np.ndarray, mask: np.ndarray) -> None:
    """Measure the comparison stars while the frame is in memory for registration: the scale
    pass need not read it again."""
    if not state.comparison_stars or not fr.used:
        return
    fr.early_fluxes = (_photometry_key(state, fr), own_photometry(state, fr, sub, mask))

def measure_scales(state: RunState, progress: Progress = noop, shifted_dir: Path | None = None) -> None:
    """Comparison-star photometry in each shifted frame and the scale against the reference.

    With `shifted_dir`, each prepared frame is also written there as s<name>.
    """
    cfg = state.config
    progress("scale", 0, len(state.frames))
    ref_fr = state.frames[state.ref_index]
    if cfg.scale.stars == "auto" and state.ref_stars is None:  # a resumed session keeps tables, not star lists
        _, _, _, state.ref_stars, _ = measure_frame(ref_fr.path, cfg)
    state.set_comparison_stars(comparison_stars(state, ref_fr.sky))
    state.clear_scales()  # the same stars in another aperture: nothing of the last measure stays
    limits.check_scale(cfg, state.shape, len(state.comparison_stars))
    n = len(state.frames)

    def photometry_of(i: int):
        fr = state.frames[i]
        if not measurable(fr):
            return None
        early = getattr(fr, "early_fluxes", None)
        fluxes = early[1] if early is not None and early[0] == _photometry_key(state, fr) else None
        if fluxes is None:  # another method, radius or star list than the registration pass had
            fluxes = own_photometry(state, fr, *own_pixels(state, i))
        if shifted_dir is not None:
            data, mask, header = prepared_frame(state, i)
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
        sc = photometry.scale_of(ref_fluxes, fluxes)
        fr.scale, fr.scale_mad, fr.n_scale_stars = sc.scale, sc.mad, sc.n_used
        fr.scale_error, fr.scale_spread = sc.error, sc.spread
        fr.psf_fwhm, fr.psf_beta, fr.aperture_radius = fluxes.fwhm, fluxes.beta, fluxes.radius
        fr.aperture_correction = 1 / fluxes.fraction if fluxes.method == "growth" else float("nan")
        fr.flags = [f for f in fr.flags if f not in (photometry.STARS_DISAGREE, FEW_SCALE_STARS)] + sc.flags
        if 0 < sc.n_used < 3 <= len(state.comparison_stars):  # the others saturated, off the frame, crowded
            fr.flags.append(FEW_SCALE_STARS)
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
    quality.flag_qualities(qs, [fr.scale for fr in state.frames], [fr.area for fr in state.frames])
    for fr in state.frames:
        fr.flags = [f for f in fr.flags if f not in quality.QUALITY_FLAGS] + fr.quality.flags

