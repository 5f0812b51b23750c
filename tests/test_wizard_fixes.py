"""The wizard's fixes from trial 6: a session that ended on the Reference step resumes; the
saved config reproduces the wizard's scales and pixels; status lines say what the table shows."""

import asyncio
import json
import tomllib

import numpy as np
import pytest
from astropy.io import fits
from textual.widgets import Input

from tui_stack import demo, pipeline
from tui_stack.config import config_from_dict, load_config
from tui_stack.tui.app import StackApp

from test_tui import SIZE, press, settle, to_step


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fixes")
    demo.write_demo(d, n_frames=4, size=384)
    return d


def app_for(demo_dir, out, **sections):
    cfg = load_config(demo_dir / "demo.toml")
    cfg.output.directory = out
    for name, value in sections.items():
        section, key = name.split("__")
        cfg.set(section, key, value)
    return StackApp(cfg.input.directory, cfg)


def resumed(demo_dir, saved) -> StackApp:
    """The app `tui-stack --resume` opens on the saved session."""
    return StackApp(demo_dir / "frames", config_from_dict(tomllib.loads(saved["config"])), resume=saved)


def status(app) -> str:
    return str(app.screen.query_one("#status").render())


def test_a_session_that_ended_on_the_reference_step_resumes_there(demo_dir, tmp_path):
    from tui_stack.tui import session

    app = app_for(demo_dir, tmp_path / "o", reference__star="auto")
    seen = {}

    async def first():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 1)
            await press(pilot, "a")  # a star picked automatically
            seen["star"] = app.ws.star_xy
            seen["frame"] = app.ws.run.ref_index
            app.save_session()  # as a dropped link leaves it: on Reference, no shifts yet

    asyncio.run(first())
    saved = session.load(demo_dir / "frames")
    assert saved["step"] == 1 and saved["run"]["frames"] == []
    app2 = resumed(demo_dir, saved)

    async def second():
        async with app2.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            assert app2.screen.STEP == 1
            assert app2.ws.run.ref_index == seen["frame"]
            assert app2.ws.star_xy == pytest.approx(seen["star"], abs=1e-9)
            assert "chosen" in str(app2.screen.query_one("#chosen").render())
            await press(pilot, "n")
            assert app2.screen.STEP == 2 and app2.ws.run.frames

    asyncio.run(second())


def test_saved_config_reproduces_the_wizard_with_auto_stars_and_a_mode_switch(demo_dir, tmp_path):
    """Automatic reference and comparison stars, scales measured in integer mode, then `s` to
    subpixel on Shifts: `run` on the saved tui-stack.toml gives the same scales and pixels."""
    out = tmp_path / "wiz"
    app = app_for(demo_dir, out, reference__star="auto", scale__stars="auto", shift__mode="integer")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 1)
            await press(pilot, "a")
            await press(pilot, "n", 2)  # shifts, then scales in integer mode
            assert app.screen.STEP == 3
            await press(pilot, "b")
            await press(pilot, "s")  # subpixel: measured again
            assert app.ws.config.shift.mode == "subpixel"
            await press(pilot, "n", 2)
            await press(pilot, "c")
            await press(pilot, "w")
            assert not app.ws.dirty, status(app)
            seen["stars"] = [list(s) for s in app.ws.run.comparison_stars]

    seen = {}
    asyncio.run(go())
    cfg = load_config(out / "tui-stack.toml")
    assert cfg.shift.mode == "subpixel"
    # written at full precision, not cut to 0.01 px
    assert [list(s) for s in cfg.scale.stars] == seen["stars"]  # exactly where the wizard measured
    assert any(abs(x * 100 - round(x * 100)) > 1e-6 for x, _ in cfg.scale.stars)
    cfg.output.directory = tmp_path / "run"
    pipeline.run(cfg)
    wiz = json.loads((out / "report.json").read_text())
    ran = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [f["scale"] for f in wiz["frames"]] == [f["scale"] for f in ran["frames"]]
    name = f"combined_{cfg.combine.method}.fits"
    np.testing.assert_array_equal(fits.getdata(out / name), fits.getdata(tmp_path / "run" / name))


def test_an_empty_output_field_is_refused_not_the_current_directory(demo_dir, tmp_path, monkeypatch):
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    app = app_for(demo_dir, tmp_path / "o")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "c")
            app.screen.query_one("#outdir", Input).value = "  "
            await press(pilot, "w")
            assert "type an output directory" in status(app)
            assert app.ws.dirty

    asyncio.run(go())
    assert list(here.iterdir()) == []


