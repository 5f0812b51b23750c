"""Whole runs on turned, flipped, mirrored and rescaled frames (#17): registered by their star
patterns, resampled onto the reference grid (subpixel), or turned losslessly / refused (integer)."""

import json

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import pipeline
from tui_stack.core import registration, synthetic
from tui_stack.core.registration import Affine

from conftest import PYDIA, make_config, requires_pydia

G = synthetic.FrameGeometry
GEOS = [G(), G(rotation=33.3, shift=(5.2, -7.1)), G(rotation=182.9, shift=(-3.3, 2.1)),
        G(rotation=90.0, shift=(4.0, -2.0)), G(mirror=True, shift=(2.6, 1.4)), G(rotation=1.2, scale=1.04),
        G(rotation=-0.8, binning=2, shift=(6.0, 3.0)), G(field_offset=(4000.0, 3000.0))]


SPEC = synthetic.FieldSpec(shape=(768, 768), n_stars=350, seed=21, cosmic_rays=10)


@pytest.fixture(scope="module")
def turned(tmp_path_factory):
    """Frames without a WCS: the first guess comes from the star patterns."""
    return synthetic.write_geometry_field(tmp_path_factory.mktemp("turned"), SPEC, GEOS, prefix="demo_", wcs=False)


@pytest.fixture(scope="module")
def turned_wcs(tmp_path_factory):
    """The same frames with a WCS each: the first guess comes from the WCSs."""
    return synthetic.write_geometry_field(tmp_path_factory.mktemp("turned_wcs"), SPEC, GEOS, prefix="demo_")


def _truth_config(truth, out, **kw):
    return make_config(truth, out, combine__method="median", scale__radius=8.0, scale__stars="auto", **kw)


@pytest.fixture(scope="module")
def subpixel_run(turned, tmp_path_factory):
    out = tmp_path_factory.mktemp("turned_sub")
    return pipeline.run(_truth_config(turned, out, shift__mode="subpixel")), out


def test_every_frame_of_the_field_registered_and_the_other_field_refused(turned, subpixel_run):
    state, out = subpixel_run
    corners = np.array([[0, 0], [767, 0], [0, 767], [767, 767]], float)
    for k, fr in enumerate(state.frames[1:], 1):
        if GEOS[k].field_offset is not None:
            assert not fr.used and "no_match" in fr.flags, fr.flags
            continue
        true = Affine.from_list(turned.transforms[k])
        assert fr.used and fr.transform is not None, (fr.name, fr.flags)
        got = Affine.from_list(fr.transform)
        assert got.mirrored == true.mirrored == fr.mirrored
        assert abs((fr.rotation - true.rotation + 180) % 360 - 180) < 0.002, (fr.name, fr.rotation, true.rotation)
        assert abs(fr.scale_ratio / true.scale - 1) < 1e-4, (fr.name, fr.scale_ratio, true.scale)
        assert np.abs(got.apply(corners) - true.apply(corners)).max() < 0.05, fr.name
    rep = json.loads((out / "report.json").read_text())
    f = rep["frames"][4]
    assert f["mirrored"] is True and len(f["transform"]) == 6 and f["scale_ratio"] == pytest.approx(1, abs=1e-4)
    assert rep["frames"][6]["scale_ratio"] == pytest.approx(0.5, abs=1e-4)
    assert rep["frames"][1]["first_guess"] == "pattern"


def test_scales_of_binned_and_rescaled_frames_put_their_stars_at_the_reference_flux(turned, subpixel_run):
    """A frame resampled onto the reference grid has its own star fluxes divided by its pixels'
    area per reference pixel: the scale carries that (a 2x2-binned frame was stacked 3.9x too
    bright, the frame at plate scale 1.04 8% too faint, before it did)."""
    state, out = subpixel_run
    for k, fr in enumerate(state.frames):
        if not fr.used:
            continue
        area = Affine.from_list(turned.transforms[k]).area
        want = turned.transparencies[0] / turned.transparencies[k] * area
        assert fr.scale == pytest.approx(want, rel=5e-3), (fr.name, area)
    rep = json.loads((out / "report.json").read_text())
    assert rep["photometry"]["ratio_median"] == pytest.approx(1, abs=0.01)


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """The same geometries with almost no noise: what is left is the method's own error."""
    spec = synthetic.FieldSpec(shape=(768, 768), n_stars=350, seed=21, cosmic_rays=0, gain=1000.0, read_noise=0.0)
    truth = synthetic.write_geometry_field(tmp_path_factory.mktemp("quiet"), spec, GEOS, prefix="demo_", wcs=False)
    out = tmp_path_factory.mktemp("quiet_out")
    return pipeline.run(_truth_config(truth, out, shift__mode="subpixel")), out


