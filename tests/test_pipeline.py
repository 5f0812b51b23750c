"""The whole pipeline on synthetic frames with known truth: outputs as SPEC.md describes them."""

import json

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import pipeline
from tui_stack.core import combine
from tui_stack.errors import InputError

from conftest import checksums, make_config

SPEC_FRAME_KEYS = {"file", "centroid_x", "centroid_y", "shift_x", "shift_y", "applied_shift_x",
                   "applied_shift_y", "sky", "scale", "used", "flags"}


@pytest.fixture(scope="module")
def run_subpixel(field_subpixel, tmp_path_factory):
    before = checksums(field_subpixel.files)
    out = tmp_path_factory.mktemp("out_sub")
    state = pipeline.run(make_config(field_subpixel, out, shift__mode="subpixel", combine__method="average"))
    return state, out, before


def test_scales_within_1_percent_of_injected_transparency(run_subpixel, field_subpixel):
    state, _, _ = run_subpixel
    scales = np.array([f.scale for f in state.frames])
    assert np.abs(scales / field_subpixel.scales - 1).max() < 0.01, scales / field_subpixel.scales


def test_unrotated_frames_are_not_flagged(run_subpixel):
    state, _, _ = run_subpixel
    for fr in state.frames[1:]:
        # centroid noise ~0.02 px over +-150 px of field: ~0.008 deg; 4 sigma
        assert abs(fr.rotation) < 0.03 and "rotated" not in fr.flags


def test_report_matches_spec(run_subpixel, field_subpixel):
    state, out, _ = run_subpixel
    rep = json.loads((out / "report.json").read_text())
    assert set(rep) >= {"version", "reference", "frames", "combined", "photometry"}
    assert rep["reference"]["index"] == 0 and rep["reference"]["file"] == "demo_001.fits"
    assert set(rep["reference"]["star"]) == {"x", "y"}
    assert len(rep["frames"]) == 6
    for f in rep["frames"]:
        assert SPEC_FRAME_KEYS <= set(f)
        assert isinstance(f["flags"], list) and isinstance(f["used"], bool)
    assert rep["frames"][0]["shift_x"] == 0 and rep["frames"][0]["scale"] == 1
    c = rep["combined"]
    assert c["file"] == "combined_average.fits" and c["method"] == "average" and c["n_frames"] == 6
    assert c["std_region"] == [110, 210, 110, 210]  # lab's region does not fit 320 px: centre square
    assert 0.98 < rep["photometry"]["ratio_median"] < 1.02
    assert len(rep["photometry"]["reference_flux"]) == len(rep["photometry"]["stars"])


def test_outputs_written_and_inputs_untouched(run_subpixel, field_subpixel):
    state, out, before = run_subpixel
    assert checksums(field_subpixel.files) == before
    for f in field_subpixel.files:
        assert (out / f"s{f.name}").exists()
    # no temporary file or staging folder left; the one hidden file is the record of this set
    assert not list(out.glob(".*part")) and [p.name for p in out.glob(".tui-stack-*")] == [".tui-stack-outputs.json"]
    with fits.open(out / "combined_average.fits") as h:
        hdr, data = h[0].header, h[0].data
    assert data.dtype == np.dtype(">f4")
    assert hdr["NCOMBINE"] == 6 and hdr["TSMETHOD"] == "average" and hdr["IMCMB001"] == "demo_001.fits"
    assert hdr["TSVERS"] and any("scale=" in h for h in hdr["HISTORY"])
    assert hdr["CTYPE1"] == "RA---TAN"  # the reference frame's WCS


def test_shifted_frames_masked_not_filled(run_subpixel):
    state, out, _ = run_subpixel
    fr = max(state.frames, key=lambda f: abs(f.applied_shift_x))
    data = fits.getdata(out / f"s{fr.name}")
    nx = int(np.ceil(abs(fr.applied_shift_x)))
    edge = data[:, :nx] if fr.applied_shift_x > 0 else data[:, -nx:]
    assert np.isnan(edge).all()  # no sentinel, no zeros: no data
    ny = int(np.ceil(abs(fr.applied_shift_y)))
    r = 3  # the poly5 kernel's half width: a pixel whose 6 taps reach outside is masked
    inner = data[ny + r : data.shape[0] - ny - r, nx + r : data.shape[1] - nx - r]
    assert np.isfinite(inner).all()  # and nothing else is masked
    combined = fits.getdata(out / "combined_average.fits")
    # the reference covers every pixel; edges average fewer frames, with no sentinel pulled in
    assert np.isfinite(combined).all()
    ref = fits.getdata(out / f"s{state.frames[0].name}")
    edge_mean = combined[:, :2].mean() if fr.applied_shift_x > 0 else combined[:, -2:].mean()
    assert abs(edge_mean - np.nanmean(ref[:, :2] if fr.applied_shift_x > 0 else ref[:, -2:])) < 50


