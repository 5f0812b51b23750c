"""Calibration (core/calibrate.py) against ccdproc and against the known truth of synthetic raw frames."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tui_stack.core import calibrate as cal
from tui_stack.core import synthetic_calib as sc
from tui_stack.errors import InputError

SPEC = sc.RawSpec()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return sc.write_raw_set(tmp_path_factory.mktemp("raw"), SPEC)


@pytest.fixture(scope="module")
def calib(raw):
    return cal.build(raw.bias, raw.dark, raw.flat, raw.lights, cal.Options(overscan="BIASSEC", trim="TRIMSEC"))


CLIP = dict(method="average", sigma_clip=True, sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
            sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std)


@pytest.fixture(scope="module")
def ccdproc_reduction(raw):
    """The same reduction done by ccdproc, step by step as its guide does it."""
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    warnings.simplefilter("ignore")

    def prep(p):
        ccd = CCDData.read(p, unit="adu")
        ccd = ccdproc.subtract_overscan(ccd, fits_section=ccd.header["BIASSEC"], median=True, overscan_axis=1)
        return ccdproc.trim_image(ccd, fits_section=ccd.header["TRIMSEC"])

    bias = ccdproc.combine([prep(p) for p in raw.bias], **CLIP)
    dark = ccdproc.combine([ccdproc.subtract_bias(prep(p), bias) for p in raw.dark], **CLIP)
    dark.header["EXPTIME"] = SPEC.dark_exptime

    def debias_dedark(p):
        return ccdproc.subtract_dark(ccdproc.subtract_bias(prep(p), bias), dark, exposure_time="EXPTIME",
                                     exposure_unit=u.s, scale=True)

    flat = ccdproc.combine([debias_dedark(p) for p in raw.flat], scale=lambda a: 1 / np.ma.median(a), **CLIP)
    norm = float(np.median(flat.data))
    lights = [ccdproc.flat_correct(debias_dedark(p), flat, norm_value=norm) for p in raw.lights]
    return {"bias": bias.data, "dark": dark.data, "flat": flat.data / norm, "lights": [c.data for c in lights]}


def test_masters_equal_ccdproc_combine(calib, ccdproc_reduction):
    ref = ccdproc_reduction
    np.testing.assert_allclose(calib.bias.data, ref["bias"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(calib.dark.data, ref["dark"], rtol=0, atol=2e-4)
    np.testing.assert_allclose(calib.flats["V"].data, ref["flat"], rtol=2e-6, atol=1e-7)


def test_lights_equal_ccdproc_calibration(calib, raw, ccdproc_reduction):
    for path, want in zip(raw.lights, ccdproc_reduction["lights"]):
        frame = calib.read_frame(path)
        ok = ~frame.mask
        # masked: exactly the hot and dead pixels, nothing else
        assert frame.mask.sum() == SPEC.n_hot + SPEC.n_dead
        np.testing.assert_allclose(frame.data[ok], want[ok], rtol=1e-5, atol=2e-3)


def test_masters_against_truth(calib, raw):
    flat = calib.flats["V"]
    good = ~flat.mask
    resid = flat.data[good] / raw.flat_truth[good] - 1
    # photon noise of the master: the flats' electrons, averaged
    levels = flat.level * SPEC.gain * len(raw.flat)
    expected = np.sqrt(np.mean(1 / (levels * raw.flat_truth[good])))
    assert 0.9 * expected < resid.std() < 1.15 * expected
    # no structure left: box means of the residual within their noise (vignetting, dust removed)
    boxes = resid[: resid.size // 1024 * 1024].reshape(-1, 1024).mean(axis=1)
    assert np.abs(boxes).max() < 5 * expected / np.sqrt(1024)
    assert {tuple(p) for p in np.argwhere(calib.dark.mask)} == {tuple(p) for p in raw.hot}
    assert {tuple(p) for p in np.argwhere(flat.mask)} == {tuple(p) for p in raw.dead}
    # the dark current per second (bias subtracted, hot pixels aside)
    rate = calib.dark.data / calib.dark.exptime
    cold = ~calib.dark.mask
    assert abs(np.median(rate[cold]) - np.median(raw.dark_rate[cold])) < 0.005


def test_calibrated_rows_equal_whole_frame(calib, raw):
    """The combine's row blocks (with a shift and a meridian flip) are the registration's frame."""
    path = raw.lights[1]
    whole = calib.read_frame(path)
    img = np.where(whole.mask, np.nan, whole.data)
    h, w = img.shape
    for dx, dy, flip in ((0, 0, False), (5, -7, False), (-3, 4, True)):
        src = calib.source(path, dx, dy, flip=flip)
        got = np.empty((h, w), np.float32)
        for y0 in range(0, h, 37):
            src.read_into(y0, min(h, y0 + 37), got[y0:y0 + 37])
        src.close()
        turned = img[::-1, ::-1] if flip else img
        want = np.full((h, w), np.nan, np.float32)
        ys, xs = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
        want[ys, xs] = turned[max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)]
        np.testing.assert_array_equal(got, want)


def test_overscan_variants_equal_ccdproc(raw):
    """Mean per row, and a line fitted through the rows (ccdproc's model=Polynomial1D(1))."""
    import ccdproc
    from astropy.modeling import models
    from astropy.nddata import CCDData

    path = raw.lights[0]
    info = cal.read_info(path)
    ccd = CCDData.read(path, unit="adu")
    for stat, order in (("mean", None), ("median", 1)):
        geo = cal.resolve_geometry(info, "BIASSEC", None, stat, order)  # trim: the side beyond the overscan
        assert geo.trim == cal.parse_section(info.header["TRIMSEC"], info.shape)
        model = models.Polynomial1D(order) if order is not None else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = ccdproc.trim_image(ccdproc.subtract_overscan(ccd, fits_section=info.header["BIASSEC"],
                                                                median=stat == "median", model=model),
                                      fits_section=info.header["TRIMSEC"]).data
        got = cal.calibrate_array(fits.getdata(path).astype(np.float32), geo, None)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
        r = cal.CalibratedReader(path, 0, info.shape, geo, None)
        np.testing.assert_array_equal(r.rows(10, 90, 3, 200), got[10:90, 3:200])
        r.close()


def test_overscan_of_rows_and_sections():
    s = cal.parse_section("[1:100, 201:300]", (400, 120))
    assert (s.y0, s.y1, s.x0, s.x1) == (200, 300, 0, 100)
    assert cal.parse_section("[*,5:1]", (10, 20)) == cal.Section(0, 5, 0, 20)
    with pytest.raises(InputError, match="outside"):
        cal.parse_section("[1:500,1:10]", (10, 20))
    raw = np.add.outer(np.arange(30.0), np.zeros(20)) + np.arange(20.0)[None, :] * 2
    geo = cal.Geometry(cal.Section(24, 30, 0, 20), cal.Section(0, 24, 0, 20), axis=0)
    out = cal.calibrate_array(raw.astype(np.float32), geo, None)
    # each column's overscan (rows 24-29, median 26.5 + 2x) taken off that column
    np.testing.assert_allclose(out, np.add.outer(np.arange(24.0), np.zeros(20)) - 26.5)


def test_dark_scaling_needs_bias(raw, tmp_path):
    opts = cal.Options(overscan="BIASSEC", trim="TRIMSEC")
    with pytest.raises(InputError, match="without bias frames"):
        cal.build([], raw.dark, [], raw.lights, opts)
    # darks of the lights' exposure: subtracted as they are, bias and all
    spec = sc.RawSpec(n_bias=0, n_flat=0, n_lights=2, n_dark=5, dark_exptime=30.0, seed=3)
    t = sc.write_raw_set(tmp_path, spec)
    c = cal.build([], t.dark, [], t.lights, opts)
    assert not c.dark.bias_subtracted
    assert c.dark_scale(30.0, "x") == 1.0
    frame = c.read_frame(t.lights[0])
    # what is left is the sky through the flat and the stars: the bias pattern went with the dark
    resid = frame.data - SPEC.sky * t.flat_truth
    faint = ~frame.mask & (np.abs(resid) < 50)
    assert abs(np.median(resid[faint])) < 3
    assert abs(np.corrcoef(resid[faint], t.bias_pattern[faint])[0, 1]) < 0.05
    raw = cal.calibrate_array(fits.getdata(t.lights[0]).astype(np.float32), c.geometry, None)
    assert np.corrcoef((raw - SPEC.sky * t.flat_truth)[faint], t.bias_pattern[faint])[0, 1] > 0.1  # noise 0.004


def _copy_with(src: Path, dst: Path, data=None, **keys) -> Path:
    d, h = fits.getdata(src, header=True)
    for k, v in keys.items():
        if v is None:
            h.remove(k, ignore_missing=True)
        else:
            h[k] = v
    fits.PrimaryHDU(d if data is None else data, h).writeto(dst, overwrite=True)
    return dst


def test_bad_calibration_sets(raw, tmp_path):
    opts = cal.Options(overscan="BIASSEC", trim="TRIMSEC")
    bad_shape = tmp_path / "bias_small.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.uint16), fits.getheader(raw.bias[0])).writeto(bad_shape)
    with pytest.raises(InputError, match="bias_small.fits: bias frame is 100x100"):
        cal.build(raw.bias + [bad_shape], [], [], raw.lights, opts)
    binned = _copy_with(raw.dark[0], tmp_path / "dark_bin.fits", XBINNING=2, YBINNING=2)
    with pytest.raises(InputError, match="dark_bin.fits: dark frame binned 2x2"):
        cal.build(raw.bias, raw.dark + [binned], [], raw.lights, opts)
    b_flats = [_copy_with(p, tmp_path / f"B_{p.name}", FILTER="B") for p in raw.flat]
    with pytest.raises(InputError, match="filter 'V' but no flat for it"):
        cal.build(raw.bias, raw.dark, b_flats, raw.lights, opts)
    # flats of another filter beside the right ones are left out and said so
    c = cal.build(raw.bias[:3], [], raw.flat[:3] + b_flats[:3], raw.lights[:1], opts)
    assert set(c.flats) == {"V"} and len(c.report()["ignored_flats"]) == 3
    with pytest.raises(InputError, match="too few for sigmaclip"):
        cal.build(raw.bias[:2], [], [], raw.lights, opts)
    opts_mm = cal.Options(overscan="BIASSEC", trim="TRIMSEC")
    opts_mm.dark_params = cal.combine.CombineParams("minmax", nlow=3, nhigh=3)
    with pytest.raises(InputError, match="dark: 6 frames .* too few for minmax, which needs at least 7"):
        cal.build(raw.bias, raw.dark[:6], [], raw.lights, opts_mm)
    short = [_copy_with(p, tmp_path / f"short_{p.name}", EXPTIME=5.0) for p in raw.dark[:3]]
    with pytest.raises(InputError, match=r"exposure 30 s is more than 2x the darks' 5 s"):
        cal.build(raw.bias, short, [], raw.lights, opts)
    blank = np.zeros(fits.getdata(raw.flat[0]).shape, np.uint16)
    zeros = [_copy_with(raw.flat[0], tmp_path / "flat_zero.fits", data=blank)] + raw.flat[1:4]
    with pytest.raises(InputError, match="flat_zero.fits: 100.0% of its pixels are exactly 0"):
        cal.build(raw.bias, [], zeros, raw.lights, opts)
    nokey = _copy_with(raw.lights[0], tmp_path / "light_nokey.fits", BIASSEC=None)
    with pytest.raises(InputError, match="light_nokey.fits: no BIASSEC keyword"):
        cal.build(raw.bias, [], [], [nokey], opts)


def test_cosmic_rays_masked_not_filled(tmp_path):
    spec = sc.RawSpec(n_lights=2, n_dark=3, n_flat=3, n_bias=3, cosmic_rays=40, seed=8)
    t = sc.write_raw_set(tmp_path, spec)
    opts = cal.Options(overscan="BIASSEC", trim="TRIMSEC", cosmics=True)
    c = cal.build(t.bias, t.dark, t.flat, t.lights, opts)
    frame = c.read_frame(t.lights[0])
    hits = {p for p in t.cosmic[0]}
    found = {tuple(p) for p in np.argwhere(frame.mask)} - {tuple(p) for p in t.hot} - {tuple(p) for p in t.dead}
    assert len(hits & found) >= 0.9 * len(hits)
    assert len(found - hits) < 0.5 * len(hits)  # a few neighbours of a hit at most
    # the row reader masks the same pixels
    r = c.reader(t.lights[0])
    rows = r.rows(0, spec.shape[0])
    r.close()
    np.testing.assert_array_equal(np.isnan(rows), frame.mask)
    assert c.report()["cosmic_rays"][t.lights[0].name] == int(frame.mask.sum()) - spec.n_hot - spec.n_dead


def test_classify_headers():
    for value, kind in (("Bias Frame", "bias"), ("zero", "bias"), ("DARK", "dark"), ("Flat Field", "flat"),
                        ("skyflat", "flat"), ("Light Frame", "light"), ("object", "light"), ("", "")):
        assert cal.classify({"IMAGETYP": value}) == kind
    assert cal.binning_of({"CCDSUM": "2 2"}) == (2, 2) and cal.binning_of({"BINNING": "1x2"}) == (1, 2)


def test_master_file_has_provenance(calib):
    hdul = cal.master_hdul(calib.flats["V"], "9.9", calib.geometry)
    hdr = hdul[0].header
    assert hdr["IMAGETYP"] == "master flat" and hdr["FILTER"] == "V" and hdr["NCOMBINE"] == SPEC.n_flat
    assert hdr["TSMETHOD"] == "sigmaclip" and hdr["OVERSCAN"] == "[257:272,1:256]"
    assert sum("input flat_V_" in str(h) for h in hdr["HISTORY"]) == SPEC.n_flat
    assert int(hdul["DEADPIX"].data.sum()) == SPEC.n_dead


def test_propose_sets_from_headers(raw, tmp_path):
    b_flats = [_copy_with(p, tmp_path / f"B_{p.name}", FILTER="B") for p in raw.flat[:2]]
    b_lights = [_copy_with(p, tmp_path / f"B_{p.name}", FILTER="B") for p in raw.lights[:2]]
    paths = raw.bias + raw.dark + raw.flat + raw.lights + b_flats + b_lights
    frames = []
    for p in paths:
        h = fits.getheader(p)
        frames.append((p, h, h["EXPTIME"], cal.filter_of(h)))
    prop = cal.propose(frames)
    assert prop.lights == sorted(raw.lights) and prop.bias == sorted(raw.bias)
    assert prop.dark == sorted(raw.dark) and prop.flat == sorted(raw.flat)
    kinds = {(g["type"], g["filter"]): len(g["files"]) for g in prop.groups}
    assert kinds == {("light", "V"): SPEC.n_lights, ("light", "B"): 2, ("bias", ""): SPEC.n_bias,
                     ("dark", ""): SPEC.n_dark, ("flat", "V"): SPEC.n_flat, ("flat", "B"): 2}
    assert "lights in 2 filters" in prop.notes[0]
    assert (prop.overscan, prop.trim) == ("BIASSEC", "TRIMSEC")


def test_prepare_releases_masters_keeps_results(raw):
    c = cal.build(raw.bias, raw.dark, raw.flat, raw.lights, cal.Options(overscan="BIASSEC", trim="TRIMSEC"))
    before = c.read_frame(raw.lights[2])
    report = c.report()
    c.prepare(raw.lights)
    assert all(m.data is None for m in c.masters)
    after = c.read_frame(raw.lights[2])
    np.testing.assert_array_equal(after.data, before.data)  # the masters' arrays used in place: same numbers
    assert c.report() == report and report["masked_pixels"] == SPEC.n_hot + SPEC.n_dead


# ---------------------------------------------------------------- the pipeline with [calibrate]


def _run_config(raw, out: Path, calibrate: dict | None = None, directory: Path | None = None, pattern="light_V_*.fits"):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_config

    over = {f"calibrate__{k}": v for k, v in (calibrate or {}).items()}
    cfg = make_config(raw.stars_truth, out, input__pattern=pattern, scale__radius=8.0, output__write_shifted=False,
                      combine__method="average", **over)
    if directory is not None:
        cfg.input.directory = directory
    return cfg


def _calibrate_keys(raw):
    d = raw.bias[0].parent
    return {"bias": str(d / "bias_*.fits"), "dark": str(d / "dark_*.fits"), "flat": str(d / "flat_V_*.fits"),
            "overscan": "BIASSEC", "trim": "TRIMSEC"}


@pytest.fixture(scope="module")
def run_raw(raw, tmp_path_factory):
    from tui_stack import pipeline

    out = tmp_path_factory.mktemp("run_raw")
    state = pipeline.run(_run_config(raw, out, _calibrate_keys(raw)))
    return state, out


def test_the_stack_and_the_shifted_frames_say_how_they_were_calibrated(raw, tmp_path):
    """Trial 8 #9: the stack's header said nothing of the calibration, and the s-files kept the
    raw frame's BIASSEC and TRIMSEC, which pointed at columns the trimmed frame does not have."""
    from tui_stack import pipeline

    cfg = _run_config(raw, tmp_path / "out", _calibrate_keys(raw))
    cfg.output.write_shifted = True
    state = pipeline.run(cfg)
    stack = fits.getheader(state.combined[0].path)
    assert stack["TSCALIB"] == "overscan,bias,dark,flat"
    history = "\n".join(str(h) for h in stack["HISTORY"])
    for name in ("master_bias.fits", "master_dark.fits", "master_flat_V.fits"):
        assert f"calibrated with {name}" in history
    shifted = fits.getheader(tmp_path / "out" / f"s{raw.lights[0].name}")
    assert shifted["TSCALIB"] == "overscan,bias,dark,flat"
    assert "BIASSEC" not in shifted and "TRIMSEC" not in shifted
    assert shifted["BIASSEC0"] == fits.getheader(raw.lights[0])["BIASSEC"]


def test_run_on_raw_equals_run_on_ccdproc_calibrated(raw, run_raw, ccdproc_reduction, tmp_path):
    from tui_stack import pipeline

    state, out = run_raw
    # ccdproc's calibrated lights, with the pixels we mask (hot and dead: the truth) masked too
    masked = np.zeros(SPEC.shape, bool)
    masked[tuple(raw.hot.T)] = masked[tuple(raw.dead.T)] = True
    d = tmp_path / "ccdproc_lights"
    d.mkdir()
    for path, data in zip(raw.lights, ccdproc_reduction["lights"]):
        hdr = fits.getheader(path)
        for k in ("BZERO", "BSCALE", "BIASSEC", "TRIMSEC"):
            hdr.remove(k, ignore_missing=True)
        fits.PrimaryHDU(np.where(masked, np.nan, data).astype(np.float32), hdr).writeto(d / path.name)
    theirs = pipeline.run(_run_config(raw, tmp_path / "out", directory=d))
    ours = fits.getdata(out / "combined_average.fits")
    want = fits.getdata(tmp_path / "out" / "combined_average.fits")
    assert [(f.applied_shift_x, f.applied_shift_y) for f in state.frames] == \
        [(f.applied_shift_x, f.applied_shift_y) for f in theirs.frames]
    np.testing.assert_allclose([f.scale for f in state.frames], [f.scale for f in theirs.frames], rtol=1e-5)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(ours[ok], want[ok], rtol=1e-5, atol=2e-3)


def test_run_on_raw_frames_against_truth(raw, run_raw, tmp_path):
    from tui_stack import pipeline

    state, out = run_raw
    truth = raw.stars_truth
    scales = np.array([f.scale for f in state.frames])
    err = np.abs(scales / truth.scales - 1)
    assert err.max() < 0.003, err
    # without calibration the vignetting and dust the stars move across bias the scales
    uncal = pipeline.run(_run_config(raw, tmp_path / "uncal"))
    assert np.abs(np.array([f.scale for f in uncal.frames]) / truth.scales - 1).max() > 0.01
    # the outputs: masters with provenance, the report's calibration block
    import json

    rep = json.loads((out / "report.json").read_text())["calibration"]
    assert set(rep["masters"]) == {"bias", "dark", "flat_V"}
    assert rep["masters"]["dark"]["hot_pixels"] == SPEC.n_hot and rep["masters"]["flat_V"]["dead_pixels"] == SPEC.n_dead
    assert rep["masked_pixels"] == SPEC.n_hot + SPEC.n_dead and rep["geometry"]["trim"] == "[1:256,1:256]"
    assert rep["masters"]["bias"]["frames"] == [p.name for p in raw.bias]
    for name in ("master_bias.fits", "master_dark.fits", "master_flat_V.fits"):
        assert fits.getheader(out / name)["NCOMBINE"] > 0
    assert fits.getdata(out / "combined_average.fits").shape == SPEC.shape  # trimmed


def test_cli_calibration_errors_exit_2(raw, tmp_path, capsys):
    from tui_stack import cli
    from tui_stack.config import config_to_toml

    def run(**keys):
        cfg = _run_config(raw, tmp_path / "out", {**_calibrate_keys(raw), **keys})
        p = tmp_path / "c.toml"
        p.write_text(config_to_toml(cfg))
        code = cli.main(["run", str(p)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
        return err[0]

    b_flats = [_copy_with(p, tmp_path / f"B_{p.name}", FILTER="B") for p in raw.flat]
    assert "filter 'V' but no flat for it" in run(flat=str(tmp_path / "B_flat_*.fits"))
    assert "matches no file" in run(dark=str(tmp_path / "nothing_*.fits"))
    assert "too few for sigmaclip" in run(bias=[str(raw.bias[0]), str(raw.bias[1])])
    # trial 8: the data section given as the overscan ran, then stopped on "a flat must be lit"
    assert "overlaps the data section" in run(overscan="[1:256,1:256]")
    assert len(b_flats) == SPEC.n_flat
    # a master's name taken by a file tui-stack did not write: refused before any work
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "master_flat_V.fits").write_text("mine")
    assert "master_flat_V.fits" in run() and (tmp_path / "out" / "master_flat_V.fits").read_text() == "mine"
    (tmp_path / "out" / "master_flat_V.fits").unlink()
    # relative to the config file: a config beside the frames, globs relative to it
    cfg_text = config_to_toml(_run_config(raw, tmp_path / "rel", {"bias": "bias_00*.fits", "overscan": "BIASSEC"}))
    assert 'bias = "bias_00*.fits"' in cfg_text
    p = raw.bias[0].parent / "rel.toml"
    p.write_text(cfg_text)
    assert cli.main(["run", str(p), "--quiet"]) == 0
    p.unlink()
    assert "calibrated: bias (9); 0 pixels masked" in capsys.readouterr().out
    assert fits.getheader(tmp_path / "rel" / "master_bias.fits")["NCOMBINE"] == SPEC.n_bias


def test_wizard_groups_frames_builds_masters_and_saves_a_config_run_repeats(raw, tmp_path):
    import asyncio
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_tui import SIZE, press, settle

    from tui_stack import pipeline
    from tui_stack.config import load_config
    from tui_stack.tui.app import StackApp
    from tui_stack.tui.calibration import CalibrationPanel

    cfg = _run_config(raw, tmp_path / "wizard_out", pattern="*.fits")
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            panel = app.screen.query_one(CalibrationPanel)
            assert panel.has_class("shown")
            groups = str(panel.query_one("#cal-groups").render())
            assert f"light V 30s x{SPEC.n_lights}" in groups and f"bias x{SPEC.n_bias}" in groups
            assert f"flat V 2s x{SPEC.n_flat}" in groups and "calibrate with: bias 9, dark 7, flat 7" in groups
            # the table now lists the lights only: the header filter is their IMAGETYP
            assert app.screen.query_one("#filter").value == "IMAGETYP=Light Frame"
            assert sorted(i.path for i in app.ws.infos) == sorted(raw.lights)
            await press(pilot, "c")
            masters = str(panel.query_one("#cal-masters").render())
            assert "flat V" in masters and "dark 60s" in masters and str(SPEC.n_hot) in masters
            assert panel.query_one("#cal-preview").image is not None
            await press(pilot, "v")
            assert panel.shown_master == 1
            await press(pilot, "n", 4)
            assert app.screen.STEP == 4
            await press(pilot, "c")
            await press(pilot, "w")

    asyncio.run(go())
    out = tmp_path / "wizard_out"
    for name in ("master_bias.fits", "master_dark.fits", "master_flat_V.fits"):
        assert (out / name).exists()
    rerun = load_config(out / "tui-stack.toml")
    rerun.output.directory = tmp_path / "run_out"
    pipeline.run(rerun)
    a = fits.getdata(out / "combined_average.fits")
    b = fits.getdata(tmp_path / "run_out" / "combined_average.fits")
    np.testing.assert_array_equal(a, b)
    ra = json.loads((out / "report.json").read_text())
    rb = json.loads((tmp_path / "run_out" / "report.json").read_text())
    assert ra["calibration"] == rb["calibration"] and ra["calibration"]["masked_pixels"] == SPEC.n_hot + SPEC.n_dead


def test_dead_pixels_are_local_not_the_vignetted_corners(tmp_path):
    """A flat down to 0.3 in its corners: dead pixels are those far under their neighbourhood,
    not the dark corners an absolute threshold would take."""
    spec = sc.RawSpec(shape=(200, 232), vignetting=0.7, n_bias=3, n_dark=0, n_flat=4, n_lights=1, n_dead=20, seed=9)
    t = sc.write_raw_set(tmp_path, spec)
    c = cal.build(t.bias, [], t.flat, t.lights, cal.Options(overscan="BIASSEC", trim="TRIMSEC"))
    flat = c.flats["V"]
    assert np.nanmin(flat.data[~flat.mask]) < 0.45  # corners under the 0.5 threshold, kept
    assert {tuple(p) for p in np.argwhere(flat.mask)} == {tuple(p) for p in t.dead}