def test_resampled_frames_put_the_stars_where_the_reference_has_them(quiet_run):
    """Each written frame's stars sit on the reference's in every quadrant: no systematic
    offset above 0.01 px (a turn or scale left in would show at the corners)."""
    state, out = quiet_run
    ref = fits.getdata(out / f"s{state.frames[0].name}")
    ref_mask = ~np.isfinite(ref)
    xy = np.c_[state.ref_stars.x, state.ref_stars.y]
    xy = xy[((xy > 40) & (xy < 728)).all(axis=1)][:150]
    noise = state.frames[0].noise
    _, ref_pts = registration.match_stars(np.where(ref_mask, 0, ref), ref_mask, noise, xy, 0, 0, search=5, box=9,
                                          method="2dg")
    for k, fr in enumerate(state.frames[1:], 1):
        if not fr.used:
            continue
        img = fits.getdata(out / f"s{fr.name}")
        mask = ~np.isfinite(img)
        a, b = registration.match_stars(np.where(mask, 0, img), mask, fr.noise, ref_pts, 0, 0, search=5, box=9,
                                        method="2dg")
        d = b - a
        assert len(d) > 40, fr.name
        for qx in (a[:, 0] < 384, a[:, 0] >= 384):
            for qy in (a[:, 1] < 384, a[:, 1] >= 384):
                q = qx & qy
                assert q.sum() >= 5
                off = np.abs(np.median(d[q], axis=0))
                assert np.all(off < 0.01), (fr.name, off)
    assert sum(fr.used for fr in state.frames) == len(GEOS) - 1


def test_integer_mode_turns_quarter_turns_and_mirrors_losslessly_and_refuses_other_turns(turned_wcs, tmp_path):
    state = pipeline.run(_truth_config(turned_wcs, tmp_path))
    by = {fr.name: fr for fr in state.frames}
    for k in (3, 4, 2):  # 90 degrees, a mirror, and (refused) 182.9 degrees
        fr = state.frames[k]
        if k == 2:
            assert not fr.used and "needs_subpixel" in fr.flags and "subpixel" in fr.message
            continue
        assert fr.used and ("turned" in fr.flags or "mirrored" in fr.flags), fr.flags
        t = Affine.from_list(fr.transform)
        assert np.array_equal(t.m, np.rint(t.m)) and np.array_equal(t.t, np.rint(t.t))  # exact: whole pixels
        # the written frame is the input, turned and shifted by whole pixels: the same values
        raw = fits.getdata(fr.path).astype(np.float32) - np.float32(fr.sky)
        out = fits.getdata(tmp_path / f"s{fr.name}")
        ys, xs = np.nonzero(np.isfinite(out))
        fx, fy = t.apply(np.column_stack([xs, ys])).T.astype(int)
        assert np.array_equal(out[ys, xs], raw[fy, fx])
    for k in (1, 5, 6):
        assert not state.frames[k].used and "needs_subpixel" in state.frames[k].flags, state.frames[k].flags
    assert "scale ratio 0.50" in state.frames[6].message
    assert by[state.frames[7].name].flags == ["no_match"]
    assert {fr.first_guess for fr in state.frames if fr.transform is not None} == {"wcs"}


@requires_pydia
def test_real_frames_turned_and_mirrored_register_as_unturned(tmp_path):
    """The real frames, some turned by exact quarter turns or mirrored (lossless array
    operations): registered with shifts within 0.05 px of the unturned run."""
    from tui_stack.config import load_config
    from conftest import REPO

    ops = {"AKB13475I0003.fits": np.rot90, "AKB13475I0004.fits": lambda a: a[::-1, ::-1],
           "AKB13475I0006.fits": lambda a: a[:, ::-1], "AKB13475I0008.fits": lambda a: np.rot90(a, 3),
           "AKB13475I0009.fits": lambda a: a.T}  # +90, 180 (a meridian flip), a mirror, -90, the diagonal mirror
    turned_dir = tmp_path / "turned"
    turned_dir.mkdir()
    for p in PYDIA.glob("*.fits"):
        with fits.open(p) as h:
            hdr, data = h[0].header.copy(), h[0].data
            op = ops.get(p.name)
            fits.PrimaryHDU(op(data) if op else data, hdr).writeto(turned_dir / p.name)
    runs = {}
    for name, directory in (("plain", PYDIA), ("turned", turned_dir)):
        cfg = load_config(REPO / "sample_configs" / "pydia.toml")
        cfg.input.directory = directory
        cfg.output.directory = tmp_path / name
        runs[name] = {fr.name: fr for fr in pipeline.run(cfg).frames}
    for name, fr in runs["turned"].items():
        plain = runs["plain"][name]
        assert fr.used == plain.used, name
        assert abs(fr.shift_x - plain.shift_x) < 0.05 and abs(fr.shift_y - plain.shift_y) < 0.05, (
            name, fr.shift_x - plain.shift_x, fr.shift_y - plain.shift_y)
        assert abs(fr.scale / plain.scale - 1) < 1e-3, name
        if name in ops:
            assert fr.transform is not None or fr.flipped, name
            assert fr.mirrored == (name in ("AKB13475I0006.fits", "AKB13475I0009.fits")), name


