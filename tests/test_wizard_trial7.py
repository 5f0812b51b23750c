"""The wizard's fixes from trial 7: a focused field owns the letter keys and the key line says
so; a cut re-measure never leaves a session whose config and tables disagree; Files proposes
only calibration it can build."""

import asyncio
import tomllib

import numpy as np
import pytest
from textual.widgets import Input

from tui_stack.config import config_from_dict

from test_tui import SIZE, press, settle, to_step
from test_wizard_fixes import app_for, demo_dir, status  # noqa: F401  (demo_dir: the module's fixture)


def keyline(app) -> str:
    return str(app.screen.query_one("#keys").render())


async def tab_to(pilot, field_id: str) -> Input:
    for _ in range(12):
        focused = pilot.app.screen.focused
        if focused is not None and focused.id == field_id:
            return focused
        await press(pilot, "tab")
    raise AssertionError(f"tab never reached #{field_id}")


def test_a_focused_field_shows_its_own_keys_and_keeps_its_text(demo_dir, tmp_path, monkeypatch):
    """Trial 7 #2: Tab onto Combine's output field selected the whole path and the key line still
    offered `w write`, so `w` replaced the path and the next `w` wrote into ./w."""
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    out = tmp_path / "out"
    app = app_for(demo_dir, out)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "c")
            assert "w write" in keyline(app)
            field = await tab_to(pilot, "outdir")
            path = field.value
            assert field.selection.is_empty  # focus does not select the path for the next key to replace
            line = keyline(app)
            assert "enter" in line and "escape" in line and "F1" in line
            assert "w write" not in line and "c combine" not in line and "? help" not in line
            assert " q quit" not in f" {line}" and "ctrl+q quit" in line
            await press(pilot, "w")
            assert field.value == path + "w"  # typed, not the whole path replaced
            await press(pilot, "f1")  # help is still reachable from a field
            assert type(app.screen).__name__ == "HelpScreen"
            await press(pilot, "escape")
            assert app.screen.focused is field
            await press(pilot, "backspace")
            await press(pilot, "escape")  # leaves the field: the screen's keys are back
            assert not isinstance(app.screen.focused, Input)
            assert "w write" in keyline(app)
            await press(pilot, "w")
            assert not app.ws.dirty, status(app)
            nlow = await tab_to(pilot, "nlow")
            before = nlow.value
            await press(pilot, "q")  # not a quit, and not the whole number replaced
            assert app.is_running and nlow.value == before
            await press(pilot, "9")
            assert nlow.value == before + "9"
            await press(pilot, "enter")  # enter applies the field and leaves it
            assert app.ws.config.combine.nlow == int(before + "9") and status(app).startswith("nlow ")
            assert not isinstance(app.screen.focused, Input)
            nlow = await tab_to(pilot, "nlow")
            nlow.value = "-"
            await press(pilot, "enter")  # the config's own check speaks at once; the field keeps focus
            assert "[combine].nlow" in status(app) and app.screen.focused is nlow

    asyncio.run(go())
    assert list(here.iterdir()) == []  # nothing written where the wizard was started
    assert (out / "tui-stack.toml").is_file()


def stalled(run, progress, *args, **kwargs):
    """A re-measure cut in the middle: it runs until cancelled (escape, or the app closing)."""
    import time

    while True:
        progress("stalled", 0, 1)
        time.sleep(0.01)


@pytest.mark.parametrize("step, key, section, option, before", [
    (2, "s", "shift", "mode", "integer"),  # the trial's case: integer -> subpixel on Shifts
    (3, "m", "scale", "method", "fixed"),
    (3, "greater_than_sign", "scale", "radius", 15.0),
    (3, "R", "scale", "radius", 15.0),
])
def test_a_cut_remeasure_never_saves_a_config_with_the_old_tables(demo_dir, tmp_path, monkeypatch, step, key,
                                                                  section, option, before):
    """Trial 7 #3: a dropped link during `s` left a session saying subpixel with the integer
    shifts; --resume stacked them integer-shifted and labelled subpixel. The session on disk
    keeps the old setting with the old tables until the new ones are in; escape puts it back."""
    from tui_stack import pipeline
    from tui_stack.tui import session

    app = app_for(demo_dir, tmp_path / "o", shift__mode="integer")
    seen = {}

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, step)
            assert getattr(getattr(app.ws.config, section), option) == before
            seen["tables"] = [(f.applied_shift_x, f.applied_shift_y, f.scale) for f in app.ws.run.frames]
            with monkeypatch.context() as m:
                m.setattr(pipeline, "register", stalled)
                m.setattr(pipeline, "measure_scales", stalled)
                await pilot.press(key)
                await pilot.pause(0.1)
                assert app.screen.busy
                app.save_session()  # what a timer saves while it runs, and a dropped link leaves
                seen["cut"] = session.load(demo_dir / "frames")
                await pilot.press("escape")  # cancelled: the setting the tables were measured with is back
                await settle(pilot)
            assert getattr(getattr(app.ws.config, section), option) == before
            assert "cancelled" in status(app) and "again" in status(app)

    asyncio.run(go())
    cfg = config_from_dict(tomllib.loads(seen["cut"]["config"]))
    assert getattr(getattr(cfg, section), option) == before  # not the setting still being measured
    tables = [(f["applied_shift_x"], f["applied_shift_y"], f["scale"]) for f in seen["cut"]["run"]["frames"]]
    assert np.allclose(np.array(tables, float), np.array(seen["tables"], float), equal_nan=True)
    saved = session.load(demo_dir / "frames")  # after the escape
    cfg = config_from_dict(tomllib.loads(saved["config"]))
    assert getattr(getattr(cfg, section), option) == before