def test_files_status_counts_what_the_table_shows_and_a_fresh_session_is_saved(demo_dir, tmp_path):
    from tui_stack.tui import session

    app = app_for(demo_dir, tmp_path / "o")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            n, total = len(app.ws.infos), app.screen._n_files
            # saved once the scan is done: a dropped link before the first step change resumes this
            saved = session.load(demo_dir / "frames")
            assert saved is not None and saved["step"] == 0
            await press(pilot, "a")
            assert status(app).startswith(f"0 of {total} files selected")
            await press(pilot, "a")
            await press(pilot, "space")
            assert status(app).startswith(f"{n - 1} of {total} files selected")
            app.save_session()

    asyncio.run(go())
    saved = session.load(demo_dir / "frames")
    app2 = resumed(demo_dir, saved)

    async def again():
        async with app2.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            n, total = len(app2.ws.infos), app2.screen._n_files
            assert len(app2.ws.included) == n - 1
            assert status(app2).startswith(f"{n - 1} of {total} files selected")

    asyncio.run(again())


def test_x_on_a_frame_out_for_its_own_reason_says_why_and_does_not_exclude_it(demo_dir, tmp_path):
    app = app_for(demo_dir, tmp_path / "o")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            fr = app.ws.run.frames[1]
            fr.used, fr.flags = False, ["rescaled", "needs_subpixel"]  # as integer mode leaves a binned frame
            fr.message = "scale ratio 0.5000: integer mode cannot rescale"
            await press(pilot, "down")
            assert app.ws.run.frames[1] is fr
            await press(pilot, "x")
            assert "excluded" not in fr.flags
            assert "not used anyway" in status(app) and "s: subpixel" in status(app)
            assert fr.path.name not in app.ws.config_for_run().input.exclude

    asyncio.run(go())


def test_scales_screen_switches_method_and_radius_through_the_config(demo_dir, tmp_path):
    app = app_for(demo_dir, tmp_path / "o")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 3)
            run = app.ws.run
            r0 = app.ws.config.scale.radius  # the demo's config: 15 px
            assert f"fixed, r {r0:g} px (m, < >)" in status(app)
            await press(pilot, "n")
            await press(pilot, "c")
            assert run.combined
            await press(pilot, "b")
            await press(pilot, "less_than_sign")
            assert app.ws.config.scale.radius == r0 - 1
            assert run.frames[run.ref_index].aperture_radius == r0 - 1 and not run.combined  # stacks of old scales go
            assert f"fixed, r {r0 - 1:g} px" in status(app)
            fixed = [f.scale for f in run.frames]
            await press(pilot, "m")
            assert app.ws.config.scale.method == "growth"
            assert all(np.isfinite(f.psf_fwhm) for f in run.frames)
            assert [f.scale for f in run.frames] != fixed
            await press(pilot, "R")
            assert app.ws.config.scale.radius == "auto" and "growth, r 2 FWHM (auto)" in status(app)
            app.ws.config.set("scale", "radius", 1.0)
            await press(pilot, "less_than_sign")  # 0 px: the config's own check says no
            assert "[scale].radius" in status(app) and app.ws.config.scale.radius == 1.0
            assert "radius" in app.ws.config_toml() and 'method = "growth"' in app.ws.config_toml()

    asyncio.run(go())


def test_help_and_status_details(demo_dir, tmp_path):
    from tui_stack.tui.common import LEGEND_WIDTH, FLAG_CODES, fit_line, flag_legend

    legend = flag_legend().split("\n")
    assert max(map(len, legend)) <= LEGEND_WIDTH
    pairs = [f"{c} {n}" for n, c in FLAG_CODES.items()]
    assert all(any(p in line for line in legend) for p in pairs)  # no pair broken across lines
    line = fit_line("written to /work/trial6/tui-stack-demo/out/tui-stack.toml (for tui-stack run); q quits", 60)
    assert len(line) <= 60 and "/tui-stack.toml (for tui-stack run); q quits" in line and line.startswith("written to /")
    app = app_for(demo_dir, tmp_path / "o", reference__star="auto")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 1)
            await press(pilot, "a")
            await press(pilot, "q")  # a star chosen, nothing measured: nothing to lose
            assert app.return_code == 0 and not app.is_running

    asyncio.run(go())
    app2 = app_for(demo_dir, tmp_path / "o")

    async def helps():
        async with app2.run_test(size=SIZE) as pilot:
            await settle(pilot)
            for step in range(5):
                if step:
                    await press(pilot, "n")
                lines = app2.screen.help_lines()
                keys = [k for k in lines if isinstance(k, tuple)]
                assert not any(d == "Focus Next" for _, d in keys)
                assert any(d == "Next step" for _, d in keys) == (step < 4)
                if step == 2:
                    await press(pilot, "down")
                    await press(pilot, "e")  # the residual plot names the stars used, as the table's n
                    fr = app2.ws.run.frames[1]
                    assert f"{fr.n_matched} of {len(fr.residuals)} stars used" in app2.screen.query_one("#plot").title

    asyncio.run(helps())