def test_non_square_sensor_turned_by_a_quarter_turn(tmp_path):
    """The same 512x384 camera turned by 90 degrees: read as 512x384 again, but the sky runs the
    other way. Integer mode turns it back losslessly (only the overlap has data); subpixel
    resamples it; both put it where the truth says."""
    geos = [G(), G(rotation=90.0, shift=(3.0, -2.0)), G(rotation=-90.0, mirror=True, shift=(-1.0, 4.0))]
    spec = synthetic.FieldSpec(shape=(384, 512), n_stars=250, seed=31, cosmic_rays=5)
    truth = synthetic.write_geometry_field(tmp_path / "f", spec, geos, prefix="demo_", wcs=False)
    corners = np.array([[0, 0], [511, 0], [0, 383], [511, 383]], float)
    for mode in ("integer", "subpixel"):
        state = pipeline.run(_truth_config(truth, tmp_path / mode, shift__mode=mode))
        for k in (1, 2):
            fr = state.frames[k]
            assert fr.used and ("turned" in fr.flags or "mirrored" in fr.flags), (mode, fr.flags)
            true, got = Affine.from_list(truth.transforms[k]), Affine.from_list(fr.transform)
            assert np.abs(got.apply(corners) - true.apply(corners)).max() < (0.5 if mode == "integer" else 0.05)
            out = fits.getdata(tmp_path / mode / f"s{fr.name}")
            assert out.shape == (384, 512)
            if mode == "integer":  # whole pixels of the input, nothing interpolated
                raw = fits.getdata(fr.path).astype(np.float32) - np.float32(fr.sky)
                ys, xs = np.nonzero(np.isfinite(out))
                fx, fy = got.apply(np.column_stack([xs, ys])).T.astype(int)
                assert len(ys) > 384 * 300 and np.array_equal(out[ys, xs], raw[fy, fx])


def test_affine_transform_setting_fits_optics_stretched_along_one_axis(tmp_path):
    geos = [G(), G(rotation=0.6, stretch_y=1.003, shift=(2.5, -1.5))]
    spec = synthetic.FieldSpec(shape=(768, 768), n_stars=350, seed=33, cosmic_rays=5)
    truth = synthetic.write_geometry_field(tmp_path / "f", spec, geos, prefix="demo_", wcs=False)
    true = Affine.from_list(truth.transforms[1])
    corners = np.array([[0, 0], [767, 0], [0, 767], [767, 767]], float)
    err = {}
    for kind in ("similarity", "affine"):
        state = pipeline.run(_truth_config(truth, tmp_path / kind, shift__mode="subpixel", shift__transform=kind))
        got = Affine.from_list(state.frames[1].transform)
        err[kind] = np.abs(got.apply(corners) - true.apply(corners)).max()
    assert err["affine"] < 0.05 and err["similarity"] > 0.3, err
    assert abs(got.axis_ratio - true.axis_ratio) < 2e-4


def test_quality_of_binned_and_rescaled_frames_is_judged_per_reference_pixel(turned, subpixel_run):
    """A 2x2-binned frame has 4x the sky per pixel, half the FWHM in its own pixels and a scale
    1/4 for the same sky: it was flagged high_sky and "more transparent" (2.2x) while the
    reference got low_transparency. Judged per reference pixel, its transparency is the truth's
    and nothing is flagged that is not so."""
    state, _ = subpixel_run
    for k, fr in enumerate(state.frames):
        if not fr.used:
            continue
        q = fr.quality
        want = turned.transparencies[k] / np.median([turned.transparencies[i] for i, f in enumerate(state.frames) if f.used])
        assert q.transparency == pytest.approx(want, rel=0.02), fr.name
        assert ("low_transparency" in fr.flags) == (want < 0.8) and not {"high_sky", "out_of_focus"} & set(fr.flags), (
            fr.name, fr.flags)
    assert state.frames[6].area == pytest.approx(0.25, rel=1e-3)