@pytest.mark.parametrize("section, option, other, redo", [
    ("shift", "mode", "subpixel", 2), ("scale", "method", "growth", 3), ("scale", "radius", 12.0, 3)])
def test_a_session_saved_with_a_setting_its_tables_were_not_measured_in_is_measured_again(
        demo_dir, tmp_path, section, option, other, redo):
    """A session saved by an older version cut in a re-measure (trial 7 #3: subpixel in the
    config, integer shifts in the tables): --resume measures again in the saved setting."""
    from tui_stack.tui import session

    from test_wizard_fixes import resumed

    app = app_for(demo_dir, tmp_path / "o", shift__mode="integer")

    async def first():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)

    asyncio.run(first())
    saved = session.load(demo_dir / "frames")
    cfg = config_from_dict(tomllib.loads(saved["config"]))
    cfg.set(section, option, other)
    from tui_stack.config import config_to_toml

    saved["config"] = config_to_toml(cfg)  # the setting saved, its re-measure cut
    app2 = resumed(demo_dir, saved)

    async def second():
        async with app2.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            assert app2.screen.STEP == redo
            run = app2.ws.run
            assert run.measured_otherwise(app2.ws.config) is None
            if redo == 2:
                assert any(f.applied_shift_x != round(f.applied_shift_x) for f in run.frames)
                assert "subpixel mode" in status(app2)
            else:
                assert all(np.isfinite(f.scale) for f in run.frames if f.used)

    asyncio.run(second())


def test_files_proposes_only_calibration_it_can_build(demo_dir, tmp_path, monkeypatch):
    """Trial 7 #6: `tui-stack DIR` on the demo's frames (one flat) proposed "flat 1 (sigmaclip)"
    and `n` then refused it ("1 frames ... too few for sigmaclip")."""
    from tui_stack.core import calibrate as cal
    from tui_stack.core.combine_params import CombineParams
    from tui_stack.tui.app import StackApp

    monkeypatch.chdir(tmp_path)
    app = StackApp(demo_dir / "frames")  # a fresh start on the folder, no config

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            panel = str(app.screen.query_one("#cal-groups").render())
            assert "flat V 2s x1" in panel
            assert not app.ws.config.calibrate.any and "calibration off" in panel
            assert "flat: 1 frame, too few for sigmaclip" in " ".join(panel.split())
            await press(pilot, "n")  # no refusal of a set the wizard proposed itself
            assert app.screen.STEP == 1, status(app)

    asyncio.run(go())
    frames = [(p, {"IMAGETYP": "flat" if "flat" in p.name else "light"}, 1.0, "V")
              for p in sorted((demo_dir / "frames").glob("*.fits"))]
    assert cal.propose(frames, CombineParams(method="average")).flat  # a method that works with one frame takes it
    assert not cal.propose(frames, CombineParams(method="sigmaclip")).flat
    one = cal.too_few("flat V", ["demo_flat.fits"], CombineParams(method="sigmaclip"))
    assert one == "flat V: 1 frame (demo_flat.fits) is too few for sigmaclip, which needs at least 3"
    assert "2 frames (a...) are too few" in cal.too_few("bias", ["a", "b"], CombineParams(method="median"))


