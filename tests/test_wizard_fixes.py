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
    app2 = StackApp(demo_dir / "frames", config_from_dict(tomllib.loads(saved["config"])), resume=saved)

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