def test_quality_flags_compare_frames_per_reference_pixel():
    """The same sky, seeing and clouds in a frame binned 2x2 by summing (area 0.25: 4x the sky
    per pixel, half the FWHM in its pixels, a scale 1/4): no flag; the same frame clouded
    (scale 1/4 x 1.5) is low_transparency, and one with twice the sky high_sky."""
    from tui_stack.core import quality

    def q(sky, fwhm):
        return quality.FrameQuality(sky=sky, noise=10.0, n_stars=300, fwhm=fwhm, elongation=1.05, signal=100.0)

    qs = [q(1000, 4.0), q(1010, 4.1), q(990, 3.9), q(4000, 2.0), q(4000, 2.0), q(8000, 2.0)]
    quality.flag_qualities(qs, [1.0, 1.01, 0.99, 0.25, 0.375, 0.25], [1, 1, 1, 0.25, 0.25, 0.25])
    assert [x.flags for x in qs] == [[], [], [], [], ["low_transparency"], ["high_sky"]]
    assert qs[3].transparency == pytest.approx(1.0) and qs[4].transparency == pytest.approx(2 / 3)


def test_scales_measured_again_after_a_change_come_from_the_same_pixels_as_a_run(turned, tmp_path):
    """The wizard's Scales `m`, `<`, `>` measure again after the registration pass: on each
    frame's own pixels at where the registration puts its stars, as `run` does in that pass, not
    on the resampled frames (0.17-0.24% apart, the wizard's saved config not reproducing it)."""
    state = pipeline.run(_truth_config(turned, tmp_path / "a", shift__mode="subpixel"))
    for key, value in (("radius", 10.0), ("method", "growth")):
        cfg = state.config.copy()
        cfg.set("scale", key, value)
        state.config = cfg
        pipeline.measure_scales(state)
    again = pipeline.run(make_config(turned, tmp_path / "b", combine__method="median", scale__stars="auto",
                                     shift__mode="subpixel", scale__radius=10.0, scale__method="growth"))
    used = [i for i, fr in enumerate(again.frames) if fr.used]
    assert len(used) >= 5 and any(again.frames[i].transform is not None for i in used[1:])
    assert [state.frames[i].scale for i in used] == [again.frames[i].scale for i in used]


def test_frames_turned_under_a_wcs_that_gives_only_the_pointing_register_by_their_stars(tmp_path):
    """A mount's or camera driver's WCS: each frame's pointing, no turn (synthetic.write_field's
    headers). Its guess pairs the stars near the pointing and no others; the frames were left
    out as "another field" (no_match) where the same frames without a WCS registered exactly."""
    spec = synthetic.FieldSpec(n_frames=4, shape=(768, 768), n_stars=350, rotations=(0.0, 10.0, -15.0, 30.0), seed=91,
                               cosmic_rays=10)
    truth = synthetic.write_field(tmp_path / "frames", spec)
    assert "CRPIX1" in fits.getheader(truth.files[1]) and "PC1_2" not in fits.getheader(truth.files[1])
    state = pipeline.RunState(config=make_config(truth, tmp_path / "out", shift__mode="subpixel", scale__stars="auto"))
    state.set_files(pipeline.select(state.config))
    pipeline.choose_reference(state)
    pipeline.register(state)
    for fr, turn in zip(state.frames[1:], spec.rotations[1:]):
        assert fr.used and fr.first_guess == "pattern" and "no_match" not in fr.flags, (fr.name, fr.flags)
        assert fr.rotation == pytest.approx(turn, abs=0.01)


def test_integer_mode_keeps_a_frame_the_wcs_registered_without_a_turn(tmp_path):
    """Trial 8 #5: 96^2 frames with 25 stars; frame 20's shift fit matched too few stars, the
    WCS guess and the many-star fit registered it (rotation -0.005 deg, scale 1.0000), and
    integer mode then left it out as "turned". A transform within what a shift does is a shift."""
    from tui_stack.config import config_from_dict

    truth = synthetic.write_field(tmp_path, synthetic.FieldSpec(n_frames=40, shape=(96, 96), n_stars=25, max_shift=3.0,
                                                                cosmic_rays=0, seed=5), prefix="m_")
    cfg = config_from_dict({"input": {"directory": str(tmp_path), "pattern": "m_*.fits"},
                            "reference": {"frame": 0, "star": "auto", "box": 20}, "shift": {"mode": "integer"},
                            "scale": {"stars": "auto", "radius": 5},
                            "output": {"directory": str(tmp_path / "out"), "write_shifted": False}})
    state = pipeline.run(cfg)
    fr = state.frames[20]
    assert fr.first_guess == "wcs" and abs(fr.rotation) < 0.05  # the case: the WCS path, no turn
    assert not any("needs_subpixel" in f.flags for f in state.frames)
    assert fr.used and fr.transform is None
    assert (fr.applied_shift_x, fr.applied_shift_y) == tuple(np.round(truth.shifts[20]))
