"""Step 6, stack: the used frames combined by the chosen method, weighted and scaled, in row
blocks on the configured engine; then the result's statistics and photometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_stack import compute
from tui_stack.config import Config
from tui_stack.core import combine, io, photometry, stats
from tui_stack.core.combine_params import PARAMS
from tui_stack.errors import InputError
from tui_stack.pipeline import calibration
from tui_stack.pipeline.scale import other_stars
from tui_stack.pipeline.state import CombinedResult, Progress, RunState, noop


def combine_sources(state: RunState, shifted_dir: Path | None = None) -> list:
    """Row-block sources of the used frames, read from the original files: whole-pixel
    shifts (and a meridian flip) as slice offsets; subpixel shifts and transforms resampled
    inside each block (combine.WarpSource), so no resampled frame is written for the
    combine. `shifted_dir` is no longer read (kept for callers that still pass it)."""
    from tui_stack.pipeline.shift import frame_matrix, resampled

    sources = []
    for fr in state.frames:
        if not fr.used:
            continue
        if resampled(state, fr):
            # the frame's own shape (from its header): a quarter-turned frame may have another
            sources.append(calibration.warp_source(state, fr.path, fr.hdu_index, frame_matrix(state, fr), fr.sky,
                                                   fr.scale))
        else:
            sources.append(calibration.source(state, fr.path, fr.hdu_index, round(fr.applied_shift_x),
                                              round(fr.applied_shift_y), fr.sky, fr.scale, flip=fr.flipped))
    return sources


def header_number(value, path: Path, hdu_index: int = 0, setting: str = "[combine]") -> float:
    """A number from the config, or the value of the header keyword it names; `setting` is
    where the user gives it instead (the config's key, or `combine`'s flag)."""
    if not isinstance(value, str):
        return float(value)
    hdr = io.read_header(path, hdu_index)
    if value not in hdr or not isinstance(hdr[value], (int, float)):
        raise InputError(f"{path.name}: header keyword {value} (for ccdclip) is missing or not a number; "
                         f"give the value in {setting}")
    return float(hdr[value])


def combine_params(cfg: Config, method: str, ref_path: Path, sky: float = 0.0) -> combine.CombineParams:
    """The engine's parameters from [combine] (a header keyword named for gain or read noise
    read from the reference frame)."""
    values = {p.name: getattr(cfg.combine, p.name) for p in PARAMS if p.method_param and p.name != "sky"}
    values.update(method=method, sky=float(sky), gain=1.0, rdnoise=1.0)
    if method == "ccdclip":
        values["gain"] = header_number(cfg.combine.gain, ref_path, setting="[combine] gain")
        values["rdnoise"] = header_number(cfg.combine.rdnoise, ref_path, setting="[combine] rdnoise")
    return combine.CombineParams(**values)


def changed_since(state: RunState, cfg: Config) -> list[tuple[str, str]]:
    """(method, [combine] key) of each stack made with another value of a key its method uses
    than `cfg` has: written beside a config that says otherwise, `run` would not make it."""
    # not method and sky (per stack), nor gain and rdnoise (a header keyword in the config)
    keys = [p for p in PARAMS if p.method_param and p.name not in ("method", "sky", "gain", "rdnoise")]
    return [(c.method, p.name) for c in state.combined if c.params is not None for p in keys
            if c.method in p.methods and getattr(c.params, p.name) != getattr(cfg.combine, p.name)]


def exposure_times(paths, key: str) -> np.ndarray:
    """The exposure time of each frame from its header (primary or image HDU)."""
    values = []
    for path, idx in paths:
        hdr = io.read_header(path, idx)
        v = hdr.get(key, io.read_header(path, 0).get(key) if idx else None)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise InputError(f"{Path(path).name}: header keyword {key} is missing or not a positive number")
        values.append(float(v))
    return np.array(values)


def frame_weights(state: RunState, method: str) -> np.ndarray | None:
    """Weights of the used frames for the averaging methods (median takes none): the exposure
    time, or the inverse variance of the sky noise after scaling, 1 / (noise x scale)^2."""
    cfg = state.config
    used = [fr for fr in state.frames if fr.used]
    if cfg.combine.weights == "none" or method == "median":
        return None
    if cfg.combine.weights == "exposure":
        return exposure_times([(fr.path, fr.hdu_index) for fr in used], cfg.combine.exposure_key)
    noise = np.array([fr.noise * fr.scale for fr in used])
    if not np.all(np.isfinite(noise) & (noise > 0)):
        raise InputError("weights = \"noise\" needs the sky noise of every frame (measure the shifts first)")
    return 1.0 / noise**2


def combine_frames(
    state: RunState, method: str | None = None, shifted_dir: Path | None = None, progress: Progress = noop
) -> CombinedResult:
    cfg = state.config
    method = method or cfg.combine.method
    used = [fr for fr in state.frames if fr.used]
    if len(used) < 2:
        raise InputError(f"{'no usable frame' if not used else 'one usable frame (' + used[0].name + ')'} left to "
                         "combine: a stack needs two or more (see the flags of each frame, and [input] exclude)")
    params = combine_params(cfg, method, state.files[state.ref_index], np.median([fr.sky for fr in used]))
    try:
        params.check_frames(len(used))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    weights = frame_weights(state, method)
    progress(f"combine {method}", 0, state.shape[0])
    result = compute.current().combine(
        combine_sources(state, shifted_dir),
        params,
        memory_limit=cfg.combine.memory_limit,
        progress=lambda d, t: progress(f"combine {method}", d, t),
        maps=cfg.combine.maps,
        weights=weights,
    )
    st = stats.image_stats(result.data)
    comb_mask = ~np.isfinite(result.data)
    # measured as the frames were ([scale] method), so that "growth" compares total fluxes
    comb_data = np.where(comb_mask, 0.0, result.data)
    good = result.data[~comb_mask][:: max(1, int(comb_mask.size // 200_000))]
    noise = float(1.4826 * np.median(np.abs(good - np.median(good)))) if good.size else 1.0
    ref_fr = state.frames[state.ref_index]
    guess = ref_fr.psf_fwhm if np.isfinite(ref_fr.psf_fwhm) else 4.0
    comb_flux = photometry.measure_frame(comb_data, comb_mask, state.comparison_stars, cfg.scale.method,
                                         cfg.scale.aperture(), 0.0, noise, None, cfg.scale.annulus_radii(),
                                         fwhm_guess=guess, statistic=cfg.scale.sky_statistic(),
                                         discs=other_stars(state, None))
    ref_flux = state.frames[state.ref_index].star_flux
    phot = stats.compare_photometry(ref_flux, comb_flux.flux, state.comparison_stars)
    combined = CombinedResult(method, None, result.data, len(used), st, phot, result, params,
                              None if weights is None else list(weights / weights.sum()))
    state.combined = [c for c in state.combined if c.method != method] + [combined]
    return combined

