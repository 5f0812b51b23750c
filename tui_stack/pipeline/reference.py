"""Step 2, the reference: which frame (given or the sharpest and clearest) and which star on it.

`reference_star` is the one place a reference star is picked, located and judged usable,
for `run` and for the wizard's Reference screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_stack.config import Config
from tui_stack.core import background, quality, registration
from tui_stack.errors import InputError
from tui_stack.pipeline import calibration
from tui_stack.pipeline.select import excluded_indices, resolve_reference
from tui_stack.pipeline.state import Progress, RunState, noop


def measure_frame(path: Path, cfg: Config):
    """Read a frame, its sky and its stars: what every per-frame step starts from. The sky
    is taken off in place, so `frame.data` is the sky-subtracted `sub` (the frame's digest is
    of the pixels as read)."""
    frame = calibration.read_frame(path, cfg)
    frame.digest = frame.pixel_digest()
    sky = background.estimate_sky(frame.data, frame.mask, cfg.reference.sky)
    if np.isfinite(sky.level):
        frame.data -= np.float32(sky.level)  # in place: no second 64 MB frame per 4k frame in flight
    sub = frame.data
    if np.isfinite(sky.level) and sky.noise > 0:
        stars = quality.find_stars(sub, frame.mask, sky.noise)
        q = quality.frame_quality(stars, sky.level, sky.noise, cfg.scale.saturation)
    else:
        stars, q = None, quality.FrameQuality(sky.level, sky.noise, 0, float("nan"), float("nan"), 0.0, flags=["no_data"])
    return frame, sky, sub, stars, q


def sky_subtracted(path: Path, cfg: Config) -> tuple[np.ndarray, float]:
    """A frame less its sky, NaN where it has no data, and its noise: what previews show."""
    frame = calibration.read_frame(path, cfg)
    sky = background.estimate_sky(frame.data, frame.mask, cfg.reference.sky)
    img = frame.data
    img -= np.float32(sky.level)
    img[frame.mask] = np.nan
    return img, sky.noise


def assess(state: RunState, progress: Progress = noop) -> list:
    """Quality of every frame (one pass); used to choose the reference frame automatically."""
    qs = []
    for i, path in enumerate(state.files):
        progress("assess", i, len(state.files))
        qs.append(measure_frame(path, state.config)[4])
    progress("assess", len(state.files), len(state.files))
    quality.flag_qualities(qs)
    state.qualities = qs
    return qs


def suggested_reference(state: RunState, progress: Progress = noop) -> int:
    """The sharpest and clearest frame that is not excluded."""
    qs = state.qualities or assess(state, progress)
    excluded = excluded_indices(state.config, state.files)
    allowed = [i for i in range(len(qs)) if i not in excluded]
    return allowed[quality.best_reference([qs[i] for i in allowed])]


def choose_reference(state: RunState, progress: Progress = noop) -> int:
    cfg = state.config
    if cfg.reference.frame == "auto":
        state.set_reference_frame(suggested_reference(state, progress))
    else:
        state.set_reference_frame(resolve_reference(cfg, state.files))
    return state.ref_index


BOX = 100  # px: SPEC's reference box, where the frame holds it


def reference_box(cfg: Config, shape) -> int:
    """The box the reference star is searched (and judged isolated) in: [reference].box as
    given; else 100 px, or half the frame's smaller side if less (a cut-out, a guide camera:
    a 100 px box on a 96 px frame left no room for a star; trial 8 #11)."""
    if cfg.reference.box is not None:
        return cfg.reference.box
    return max(5, min(BOX, min(shape) // 2))


def reference_star(sub: np.ndarray, mask: np.ndarray, noise: float, sky: float, cfg: Config, name: str,
                   stars=None, at: tuple[float, float] | None = None) -> registration.StarPosition:
    """The reference star on the sky-subtracted reference frame `sub`: near `at`, else near the
    config's [reference].star, else ("auto") the nearest-the-centre bright isolated unsaturated
    star of `stars` (found here if not given). Raises InputError saying what to change."""
    h, w = sub.shape
    box = reference_box(cfg, sub.shape)
    if box > max(h, w):  # the box is to find one star: as big as the frame it finds the brightest anywhere
        raise InputError(f"config: [reference].box = {box} px is larger than the {w}x{h} reference frame {name}; "
                         f"give a smaller box, or leave the key out (then {BOX} px, or half the frame's smaller "
                         "side if less)")
    want = at if at is not None else cfg.reference.star
    if want == "auto":
        if stars is None:
            stars = quality.find_stars(sub, mask, noise)
        want = quality.pick_reference_star(stars, sub.shape, sky, cfg.scale.saturation, box)
        if want is None:
            raise InputError(f"{name}: no bright, unsaturated, isolated star for [reference].star = \"auto\"; "
                             "give [x, y]")
    sx, sy = want
    if not (0 <= sx < w and 0 <= sy < h):
        raise InputError(f"config: [reference].star = [{sx:g}, {sy:g}] is outside the {w}x{h} reference frame {name}")
    star = registration.locate_reference_star(sub, mask, sx, sy, box, cfg.reference.centroid, noise)
    if star is None:
        raise InputError(f"{name}: no star found in the {box} px box around [{sx:g}, {sy:g}]; check "
                         "[reference].star or enlarge [reference].box")
    sat = cfg.scale.saturation
    if sat is not None and star.peak + sky >= sat:
        raise InputError(f"{name}: the reference star at [{star.x:.1f}, {star.y:.1f}] is saturated "
                         f"(peak {star.peak + sky:.0f} >= {sat:g}); choose a fainter star")
    return star
