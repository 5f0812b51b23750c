"""The real SAAO frames in ../shared/data/pydia against the estimates in its frames.csv."""

import csv
import json

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import pipeline
from tui_stack.config import load_config

from conftest import PYDIA, REPO, checksums, requires_pydia

pytestmark = requires_pydia


@pytest.fixture(scope="module")
def pydia_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pydia")
    cfg = load_config(REPO / "sample_configs" / "pydia.toml")
    cfg.output.directory = out
    before = checksums(PYDIA.glob("*.fits"))
    state = pipeline.run(cfg)
    est = {r["file"]: r for r in csv.DictReader(open(PYDIA / "frames.csv"))}
    return state, out, est, before


def test_shifts_within_half_pixel_of_estimates(pydia_run):
    state, _, est, _ = pydia_run
    assert state.files[state.ref_index].name == "AKB13475I0007.fits"
    for fr in state.frames:
        e = est[fr.name]
        assert abs(fr.shift_x - float(e["shift_x"])) < 0.5, fr.name
        assert abs(fr.shift_y - float(e["shift_y"])) < 0.5, fr.name
        assert fr.used and "methods_disagree" not in fr.flags


def test_scales_within_5_percent_of_estimates(pydia_run, tmp_path):
    """frames.csv's estimates take the annulus median as the local sky: measured so, within 5%.
    The default (the annulus mean clear of the reference's stars) puts the noisiest frame, 0002
    (noise 192 ADU against 55-150), 5-6% lower: the median's bias the next test measures."""
    state, _, est, _ = pydia_run
    cfg = state.config.copy()
    cfg.scale.sky, cfg.output.directory = "annulus-median", tmp_path
    for fr in pipeline.run(cfg).frames:
        want = float(est[fr.name]["flux_ratio_est"])
        assert abs(fr.scale / want - 1) < 0.05, (fr.name, fr.scale, want)
    clouded = {f.name for f in state.frames if "low_transparency" in f.flags}
    assert {"AKB13475I0005.fits", "AKB13475I0012.fits", "AKB13475I0013.fits"} <= clouded


def test_outputs_and_inputs_untouched(pydia_run):
    state, out, _, before = pydia_run
    assert checksums(PYDIA.glob("*.fits")) == before
    rep = json.loads((out / "report.json").read_text())
    assert rep["combined"]["n_frames"] == 12 and rep["combined"]["std_region"] == [400, 500, 400, 500]
    assert 0.97 < rep["photometry"]["ratio_median"] < 1.03
    assert len(list(out.glob("sAKB*.fits"))) == 12


@pytest.mark.parametrize("sky,worst", [("annulus", 0.015), ("annulus-median", None)])
def test_a_frame_dimmed_by_cloud_keeps_its_scale(tmp_path, sky, worst):
    """Trial 8 #1: frames 0009 and 0011 dimmed to half about their median, their noise held (a
    cloud dims the stars, not the sky's noise). Their scales must double. The annulus median
    read them +14.7 / +16.5% high (the crowded annulus' median moves with the noise); the
    default, a mean clear of the reference's stars, +1.2 / -0.8%."""
    from tui_stack.config import load_config

    dimmed = tmp_path / "dimmed"
    dimmed.mkdir()
    rng = np.random.default_rng(5)
    for f in sorted(PYDIA.glob("AKB*.fits")):
        with fits.open(f) as h:
            hdr, a = h[0].header.copy(), h[0].data.astype(np.float32)
        for k in ("BZERO", "BSCALE"):
            hdr.pop(k, None)
        if f.name in ("AKB13475I0009.fits", "AKB13475I0011.fits"):
            level = np.median(a)
            noise = 1.4826 * np.median(np.abs(a - level))
            a = (a - level) * 0.5 + level + rng.normal(0, noise * np.sqrt(0.75), a.shape).astype(np.float32)
        fits.writeto(dimmed / f.name, a, hdr)
    scales = {}
    for name, directory in (("base", PYDIA), ("dimmed", dimmed)):
        cfg = load_config(REPO / "sample_configs" / "pydia.toml")
        cfg.input.directory, cfg.output.directory = directory, tmp_path / name
        cfg.scale.sky, cfg.output.write_shifted = sky, False
        scales[name] = {fr.name: fr.scale for fr in pipeline.run(cfg).frames}
    err = [scales["dimmed"][n] / (2 * scales["base"][n]) - 1 for n in ("AKB13475I0009.fits", "AKB13475I0011.fits")]
    if worst is None:
        assert min(err) > 0.1, err  # the median's bias, as measured
    else:
        assert max(map(abs, err)) < worst, err
