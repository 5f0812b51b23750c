"""The run state: what has been chosen and measured so far, and what depends on what.

Choices are made through RunState's methods, never by assigning the fields, so a changed
choice clears exactly what was measured from the old one:

    files -> reference frame -> reference star -> shifts (frames) -> scales -> combined
                                 comparison stars ----------------> scales -> combined

`run` fills it in one go; the wizard step by step; both through the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tui_stack.config import Config
from tui_stack.core import registration, stats

Progress = Callable[[str, int, int], None]

# flags of a frame with no usable shift: it cannot be shifted, measured or stacked
UNMEASURABLE = ("no_data", "no_stars", "no_match", "shift_exceeds_frame", "duplicate", "needs_subpixel")


def noop(stage, done, total):
    pass


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
    # how the scale was measured ([scale] method "growth": the frame's own PSF and the
    # aperture correction it gives; NaN with "fixed")
    psf_fwhm: float = float("nan")  # px, of the Moffat fitted to the comparison stars
    psf_beta: float = float("nan")  # its wing index (small: broad wings)
    aperture_radius: float = float("nan")  # px
    aperture_correction: float = float("nan")  # total flux / (aperture sum - annulus sky)
    scale_error: float = float("nan")  # 1-sigma, from the star ratios and the two PSF fits
    scale_spread: float = float("nan")  # scatter of the star ratios / their noise (1: noise alone)
    rotation: float = float("nan")  # degrees, from matching stars after the shift
    # reference -> frame as read, [a, b, c, d, e, f] (notes/TRANSFORM_CONTRACT): a similarity or
    # affine fit (subpixel), or an exact quarter turn / mirror with the shift; None: shift only
    transform: list | None = None
    scale_ratio: float = 1.0  # frame px per reference px (2x2 binning: 0.5)
    mirrored: bool = False  # the frame is the reference's mirror image (a diagonal, another camera)
    first_guess: str = ""  # "pattern" or "wcs" where a shift alone could not register the frame
    message: str = ""  # why the frame was left out, where a flag alone does not say what to do
    orientation: object = None  # 2x2: the exact quarter turn or mirror undone before the shift fit
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

    @property
    def area(self) -> float:
        """Frame pixels per reference pixel (a 2x2-binned frame: 0.25; 1 without a transform)."""
        return registration.Affine.from_list(self.transform).area if self.transform is not None else 1.0


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


def measurable(fr: FrameResult) -> bool:
    """The frame has a shift, so it can be shifted and measured (used or not)."""
    return not any(f in fr.flags for f in UNMEASURABLE)


@dataclass
class RunState:
    """Everything measured so far. Read the fields; change choices with the methods."""

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
    calibration: object = None  # core.calibrate.Calibration of the lights, when [calibrate] has frames
    skipped: list = field(default_factory=list)  # (path, reason): files [input] exclude names that cannot be read
    output_notes: list = field(default_factory=list)  # what tidying the output directory could not do

    # ------------------------------------------------ choices, each clearing what depends on it

    def set_files(self, files: list[Path]) -> None:
        files = list(files)
        if files == self.files:
            return
        self.files = files
        self.ref_index, self.qualities, self.shape = 0, [], (0, 0)
        self._reference_changed()

    def set_reference_frame(self, index: int) -> None:
        if not 0 <= index < len(self.files):
            raise IndexError(f"reference frame {index} outside 0..{len(self.files) - 1}")
        if index != self.ref_index:
            self.ref_index = index
            self._reference_changed()

    def set_reference_star(self, star: registration.StarPosition | None) -> None:
        """Another star (or none yet): the shifts, and so the scales and stacks, are measured again."""
        same = (star is not None and self.ref_star is not None
                and np.hypot(star.x - self.ref_star.x, star.y - self.ref_star.y) <= 0.01)
        if not same:
            self.ref_star = star
            self.frames, self.combined = [], []

    def set_comparison_stars(self, stars: list) -> None:
        stars = [tuple(map(float, s)) for s in stars]
        if stars == self.comparison_stars:
            return
        self.comparison_stars = stars
        self.clear_scales()

    def clear_scales(self) -> None:
        """The scales are measured again (other stars, another aperture): those of before, and
        the stacks made with them, go."""
        for fr in self.frames:
            fr.scale, fr.scale_mad, fr.n_scale_stars, fr.star_flux, fr.star_flags = float("nan"), float("nan"), 0, [], []
            fr.scale_error = fr.scale_spread = float("nan")
            if "stars_disagree" in fr.flags:
                fr.flags.remove("stars_disagree")
            if "no_comparison_star" in fr.flags:
                fr.flags.remove("no_comparison_star")
                fr.used = "excluded" not in fr.flags
        self.combined = []

    def set_used(self, index: int, used: bool) -> bool:
        """Skip a frame or take it back; a frame without a shift cannot be taken back.
        The stacks made with the old set are dropped. Returns whether the frame is used."""
        fr = self.frames[index]
        if used:
            if "excluded" in fr.flags:
                fr.flags.remove("excluded")
            fr.used = measurable(fr) and "no_comparison_star" not in fr.flags
        else:
            if "excluded" not in fr.flags:
                fr.flags.append("excluded")
            fr.used = False
        self.combined = []
        return fr.used

    def _reference_changed(self) -> None:
        self.ref_star, self.ref_stars, self.comparison_stars = None, None, []
        self.frames, self.combined = [], []

    def measured_otherwise(self, config: Config) -> str | None:
        """Which tables were measured under other settings than `config`'s: "shifts" (another
        [shift].mode: the applied shifts say which), "scales" (another [scale] method or radius:
        the PSF and aperture of each measured frame say which), or None. A saved session whose
        setting changed and whose re-measure was cut is measured again, not mixed."""
        from tui_stack.core import shifting

        for fr in self.frames:
            if fr.used and np.isfinite(fr.shift_x) and np.isfinite(fr.shift_y):
                want = shifting.applied_shift(fr.shift_x, fr.shift_y, config.shift.mode)
                if not np.allclose((fr.applied_shift_x, fr.applied_shift_y), want, rtol=0, atol=1e-9):
                    return "shifts"
        measured = [fr for fr in self.frames if fr.star_flux]
        if measured:
            growth = any(np.isfinite(fr.psf_fwhm) for fr in measured)
            r = config.scale.aperture()
            if growth != (config.scale.method == "growth") or (r is not None and any(
                    np.isfinite(fr.aperture_radius) and abs(fr.aperture_radius - r) > 1e-9 for fr in measured)):
                return "scales"
        return None

    # ------------------------------------------------ what is there

    @property
    def used_frames(self) -> list[FrameResult]:
        return [fr for fr in self.frames if fr.used]

    @property
    def has_shifts(self) -> bool:
        return bool(self.frames)

    @property
    def has_scales(self) -> bool:
        return any(np.isfinite(fr.scale) for fr in self.frames)
