"""The wizard's fixes from trial 8: the Scales detail line with real frames' names, a method
chosen just before `c` saved, frames smaller than the reference box, an output folder of
another data set, and a folder of .fit / .fits.fz frames."""

import asyncio

import pytest
from textual.widgets import DataTable

from tui_stack import demo
from tui_stack.config import load_config
from tui_stack.tui.app import StackApp

from test_tui import SIZE, press, settle, to_step
from test_wizard_fixes import app_for, demo_dir, status  # noqa: F401  (demo_dir: the module's fixture)


@pytest.fixture(scope="module")
def long_names(tmp_path_factory):
    """The demo with the real frames' 18-character names (AKB13475I0002.fits)."""
    d = tmp_path_factory.mktemp("long")
    demo.write_demo(d, n_frames=4, size=384)
    for p in sorted((d / "frames").glob("demo_*.fits")):
        p.rename(p.with_name(f"AKB13475I{p.stem[5:]:0>4}.fits"))
    return d


def shown(widget) -> str:
    """What the widget's lines show on the screen (cut where they are cut)."""
    lines = widget.render_lines(widget.region.reset_offset)
    return " ".join("".join(seg.text for seg in line).strip() for line in lines)


def test_scales_detail_line_shows_spread_and_flags_with_real_frame_names(long_names, tmp_path):
    """Trial 8 #13: with 18-character names the growth detail line was cut before the spread
    and the flags (`stars_disagree`, the reason to distrust the frame's scale) at 80x24."""
    cfg = load_config(long_names / "demo.toml")
    cfg.set("input", "pattern", "AKB*.fits")
    cfg.set("scale", "method", "growth")
    cfg.output.directory = tmp_path / "o"
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 3)
            fr = app.ws.run.frames[1]
            assert len(fr.name) == 18
            # a frame whose star ratios disagree, beside a quality flag the registration gave
            fr.flags[:] = ["low_transparency", "stars_disagree"]
            frames = app.screen.query_one("#frames", DataTable)
            frames.focus()
            await press(pilot, "down")
            text = shown(app.screen.query_one("#detail"))
            assert fr.name in text and f"scale {fr.scale:.4f}" in text, text
            assert f"spread {fr.scale_spread:.1f}" in text, text
            assert "flags: stars_disagree" in text, text  # this step's flag first, whole

    asyncio.run(go())


def test_a_method_chosen_just_before_combine_is_saved_before_it_runs(demo_dir, tmp_path, monkeypatch):
    """Trial 8 #15: `m` then `c` within a second, the link dropped during the combine: the
    session came back with the previous method (save_soon's timer was dropped while the task
    ran). The pending save now runs as the task starts."""
    import tomllib

    from tui_stack import pipeline
    from tui_stack.config import config_from_dict
    from tui_stack.tui import session

    def stalled(run, method, params, progress):  # pipeline.combine_frames, cut in the middle
        import time

        while True:
            progress("stalled", 0, 1)
            time.sleep(0.01)

    app = app_for(demo_dir, tmp_path / "o", combine__method="median")
    seen = {}

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await settle(pilot)
            await pilot.press("m")  # not press(): its wait for the workers may outlast the save timer
            chosen = app.ws.config.combine.method
            assert chosen != "median"
            with monkeypatch.context() as m:
                m.setattr(pipeline, "combine_frames", stalled)
                await pilot.press("c")  # at once: the save timer (1 s) has not fired
                await pilot.pause(0.1)
                assert app.screen.busy
                seen["cut"] = session.load(demo_dir / "frames")  # what a dropped link leaves
                await pilot.press("escape")
                await settle(pilot)
            seen["chosen"] = chosen

    asyncio.run(go())
    cfg = config_from_dict(tomllib.loads(seen["cut"]["config"]))
    assert cfg.combine.method == seen["chosen"]


@pytest.fixture(scope="module")
def small_frames(tmp_path_factory):
    """Cut-out sized frames (96x96): smaller than SPEC's 100 px reference box."""
    from tui_stack.core import synthetic

    d = tmp_path_factory.mktemp("small")
    spec = synthetic.FieldSpec(n_frames=4, shape=(96, 96), n_stars=25, max_shift=3.0, cosmic_rays=0, seed=5)
    return synthetic.write_field(d, spec, prefix="m_")


