"""report.json (SPEC.md): every frame's measurements and flags, the stack and its photometry."""

from __future__ import annotations

import math

from tui_stack import __version__
from tui_stack.core import combine
from tui_stack.pipeline.state import CombinedResult, RunState


def _nan_to_none(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v



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
                **({"message": fr.message} if fr.message else {}),
                "xcorr_shift_x": _nan_to_none(round(fr.xcorr_shift_x, 3)),
                "xcorr_shift_y": _nan_to_none(round(fr.xcorr_shift_y, 3)),
                "scale_mad": _nan_to_none(round(fr.scale_mad, 6)),
                "n_scale_stars": fr.n_scale_stars,
                "scale_error": _nan_to_none(round(fr.scale_error, 6)),
                "scale_spread": _nan_to_none(round(fr.scale_spread, 3)),
                "psf_fwhm": _nan_to_none(round(fr.psf_fwhm, 3)),
                "psf_beta": _nan_to_none(round(fr.psf_beta, 3)),
                "aperture_radius": _nan_to_none(round(fr.aperture_radius, 3)),
                "aperture_correction": _nan_to_none(round(fr.aperture_correction, 5)),
                "rotation_deg": _nan_to_none(round(fr.rotation, 5)),
                "transform": fr.transform,
                "scale_ratio": round(fr.scale_ratio, 7),
                "mirrored": fr.mirrored,
                "first_guess": fr.first_guess or None,
                "flipped": fr.flipped,
                "n_matched": fr.n_matched,
                "fit_rms": _nan_to_none(round(fr.fit_rms, 4)),
                "residuals": fr.residuals,  # [x, y, dx, dy] of each matched star after the fit, px
                **_quality_entry(fr.quality),
            }
        )
    out = {
        "version": __version__,
        # which data set these are: a later `w` into this folder asks before replacing them
        # with another's (pipeline.outputs.other_input)
        "input": {"directory": str(state.config.input.directory)},
        "reference": {
            "index": state.ref_index,
            "file": state.files[state.ref_index].name,
            "star": {"x": round(ref.x, 4), "y": round(ref.y, 4)} if ref else None,
        },
        "frames": frames,
    }
    if state.skipped:  # files named in [input] exclude that cannot be read: not frames of the run
        out["skipped"] = [{"file": p.name, "flags": ["excluded", "unreadable"], "reason": why} for p, why in state.skipped]
    if state.combined:
        chosen = [c for c in state.combined if c.method == state.config.combine.method]
        c = chosen[0] if chosen else state.combined[-1]
        out["combined"] = _combined_entry(c)
        out["photometry"] = {
            "scale_method": state.config.scale.method,
            "stars": [list(s) for s in c.photometry.stars],
            "reference_flux": [_nan_to_none(v) for v in c.photometry.reference_flux],
            "combined_flux": [_nan_to_none(v) for v in c.photometry.combined_flux],
            "ratio_median": _nan_to_none(c.photometry.ratio_median),
        }
        if len(state.combined) > 1:
            out["all_combined"] = [_combined_entry(x) for x in state.combined]
    if state.config.calibrate.any:
        from tui_stack.pipeline.calibration import report

        out["calibration"] = report(state)
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