@pytest.mark.parametrize("take", [False, True])
def test_a_session_held_by_another_wizard_is_offered_and_otherwise_marked_unsaved(demo_dir, tmp_path, take):
    """Trial 7 report #5: a second wizard on a directory whose session an orphaned one still
    holds (a dropped link the server has not noticed) showed a 5-second toast, then nothing.
    Now it asks to take the session over; if not, the step bar says "not saved" for good."""
    import os

    from tui_stack.tui import session

    path = session.session_path(demo_dir / "frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".lock").write_text(str(os.getppid()))  # a live process that is not this one
    app = app_for(demo_dir, tmp_path / "o")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert type(app.screen).__name__ == "ConfirmScreen"
            assert f"pid {os.getppid()}" in str(app.screen.question)
            await press(pilot, "y" if take else "n")
            bar = str(app.screen.query_one("StepBar").render())
            if take:
                assert "not saved" not in bar
                assert session.load(demo_dir / "frames")["step"] == 0  # saved from now on
                assert int(path.with_suffix(".lock").read_text()) == os.getpid()
            else:
                assert "not saved" in bar and not path.exists()
                await press(pilot, "n")
                assert "not saved" in str(app.screen.query_one("StepBar").render())  # on every screen

    try:
        asyncio.run(go())
    finally:
        path.with_suffix(".lock").unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def test_scales_deleting_every_star_clears_the_table_and_says_what_to_do(demo_dir, tmp_path):
    """Trial 7 report #8: deleting the stars one by one left the frames table with the last
    star's scales and the status "1 stars, 0 flagged" while `n` and `r` said there were none."""
    from textual.widgets import DataTable

    app = app_for(demo_dir, tmp_path / "o")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 3)
            n = len(app.ws.run.comparison_stars)
            assert n > 1
            await press(pilot, "d", n - 1)
            assert status(app).startswith("1 star,")
            await press(pilot, "d")
            frames = app.screen.query_one("#frames", DataTable)
            assert all(str(frames.get_row_at(k)[1]) in ("-", "nan", "") for k in range(frames.row_count))
            assert "no comparison stars" in status(app)
            await press(pilot, "n")
            assert app.screen.STEP == 3

    asyncio.run(go())


def test_shifts_status_names_the_flagged_frames_without_a_cut_word(demo_dir, tmp_path):
    """Trial 7 report #10: at 80x24 the Shifts status was cut inside a word ("f…gged:")."""
    app = app_for(demo_dir, tmp_path / "o", shift__mode="integer")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            for fr in app.ws.run.frames:
                fr.flags = fr.flags + ["few_stars"]
            app.screen._fill()
            text = status(app)
            assert "…" not in text and len(text) <= SIZE[0], text
            assert text == "4 of 4 frames used, integer mode (s); 4 flagged. n: scales"
            app.ws.run.frames[0].flags.remove("few_stars")
            app.screen._fill()
            assert status(app) == "4 of 4 frames used, integer mode (s); 3 flagged. n: scales"

    asyncio.run(go())


def test_write_refuses_stacks_made_with_other_parameters_than_the_fields(demo_dir, tmp_path):
    """nlow changed in its field after `c`: `w` wrote the stack of the old nlow beside a
    tui-stack.toml with the new one, from which `run` gives another stack."""
    out = tmp_path / "o"
    app = app_for(demo_dir, out, combine__method="minmax", combine__nlow=1, combine__nhigh=1)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "c")
            assert [c.method for c in app.ws.run.combined] == ["minmax"]
            app.screen.query_one("#nlow", Input).value = "0"
            await press(pilot, "w")
            assert "nlow" in status(app) and "c combines again" in status(app), status(app)
            assert app.ws.dirty and not out.exists()
            await press(pilot, "c")  # made again with nlow 0: written
            await press(pilot, "w")
            assert not app.ws.dirty, status(app)

    asyncio.run(go())


def test_combine_results_show_every_method_name_whole(demo_dir, tmp_path):
    """Trial 7 report #10: "winsorized" was cut to "winsorize" in the results table."""
    from textual.widgets import DataTable

    from tui_stack.core.combine import METHODS

    app = app_for(demo_dir, tmp_path / "o", combine__method="winsorized")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "c")
            table = app.screen.query_one("#results", DataTable)
            width = table.ordered_columns[0].width
            assert width >= max(len(m) for m in METHODS) + 1  # a restored row: "winsorized*"
            assert table.get_row_at(0)[0] == "winsorized"
            # the table fits its panel at 80 columns: no horizontal scroll
            assert table.virtual_size.width <= table.scrollable_content_region.width

    asyncio.run(go())