def test_wcs_of_shifted_frame_follows_the_shift(run_subpixel, field_subpixel):
    state, out, _ = run_subpixel
    fr = state.frames[3]
    h_in = fits.getheader(fr.path)
    h_out = fits.getheader(out / f"s{fr.name}")
    assert h_out["CRPIX1"] == pytest.approx(h_in["CRPIX1"] + fr.applied_shift_x)
    # the shifted frame's WCS equals the reference frame's to within the shift error
    assert h_out["CRPIX1"] == pytest.approx(fits.getheader(field_subpixel.files[0])["CRPIX1"], abs=0.05)


def test_integer_mode_streams_from_inputs_same_as_shifted_files(field_integer, tmp_path):
    state = pipeline.run(make_config(field_integer, tmp_path, combine__method="median"))
    combined = fits.getdata(tmp_path / "combined_median.fits").astype(np.float32)
    srcs = [combine.FileSource(tmp_path / f"s{f.name}", 0, state.shape, scale=f.scale) for f in state.frames]
    from_files = combine.combine(srcs, combine.CombineParams("median")).data
    np.testing.assert_allclose(combined, from_files, rtol=1e-6, atol=1e-3, equal_nan=True)


def test_excluded_frame_is_left_out(field_integer, tmp_path):
    cfg = make_config(field_integer, tmp_path, combine__method="average", input__exclude=["demo_003.fits"], output__write_shifted=False)
    state = pipeline.run(cfg)
    assert not state.frames[2].used and "excluded" in state.frames[2].flags
    assert state.combined[-1].n_frames == 5
    assert not list(tmp_path.glob("sdemo_*.fits"))


def test_clouded_out_frame_flagged_and_run_goes_on(tmp_path):
    from tui_stack.core import synthetic

    from conftest import small_spec

    truth = synthetic.write_field(tmp_path / "f", small_spec(transparencies=(1, 0.9, 0.0, 1, 1, 1), seed=8))
    state = pipeline.run(make_config(truth, tmp_path / "out"))
    assert not state.frames[2].used and "no_stars" in state.frames[2].flags
    assert all(f.used for i, f in enumerate(state.frames) if i != 2)
    assert state.combined[-1].n_frames == 5


@pytest.mark.parametrize("method", ["ccdclip", "winsorized", "pclip"])
def test_every_rejection_runs_in_the_pipeline(field_integer, tmp_path, method):
    """ccdclip reads GAIN and RDNOISE from the reference header (the demo frames carry them)."""
    state = pipeline.run(make_config(field_integer, tmp_path, combine__method=method, output__write_shifted=False))
    c = state.combined[-1]
    assert c.method == method and c.n_frames == 6
    assert 0.97 < c.photometry.ratio_median < 1.03
    assert fits.getheader(tmp_path / f"combined_{method}.fits")["TSMETHOD"] == method


def test_noise_weights_favour_the_clear_frames(field_subpixel, tmp_path):
    """weights = "noise": 1/(sky noise x scale)^2; the half-transparent frame, scaled up by ~2,
    counts about a quarter; the weights and the method's parameters reach report and header."""
    cfg = make_config(field_subpixel, tmp_path, combine__method="sigclip", combine__weights="noise", combine__nkeep=2)
    state = pipeline.run(cfg)
    c = state.combined[0]
    used = [fr for fr in state.frames if fr.used]
    want = np.array([1 / (fr.noise * fr.scale) ** 2 for fr in used])
    np.testing.assert_allclose(c.weights, want / want.sum(), rtol=1e-9)
    half = [fr.name for fr in used].index("demo_005.fits")  # transparency 0.5
    assert c.weights[half] < 0.4 * np.median(c.weights)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["combined"]["weights"] == [round(w, 6) for w in c.weights]
    assert rep["combined"]["parameters"] == {"lsigma": 3.0, "hsigma": 3.0, "nkeep": 2, "mclip": True}
    hdr = fits.getheader(tmp_path / "combined_sigclip.fits")
    assert hdr["TSWEIGHT"] == "noise" and hdr["TSNKEEP"] == 2 and hdr["TSMCLIP"] is True
    assert 0.98 < rep["photometry"]["ratio_median"] < 1.02


