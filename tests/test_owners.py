"""One owner per decision: the run state's dependencies, the one selection rule, the one
parameter table, and outputs that did not change when the pipeline became a package."""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import cli, pipeline
from tui_stack.config import SCHEMA, config_from_dict
from tui_stack.core import combine_params
from tui_stack.core.combine_params import PARAMS

from conftest import REPO, make_config, requires_pydia

GOLDEN = Path(__file__).with_name("golden.json")


# ---------------------------------------------------------------- the run state


@pytest.fixture(scope="module")
def measured(field_integer, tmp_path_factory):
    return pipeline.run(make_config(field_integer, tmp_path_factory.mktemp("o"), output__write_shifted=False))


def test_another_reference_frame_clears_shifts_scales_and_stacks(measured):
    state = pipeline.RunState(config=measured.config, files=list(measured.files), frames=list(measured.frames),
                              combined=list(measured.combined), ref_star=measured.ref_star,
                              comparison_stars=list(measured.comparison_stars))
    state.set_reference_frame(state.ref_index)  # the same frame: nothing is lost
    assert state.frames and state.combined and state.ref_star is not None
    state.set_reference_frame((state.ref_index + 1) % len(state.files))
    assert (state.frames, state.combined, state.ref_star, state.comparison_stars) == ([], [], None, [])


def test_another_star_clears_the_shifts(measured):
    state = pipeline.RunState(config=measured.config, files=list(measured.files), frames=list(measured.frames),
                              combined=list(measured.combined), ref_star=measured.ref_star)
    state.set_reference_star(measured.ref_star)
    assert state.frames
    moved = dataclasses.replace(measured.ref_star, x=measured.ref_star.x + 5)
    state.set_reference_star(moved)
    assert state.frames == [] and state.combined == []


def test_other_comparison_stars_clear_the_scales_and_a_skipped_frame_leaves_the_stack(measured):
    import copy

    state = copy.deepcopy(measured)
    assert all(np.isfinite(fr.scale) for fr in state.frames if fr.used)
    state.set_used(2, False)
    assert not state.frames[2].used and "excluded" in state.frames[2].flags and state.combined == []
    assert state.set_used(2, True) and "excluded" not in state.frames[2].flags
    state.set_comparison_stars(state.comparison_stars[:1])
    assert not any(np.isfinite(fr.scale) for fr in state.frames)
    state.config = state.config.copy()
    state.config.set("scale", "stars", [list(state.comparison_stars[0])])  # the choice is the config's
    pipeline.measure_scales(state)
    assert all(np.isfinite(fr.scale) for fr in state.frames if fr.used)
    assert [fr.n_scale_stars for fr in state.frames if fr.used] == [1] * sum(fr.used for fr in state.frames)


# ---------------------------------------------------------------- one selection rule


def test_frames_in_an_extension_with_the_keyword_in_the_primary_are_selected_by_run_and_wizard(tmp_path):
    """The wizard's file table used to show none of these frames while `run` took them."""
    rng = np.random.default_rng(1)
    for i, kind in enumerate([1, 1, 2]):
        prim = fits.PrimaryHDU(header=fits.Header({"PICTTYPE": kind}))
        img = fits.ImageHDU(rng.normal(100, 5, (40, 40)).astype(np.float32))
        fits.HDUList([prim, img]).writeto(tmp_path / f"f{i}.fits")
    cfg = config_from_dict({"input": {"directory": str(tmp_path), "pattern": "f*.fits", "select": {"PICTTYPE": 1}}})
    by_run = [p.name for p in pipeline.select(cfg)]
    by_wizard = [i.path.name for i in pipeline.scan(tmp_path, "f*.fits") if i.selected_by(cfg.input.select)]
    assert by_run == by_wizard == ["f0.fits", "f1.fits"]


def test_the_files_screen_lists_frames_selected_through_the_primary_header(tmp_path):
    import asyncio

    from tui_stack.tui.app import StackApp

    rng = np.random.default_rng(2)
    for i in range(3):
        fits.HDUList([fits.PrimaryHDU(header=fits.Header({"PICTTYPE": 1})),
                      fits.ImageHDU(rng.normal(100, 5, (40, 40)).astype(np.float32))]).writeto(tmp_path / f"f{i}.fits")
    cfg = config_from_dict({"input": {"directory": str(tmp_path), "pattern": "f*.fits", "select": {"PICTTYPE": 1}},
                            "output": {"directory": str(tmp_path / "out")}})
    app = StackApp(tmp_path, cfg)

    async def go():
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(300):  # up to 30 s on a busy machine
                await pilot.pause(0.1)
                if len(app.ws.infos) == 3:
                    break
            return len(app.ws.usable_infos())

    assert asyncio.run(go()) == 3


# ---------------------------------------------------------------- one parameter table