def test_the_wizard_passes_reference_on_frames_smaller_than_the_box(small_frames, tmp_path, monkeypatch, capsys):
    """Trial 8 #11: `a` on 96x96 frames said "[reference].box = 100 px is larger than the 96x96
    reference frame" and no key changed it. A box the config does not give is half the frame's
    smaller side there; a box it gives that is larger than the frame is still exit 2, saying how."""
    import numpy as np

    from conftest import make_config
    from test_cli import assert_one_line_error, run_cli, write_config

    monkeypatch.chdir(tmp_path)
    app = StackApp(small_frames.files[0].parent)  # `tui-stack DIR`: no config
    assert app.ws.config.reference.box is None

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 1)
            await press(pilot, "a")
            assert app.ws.star_xy is not None, status(app)
            await press(pilot, "n")
            assert app.screen.STEP == 2, status(app)
            return [(f.shift_x, f.shift_y) for f in app.ws.run.frames], app.ws.run.ref_index

    shifts, ref = asyncio.run(go())
    truth = np.asarray(small_frames.shifts) - np.asarray(small_frames.shifts)[ref]
    assert np.allclose(shifts, truth, atol=0.05), (shifts, truth)

    cfg = make_config(small_frames, tmp_path / "out", input__pattern="m_*.fits", scale__radius=5.0)
    assert cfg.reference.box is None
    code, _, err = run_cli(["run", write_config(cfg, tmp_path / "c.toml"), "--quiet"], capsys)
    assert code == 0, err
    cfg.set("reference", "box", 100)  # asked for explicitly: refused, as before, and the line says how
    code, _, err = run_cli(["run", write_config(cfg, tmp_path / "b.toml"), "--quiet"], capsys)
    assert_one_line_error(code, err, "[reference].box = 100 px is larger than the 96x96", "leave the key out")


def test_w_asks_before_replacing_another_data_sets_results(demo_dir, long_names, tmp_path):
    """Trial 8 #10: the default output folder ./tui-stack-out is every data set's; `w` on a
    second one silently replaced the first one's stack and report. It asks now; a rerun of the
    same data set replaces its own set without asking, as rundir's rules say."""
    import json

    from textual.widgets import Input

    out = tmp_path / "tui-stack-out"

    def report():
        return json.loads((out / "report.json").read_text())

    def wizard(app, answers):
        async def go():
            async with app.run_test(size=SIZE) as pilot:
                await to_step(pilot, 4)
                await press(pilot, "c")
                for key in answers:
                    await press(pilot, "w")
                    if key is None:  # no question
                        assert type(app.screen).__name__ == "CombineScreen"
                        continue
                    assert type(app.screen).__name__ == "ConfirmScreen"
                    question = str(app.screen.query_one("Static").render())
                    assert str(demo_dir / "frames") in question and "Replace" in question, question
                    await press(pilot, key)
                    assert type(app.screen).__name__ == "CombineScreen"
                    if key == "n":
                        assert "not written" in status(app) and "output directory" in status(app)
                        assert app.screen.query_one("#outdir", Input).value == str(out)
        asyncio.run(go())

    wizard(app_for(demo_dir, out), [None])
    first = report()
    assert first["input"]["directory"] == str(demo_dir / "frames")
    wizard(app_for(demo_dir, out), [None])  # the same data set again: its own set, replaced
    assert report()["input"] == first["input"]
    cfg = load_config(long_names / "demo.toml")
    cfg.set("input", "pattern", "AKB*.fits")
    cfg.output.directory = out
    wizard(StackApp(cfg.input.directory, cfg), ["n"])
    assert report() == first  # not replaced
    wizard(StackApp(cfg.input.directory, cfg), ["y"])
    assert report()["input"]["directory"] == str(long_names / "frames")
    assert report()["frames"][0]["file"].startswith("AKB13475I")


def test_a_folder_of_fit_frames_is_read_with_a_glob_that_takes_them(small_frames, tmp_path, capsys):
    """Trial 8 #8: `tui-stack DIR` on .fit (or .fits.fz, .fits.gz) frames found nothing with the
    default `*.fits`, and the message sent the user to `/`, the header filter. The wizard takes
    the glob of the folder's FITS names and says so; `g` edits the glob; `run` names the pattern."""
    import shutil

    from test_cli import assert_one_line_error, run_cli, write_config
    from conftest import make_config

    fit = tmp_path / "fit"
    fit.mkdir()
    for p in small_frames.files:
        shutil.copy(p, fit / (p.stem + ".fit"))
    (fit / "notes.txt").write_text("log")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("log")

    async def go(directory):
        app = StackApp(directory)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            seen = status(app), len(app.ws.usable_infos()), app.ws.config.input.pattern
            await press(pilot, "g")
            assert app.focused is not None and app.focused.id == "pattern"
            return seen

    text, n, pattern = asyncio.run(go(fit))
    assert (n, pattern) == (len(small_frames.files), "*.fit"), text
    assert "'*.fits'" in text and "'*.fit'" in text and "g edits" in text, text
    text, n, pattern = asyncio.run(go(empty))
    assert n == 0 and pattern == "*.fits" and "no files match '*.fits'" in text and "g edits the glob" in text, text

    cfg = make_config(small_frames, tmp_path / "out", input__directory=str(fit), input__pattern="*.fits")
    code, _, err = run_cli(["run", write_config(cfg, tmp_path / "c.toml"), "--quiet"], capsys)
    assert_one_line_error(code, err, "no files match '*.fits'", "it holds 4 '*.fit' files", '[input] pattern = "*.fit"')
