"""The real SAAO frames in ../shared/data/pydia against the estimates in its frames.csv."""

import csv
import json

import pytest

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


def test_scales_within_5_percent_of_estimates(pydia_run):
    state, _, est, _ = pydia_run
    for fr in state.frames:
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