def test_every_combine_parameter_is_a_config_key_a_flag_and_a_provenance_card():
    keys = set(SCHEMA["combine"])
    helptext = subprocess.run([sys.executable, "-m", "tui_stack", "combine", "--help"], capture_output=True,
                              text=True).stdout
    for p in PARAMS:
        if p.name == "sky":  # measured by the pipeline, never set
            assert p.name not in keys
            continue
        assert p.name in keys, p.name
        if p.default is True:
            assert "--no-" + p.flag[2:] in helptext
        else:
            assert p.flag in helptext, p.flag
    carded = {p.name for p in PARAMS if p.card}
    seen = {name for m in combine_params.METHODS
            for _, name, _, _ in combine_params.method_parameters(combine_params.CombineParams(m))}
    assert seen == carded


BAD_FLAGS = [
    (["--method", "pclip", "--pclip", "0"], "--pclip"),
    (["--method", "sigclip", "--sigma", "-1"], "--sigma"),
    (["--method", "sigclip", "--sigma", "nan"], "--sigma"),
    (["--method", "minmax", "--nlow", "-1"], "--nlow"),
    (["--method", "sigmaclip", "--maxiters", "0"], "--maxiters"),
    (["--method", "median", "--memory-limit", "1"], "--memory-limit"),
    (["--method", "median", "--workers", "-3"], "--workers"),
    (["--method", "minmax", "--nlow", "2", "--nhigh", "2"], "lower --nlow / --nhigh"),
    (["--method", "gesd", "--gesd-alpha", "1.5"], "--gesd-alpha"),
    (["--method", "ccdclip", "--gain", "NOPE"], "give the value in --gain"),
    (["--method", "ccdclip", "--gain", "1", "--rdnoise", "NOPE"], "give the value in --rdnoise"),
]


@pytest.mark.parametrize("args, named", BAD_FLAGS)
def test_combine_refuses_what_the_config_refuses(field_integer, tmp_path, capsys, args, named):
    files = [str(p) for p in field_integer.files[:4]]
    out = tmp_path / "c.fits"
    code = cli.main(["combine", *files, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("content, named", [("0\n1\n1\n1\n", "scales"), ("1\nnan\n1\n1\n", "scales")])
def test_combine_refuses_a_zero_or_nan_scale(field_integer, tmp_path, capsys, content, named):
    scale = tmp_path / "s.txt"
    scale.write_text(content)
    files = [str(p) for p in field_integer.files[:4]]
    code = cli.main(["combine", *files, "--out", str(tmp_path / "c.fits"), "--method", "average", "--scale", str(scale)])
    assert code == 2 and named in capsys.readouterr().err


def test_huge_weights_give_the_same_image_as_equal_ones(field_integer, tmp_path, capsys):
    files = [str(p) for p in field_integer.files[:4]]
    weights = tmp_path / "w.txt"
    weights.write_text("1e308\n" * 4)
    assert cli.main(["combine", *files, "--out", str(tmp_path / "w.fits"), "--method", "average",
                     "--weights", str(weights)]) == 0
    assert cli.main(["combine", *files, "--out", str(tmp_path / "e.fits"), "--method", "average"]) == 0
    np.testing.assert_allclose(fits.getdata(tmp_path / "w.fits"), fits.getdata(tmp_path / "e.fits"), rtol=1e-6)


def test_minmax_dropping_every_value_is_refused_by_run(field_integer, tmp_path):
    from tui_stack.errors import InputError

    cfg = make_config(field_integer, tmp_path / "o", combine__method="minmax", combine__nlow=3, combine__nhigh=3)
    with pytest.raises(InputError, match="nlow \\+ nhigh = 6"):
        pipeline.run(cfg)
    assert not list((tmp_path / "o").glob("combined_*"))


# ---------------------------------------------------------------- outputs unchanged


def _fingerprint(out: Path) -> dict:
    """sha256 of every output image's pixels, and the report without the version."""
    fp = {}
    for f in sorted(out.glob("*.fits")):
        fp[f.name] = hashlib.sha256(np.ascontiguousarray(fits.getdata(f)).tobytes()).hexdigest()
    report = json.loads((out / "report.json").read_text())
    report.pop("version")
    report.pop("input", None)  # the input directory: where the set was made, not what
    fp["report.json"] = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()
    return fp


def _golden_case(name: str, config: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    assert cli.main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    got = _fingerprint(out)
    want = json.loads(GOLDEN.read_text())[name]
    changed = sorted(k for k in want if got.get(k) != want[k])
    assert not changed, (f"{name}: {changed} changed; if that is meant, say why in the commit and renew "
                         "tests/golden.json (python tests/test_owners.py)")


def test_demo_outputs_are_unchanged(tmp_path):
    from tui_stack import demo

    _golden_case("demo", demo.write_demo(tmp_path / "d"), tmp_path)


@requires_pydia
def test_real_frame_outputs_are_unchanged(tmp_path):
    _golden_case("pydia", REPO / "sample_configs" / "pydia.toml", tmp_path)


if __name__ == "__main__":  # renew tests/golden.json from the code as it is
    import tempfile

    from tui_stack import demo

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cases = {"demo": demo.write_demo(d / "d"), "pydia": REPO / "sample_configs" / "pydia.toml"}
        golden = {}
        for name, config in cases.items():
            assert cli.main(["run", str(config), "--out", str(d / name), "--quiet"]) == 0
            golden[name] = _fingerprint(d / name)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        shutil.rmtree(d, ignore_errors=True)