def test_photometry_in_the_registration_pass_equals_the_shifted_frames(field_integer, tmp_path):
    """Integer shifts: fluxes measured in the unshifted frame during registration are those of
    the shifted frame (written and measured when write_shifted is on)."""
    from tui_stack.core import photometry
    from tui_stack.pipeline import scale

    state = pipeline.run(make_config(field_integer, tmp_path / "a", output__write_shifted=False))
    cfg = state.config
    for i, fr in enumerate(state.frames):
        assert getattr(fr, "early_fluxes", None) is not None
        data, mask, _ = pipeline.prepared_frame(state, i)  # the shifted frame, as the lab measures
        want = photometry.measure_frame(data, mask, state.comparison_stars, cfg.scale.method, cfg.scale.aperture(),
                                        fr.sky, fr.noise, cfg.scale.saturation, cfg.scale.annulus_radii(),
                                        fwhm_guess=fr.quality.fwhm, statistic=cfg.scale.sky_statistic(),
                                        discs=scale.other_stars(state, None))  # the shifted frame: the reference grid
        np.testing.assert_allclose(fr.star_flux, want.flux, rtol=1e-6)
        assert fr.star_flags == want.flags


def test_a_stack_of_one_frame_is_refused(field_integer, tmp_path):
    """Every frame but the reference excluded: `run` combined a "stack" of one frame (exit 0),
    where the wizard asks for two."""
    n = len(field_integer.files)
    cfg = make_config(field_integer, tmp_path / "out", input__exclude=list(range(1, n)))
    with pytest.raises(InputError, match=r"one usable frame \(demo_001.fits\) left to combine: a stack needs two"):
        pipeline.run(cfg)
    assert not (tmp_path / "out").exists()


def test_outputs_that_the_next_run_would_read_as_frames_are_refused(field_integer, tmp_path):
    """[output] directory = the input folder with a pattern that takes combined_*.fits: the stack
    was written among the frames (the next run read it as one); a narrower pattern is fine."""
    import dataclasses
    import shutil

    frames = tmp_path / "frames"
    frames.mkdir()
    for p in field_integer.files:
        shutil.copy(p, frames)
    truth = dataclasses.replace(field_integer, files=[frames / p.name for p in field_integer.files])
    with pytest.raises(InputError, match=r"combined_median.fits matches the input pattern '\*.fits'"):
        pipeline.run(make_config(truth, frames, input__pattern="*.fits"))
    assert sorted(p.name for p in frames.iterdir()) == sorted(p.name for p in field_integer.files)
    state = pipeline.run(make_config(truth, frames, input__pattern="demo_*.fits"))
    assert (frames / "combined_median.fits").exists() and len(state.files) == len(field_integer.files)


def test_a_scale_from_one_or_two_of_the_stars_is_flagged(field_integer, tmp_path):
    """Trial 8: frames of 256^2 with auto stars had scales from 4, 1, 2 stars and no word of it."""
    state = pipeline.run(make_config(field_integer, tmp_path / "a", output__write_shifted=False))
    assert len(state.comparison_stars) >= 3
    assert not any("few_scale_stars" in fr.flags for fr in state.frames)
    keep = state.comparison_stars[:2]  # the others off the frames: as saturated or crowded ones go
    moved = [(x, y) if (x, y) in keep else (-500.0 - 50 * k, -500.0) for k, (x, y) in enumerate(state.comparison_stars)]
    cfg = make_config(field_integer, tmp_path / "b", output__write_shifted=False, scale__stars=[list(p) for p in moved])
    state = pipeline.run(cfg)
    assert all(f.n_scale_stars == 2 and "few_scale_stars" in f.flags for f in state.frames if f is not state.frames[0])