def test_scales_detail_line_of_a_growth_frame_fits_its_two_lines(demo_dir, tmp_path):
    """Trial 7 report #10: at 80x24 the detail line of a `growth` frame was cut before the
    spread of its star ratios."""
    from textual.widgets import DataTable

    app = app_for(demo_dir, tmp_path / "o", scale__method="growth")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 3)
            frames = app.screen.query_one("#frames", DataTable)
            frames.focus()
            await press(pilot, "down")
            detail = app.screen.query_one("#detail")
            text = str(detail.render())
            fr = app.ws.run.frames[1]
            assert f"spread {fr.scale_spread:.1f}" in text and f"{fr.psf_fwhm:.2f}" in text
            lines = detail.render_lines(detail.region.reset_offset)  # what the two lines show
            shown = " ".join("".join(seg.text for seg in line).strip() for line in lines)
            assert f"spread {fr.scale_spread:.1f}" in shown, shown

    asyncio.run(go())


def test_combine_status_names_the_std_region_and_a_minmax_that_is_the_median(demo_dir, tmp_path):
    """Trial 7 report #10: minmax with nlow = nhigh = 3 of 8 frames is the median, and the std
    column does not say which region it measures: the status after `c` says both."""
    app = app_for(demo_dir, tmp_path / "o", combine__method="minmax", combine__nlow=1, combine__nhigh=1)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "c")  # 4 frames less 1 + 1: the middle 2, the median
            assert "the middle 2 of 4 kept, as the median would" in status(app), status(app)
            by = {c.method: c for c in app.ws.run.combined}
            await press(pilot, "m")  # average
            assert app.ws.config.combine.method != "minmax"
            await press(pilot, "c")
            y0, y1, x0, x1 = app.ws.run.combined[-1].stats.region
            assert f"std of [{y0}:{y1},{x0}:{x1}]" in status(app), status(app)
            assert "minmax" in by

    asyncio.run(go())


def test_a_long_error_is_shown_whole_on_up_to_three_lines(demo_dir, tmp_path):
    """Trial 7 report #10: the output field = the input folder was refused, but the status line
    was cut mid-sentence at 80 columns ("matches the…ld take it for a frame")."""
    app = app_for(demo_dir, tmp_path / "o", input__pattern="*.fits")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "c")
            app.screen.query_one("#outdir", Input).value = str(demo_dir / "frames")
            await press(pilot, "w")
            text = status(app)
            assert "next run would take it for a frame" in text and "…" not in text, text
            assert len(text) > 2 * SIZE[0] - 2  # longer than two lines hold
            assert app.screen.query_one("#statusrow").size.height == 3

    asyncio.run(go())


def test_a_task_replaced_by_a_newer_one_neither_clears_its_busy_flag_nor_keeps_running(demo_dir, tmp_path):
    """A cut-out being loaded (quiet) is replaced by a measure (exclusive workers): the old
    task's end cleared the screen's worker, so `busy` read False while the measure ran (Files
    and Reference keys then started work beside it), and its progress checked the new worker's
    cancel flag, so the replaced task ran to its end."""
    import threading

    app = app_for(demo_dir, tmp_path / "out")
    gates = [threading.Event(), threading.Event()]
    seen = {}

    started = threading.Event()

    def first(progress):
        started.set()
        gates[0].wait(5)
        try:
            progress("cut-out", 1, 2)  # cancelled by now: this stops it
        except Exception as exc:
            seen["first"] = type(exc).__name__
            raise
        seen["first"] = "ran on"

    def second(progress):
        gates[1].wait(5)
        return "measured"

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            screen = app.screen
            screen.run_task("cut-out", first, quiet=True)
            for _ in range(50):
                await pilot.pause(0.02)
                if started.is_set():
                    break
            screen.run_task("measure", second, done=lambda r: seen.setdefault("done", r))
            gates[0].set()
            for _ in range(50):
                await pilot.pause(0.02)
                if "first" in seen:
                    break
            await pilot.pause(0.05)
            assert seen["first"] == "Cancelled"
            assert screen.busy, "the measure still runs"
            gates[1].set()
            for _ in range(50):
                await pilot.pause(0.02)
                if "done" in seen:
                    break
            assert seen["done"] == "measured" and not screen.busy

    asyncio.run(go())


def test_a_remeasure_key_keeps_the_rules_between_keys(demo_dir, tmp_path):
    """`s` to integer mode while [shift] transform = "similarity" (which resamples: a rule of the
    config, which `run` refuses): the wizard says why and stays in subpixel mode; it checked
    the mode key alone."""
    app = app_for(demo_dir, tmp_path / "out", shift__mode="subpixel", shift__transform="similarity")

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            await press(pilot, "s")
            assert app.ws.config.shift.mode == "subpixel"
            assert "similarity" in status(app)

    asyncio.run(go())
