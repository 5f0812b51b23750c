"""Small field rotations: fitted as a similarity and resampled onto the reference grid (#10)."""

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import pipeline
from tui_stack.core import quality, registration, synthetic

from conftest import make_config

ROTATIONS = (0.0, 0.7, -1.5, 3.0)


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    spec = synthetic.FieldSpec(n_frames=4, shape=(512, 512), n_stars=300, max_shift=6, seed=8, rotations=ROTATIONS)
    truth = synthetic.write_field(tmp_path_factory.mktemp("rot"), spec)
    out = tmp_path_factory.mktemp("rot_out")
    state = pipeline.run(make_config(truth, out, shift__mode="subpixel", combine__method="median", scale__radius=8.0))
    return truth, state, out


def test_rotations_recovered_to_two_thousandths_of_a_degree(rotated):
    truth, state, _ = rotated
    for fr, rot in zip(state.frames[1:], ROTATIONS[1:]):
        assert fr.transform is not None and "rotated" in fr.flags, fr.flags
        assert abs(fr.rotation - rot) < 0.002, (fr.name, fr.rotation, rot)
        assert fr.n_matched >= 30 and fr.fit_rms < 0.1 and "poor_fit" not in fr.flags
        assert fr.used and abs(registration.Affine.from_list(fr.transform).scale - 1) < 1e-4


def test_a_turn_below_the_rotation_limit_that_a_shift_fits_poorly_is_fitted_as_a_similarity(tmp_path):
    """0.04 degrees (below ROTATION_LIMIT_DEG) moves the ends of a 4096 px wide frame by 1.4
    px: the shift's fit is poor, and the similarity from the same stars fits it (before, the
    pattern search took it for an exact turn by 0 degrees: a shift, flagged poor_fit)."""
    spec = synthetic.FieldSpec(n_frames=2, shape=(256, 4096), n_stars=300, max_shift=4, seed=8, rotations=(0.0, 0.04))
    truth = synthetic.write_field(tmp_path / "in", spec)
    state = pipeline.run(make_config(truth, tmp_path / "out", shift__mode="subpixel", combine__method="median",
                                     scale__radius=8.0))
    fr = state.frames[1]
    assert "poor_fit" not in fr.flags and "turned" not in fr.flags and not fr.first_guess, (fr.flags, fr.first_guess)
    assert fr.transform is not None and abs(fr.rotation - 0.04) < 0.002 and fr.fit_rms < 0.1, (fr.rotation, fr.fit_rms)


@pytest.mark.parametrize("mode", ["subpixel", "integer"])
def test_a_turn_that_moves_the_outer_stars_a_tenth_of_a_pixel_is_resampled_as_a_turn(tmp_path, mode):
    """0.02 degrees on 1024 px: far under ROTATION_LIMIT_DEG and a shift fits it well (0.1 px),
    but the outer stars sit 0.2 px off after a shift alone. Subpixel mode turns the frame back
    (TURN_PX); integer mode keeps the shift (its rounding is 0.5 px anyway)."""
    spec = synthetic.FieldSpec(n_frames=2, shape=(1024, 1024), n_stars=400, max_shift=4, seed=12, rotations=(0.0, 0.02))
    truth = synthetic.write_field(tmp_path / "in", spec)
    state = pipeline.run(make_config(truth, tmp_path / "out", shift__mode=mode, combine__method="median",
                                     scale__radius=8.0))
    fr = state.frames[1]
    assert fr.used and "rotated" not in fr.flags and abs(fr.rotation - 0.02) < 0.003, (fr.flags, fr.rotation)
    if mode == "integer":
        assert fr.transform is None
        return
    got = registration.Affine.from_list(fr.transform)
    corners = np.array([[0, 0], [1023, 0], [0, 1023], [1023, 1023]], float)
    # write_field: frame position = R (reference - centre) + centre - shift
    th, c = np.radians(0.02), np.array([511.5, 511.5])
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    want = (corners - c) @ rot.T + c - truth.shifts[1]
    assert np.abs(got.apply(corners) - want).max() < 0.03 and fr.fit_rms < 0.05
    assert np.abs((corners - truth.shifts[1]) - want).max() > 0.15  # what a shift alone leaves


@pytest.fixture(scope="module")
def rotated_quiet(tmp_path_factory, passes):
    """The same turns with almost no noise: what is left is the method's own error (through
    both forms of the resampling passes)."""
    spec = synthetic.FieldSpec(n_frames=4, shape=(512, 512), n_stars=300, max_shift=6, seed=9, rotations=ROTATIONS,
                               gain=1000.0, read_noise=0.0, cosmic_rays=0)
    truth = synthetic.write_field(tmp_path_factory.mktemp("rotq"), spec)
    out = tmp_path_factory.mktemp("rotq_out")
    state = pipeline.run(make_config(truth, out, shift__mode="subpixel", combine__method="median", scale__radius=8.0))
    return truth, state, out


def test_aligned_frames_agree_with_the_reference_everywhere(rotated_quiet):
    """Stars in each resampled frame sit where they are in the reference, in every quadrant:
    no systematic offset above 0.01 px (a rotation left in would show at the corners)."""
    truth, state, out = rotated_quiet
    ref = fits.getdata(out / "sdemo_001.fits")
    ref_mask = ~np.isfinite(ref)
    ref = np.where(ref_mask, 0, ref)
    stars = quality.find_stars(ref, ref_mask, float(state.frames[0].noise))
    keep = (stars.peak < 20000) & (stars.x > 30) & (stars.x < 482) & (stars.y > 30) & (stars.y < 482)
    xy = np.stack([stars.x[keep], stars.y[keep]], axis=1)
    _, ref_pts = registration.match_stars(ref, ref_mask, state.frames[0].noise, xy, 0, 0, search=5, box=7, method="2dg")
    for fr in state.frames[1:]:
        img = fits.getdata(out / f"s{fr.name}")
        mask = ~np.isfinite(img)
        a, b = registration.match_stars(np.where(mask, 0, img), mask, fr.noise, ref_pts, 0, 0, search=5, box=7,
                                        method="2dg")
        d = b - a
        assert len(d) > 40
        for qx in (a[:, 0] < 256, a[:, 0] >= 256):
            for qy in (a[:, 1] < 256, a[:, 1] >= 256):
                q = qx & qy
                assert q.sum() >= 5
                assert np.all(np.abs(np.median(d[q], axis=0)) < 0.01), (fr.name, np.median(d[q], axis=0))
        # and a similarity fitted to all of them moves no corner of the frame by 0.01 px
        fit = registration.fit_similarity(a, b)
        corners = np.array([[0, 0], [511, 0], [0, 511], [511, 511]], float)
        assert np.abs(fit.apply(corners) - corners).max() < 0.01, (fr.name, fit.apply(corners) - corners)


def test_similarity_needs_subpixel_mode():
    from tui_stack.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="subpixel"):
        config_from_dict({"input": {}, "shift": {"transform": "similarity"}})
