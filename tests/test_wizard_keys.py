"""Every key on every screen at 80x24, driven by Textual's pilot: focus, help, the command
palette, the star picker, a terminal too small, NO_COLOR, and what --resume brings back."""

import asyncio

import numpy as np
import pytest
from textual.widgets import DataTable, Input

from tui_stack import demo
from tui_stack.config import load_config
from tui_stack.tui.app import StackApp
from tui_stack.tui.common import STEPS, screen_bindings
from tui_stack.tui.preview import ImageView

from test_tui import SIZE, press, settle, to_step


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    demo.write_demo(d, n_frames=4, size=512)
    return d


@pytest.fixture()
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    return tmp_path / "state"


def app_for(demo_dir, tmp_path, sections=None):
    cfg = load_config(demo_dir / "demo.toml")
    cfg.output.directory = tmp_path / "out"
    for (section, key), value in (sections or {}).items():
        cfg.set(section, key, value)
    return StackApp(cfg.input.directory, cfg)


def status(app) -> str:
    return str(app.screen.query_one("#status").render())


async def each_screen(pilot):
    """(step, screen) for every wizard step in turn, `n` between them."""
    await settle(pilot)
    for step in range(len(STEPS)):
        if step:
            await press(pilot, "n")
        assert pilot.app.screen.STEP == step
        yield step, pilot.app.screen


def test_tab_reaches_every_field_and_table_on_every_screen(demo_dir, tmp_path, state):
    """Tab and shift+Tab go through every input, table and preview of each screen, in turn."""
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            for step in range(len(STEPS)):
                if step:
                    await press(pilot, "n")
                assert app.screen.STEP == step
                screen = app.screen
                want = {w.id for w in screen.query("DataTable, Input, ImageView") if w.can_focus and w.id != "cutout"}
                seen = set()
                for _ in range(len(want) + 2):
                    await pilot.press("tab")
                    seen.add(app.focused.id)
                assert want <= seen, (STEPS[step], want - seen)
                back = set()
                for _ in range(len(want) + 2):
                    await pilot.press("shift+tab")
                    back.add(app.focused.id)
                assert want <= back
                # leave the screen with a table or the preview focused (letters go to fields)
                screen.query("DataTable, ImageView").first().focus()
                await pilot.pause()

    asyncio.run(go())


def test_scales_tables_take_the_cursor_and_d_removes_the_highlighted_star(demo_dir, tmp_path, state):
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 3)
            run = app.ws.run
            frames = app.screen.query_one("#frames", DataTable)
            stars = app.screen.query_one("#stars", DataTable)
            await pilot.press("tab")
            assert app.focused is frames
            await press(pilot, "down", 2)  # the third frame: its ratios in the stars table
            fr, ref = run.frames[2], run.frames[run.ref_index]
            ratio = ref.star_flux[0] / fr.star_flux[0]
            assert stars.get_row_at(0)[3] == f"{ratio:.4f}"
            assert fr.name in str(app.screen.query_one("#detail").render())
            await pilot.press("tab")
            assert app.focused is stars
            before = list(run.comparison_stars)
            await press(pilot, "down")
            await press(pilot, "d")  # removes the second star, not the first
            assert [tuple(s) for s in run.comparison_stars] == [tuple(s) for k, s in enumerate(before) if k != 1]

    asyncio.run(go())


def test_combine_fields_are_edited_from_the_keyboard(demo_dir, tmp_path, state):
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 4)
            await press(pilot, "m")  # median -> minmax
            assert app.ws.config.combine.method == "minmax"
            while app.focused.id != "nlow":
                await pilot.press("tab")
            await pilot.press("ctrl+u", "1")  # clear the field, type 1
            await pilot.press("tab")
            await pilot.press("ctrl+u", "0")
            while app.focused.id != "results":
                await pilot.press("tab")
            await press(pilot, "c")
            assert app.ws.config.combine.nlow == 1 and app.ws.config.combine.nhigh == 0
            assert app.ws.run.combined[-1].method == "minmax"

    asyncio.run(go())


def test_help_lists_every_key_and_the_palette_every_action(demo_dir, tmp_path, state):
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            async for step, screen in each_screen(pilot):
                bindings = screen_bindings(screen)
                assert len(bindings) >= 6
                await pilot.press("f1" if step % 2 else "question_mark")
                await pilot.pause()
                assert type(app.screen).__name__ == "HelpScreen"
                text = "\n".join(" ".join(x) if isinstance(x, tuple) else x for x in app.screen.lines)
                for b in bindings:
                    assert b.description in text, (STEPS[step], b.description)
                await pilot.press("escape")
                await pilot.pause()
                assert app.screen is screen
                commands = {c.title for c in app.get_system_commands(screen)}
                assert {b.description for b in bindings} <= commands
                keyline = str(screen.query_one("#keys").render())
                assert "? help" in keyline and len(keyline) <= SIZE[0]

    asyncio.run(go())


def test_palette_runs_an_action(demo_dir, tmp_path, state):
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            cmd = next(c for c in app.get_system_commands(app.screen) if c.title.startswith("Next step"))
            cmd.callback()
            await settle(pilot)
            assert app.screen.STEP == 1

    asyncio.run(go())


def test_star_picker_jumps_between_detected_stars_and_confirms_the_pick(demo_dir, tmp_path, state):
    """., g and enter at 80x24: the cursor lands on detected stars with their numbers shown;
    the picked one is centroided, marked and said to be chosen."""
    app = app_for(demo_dir, tmp_path, {("reference", "star"): "auto"})

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 1)
            screen = app.screen
            view = screen.preview()
            assert "zoom 1x" in view.border_title
            assert "no star chosen" in str(screen.query_one("#chosen").render())
            cands = screen._stars
            assert len(cands) > 20 and all(a.peak >= b.peak for a, b in zip(cands, cands[1:]))
            await press(pilot, "full_stop")
            assert view.cursor == (round(cands[0].x), round(cands[0].y))
            panel = str(screen.query_one("#starinfo").render())
            assert f"star 1/{len(cands)}" in panel and "peak" in panel and "FWHM" in panel and "isolated" in panel
            assert ("SATURATED" in panel) == cands[0].saturated
            await press(pilot, "full_stop")
            await press(pilot, "comma")
            assert view.cursor == (round(cands[0].x), round(cands[0].y))
            await press(pilot, "g")
            k = screen._star_k
            assert cands[k].good and not cands[k].saturated
            await press(pilot, "enter")
            xy = app.ws.star_xy
            assert xy is not None and np.hypot(xy[0] - cands[k].x, xy[1] - cands[k].y) < 1.5
            assert "chosen ✓" in str(screen.query_one("#chosen").render())
            assert "chosen" in status(app)
            assert view.markers == {(round(xy[0]), round(xy[1])): ("X", "green")}
            await press(pilot, "plus")
            assert "zoom 2x" in view.border_title
            await press(pilot, "0")
            assert "zoom 1x" in view.border_title

    asyncio.run(go())


def test_a_saturated_star_is_refused_with_the_reason(demo_dir, tmp_path, state):
    app = app_for(demo_dir, tmp_path, {("reference", "star"): "auto"})

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 1)
            sat = [k for k, c in enumerate(app.screen._stars) if c.saturated]
            if not sat:
                pytest.skip("the demo field has no saturated star")
            c = app.screen._stars[sat[0]]
            app.screen.preview().set_cursor(round(c.x), round(c.y))
            await press(pilot, "enter")
            assert app.ws.star_xy is None and "saturated" in status(app)

    asyncio.run(go())


def test_a_terminal_too_small_says_so(demo_dir, tmp_path, state):
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=(60, 20)) as pilot:
            await settle(pilot)
            assert app.screen.has_class("too-small")
            msg = str(app.screen.query_one("#toosmall").render())
            assert "60x20" in msg and "80x24" in msg
            assert app.screen.query_one("#files").display is False or not app.screen.query_one("#files").region

    asyncio.run(go())


def test_no_color_start_to_finish(demo_dir, tmp_path, state, monkeypatch):
    """NO_COLOR=1 used to end in an internal error on `n` (a segment without a style)."""
    monkeypatch.setenv("NO_COLOR", "1")
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.screen.has_class("plain")
            await press(pilot, "n", 4)
            assert app.screen.STEP == 4
            view = app.screen.query_one("#preview", ImageView)
            assert view.mode == "ascii"
            await press(pilot, "c")
            await press(pilot, "w")
            assert (tmp_path / "out" / "combined_median.fits").exists()

    asyncio.run(go())
    assert app.return_code in (None, 0)


def test_resume_restores_rows_method_and_fields(demo_dir, tmp_path, state):
    import tomllib

    from tui_stack.config import config_from_dict
    from tui_stack.tui import session

    app = app_for(demo_dir, tmp_path)

    async def first():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            await press(pilot, "down", 2)  # the third frame of the shifts table
            await press(pilot, "n", 2)
            await press(pilot, "m", 2)  # median -> minmax -> sigmaclip, not run
            app.screen.query_one("#sigma", Input).value = "2.5"
            app.save_session()

    asyncio.run(first())
    saved = session.load()
    assert saved["step"] == 4
    app2 = StackApp(demo_dir / "frames", config_from_dict(tomllib.loads(saved["config"])), resume=saved)

    async def second():
        async with app2.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            assert app2.screen.STEP == 4
            assert app2.ws.config.combine.method == "sigmaclip"
            assert "sigmaclip" in str(app2.screen.query_one("#method").render())
            assert app2.screen.query_one("#sigma", Input).value == "2.5"
            await press(pilot, "b", 2)
            assert app2.screen.query_one("#shifts", DataTable).cursor_row == 2

    asyncio.run(second())


def test_one_session_per_user_and_directory(tmp_path, state, monkeypatch):
    """Two observers on one account, each on their own frames: two sessions. A second wizard on
    the same frames while the first runs saves nothing."""
    import os
    import subprocess
    import sys

    from tui_stack.config import Config
    from tui_stack.tui import session
    from tui_stack.tui.state import WizardState

    a, b = Config(), Config()
    a.set("input", "directory", tmp_path / "night1")
    b.set("input", "directory", tmp_path / "night2")
    pa = session.save(WizardState(config=a), 1)
    pb = session.save(WizardState(config=b), 2)
    assert pa != pb and pa.exists() and pb.exists()
    assert session.load(tmp_path / "night1")["step"] == 1
    assert session.load(tmp_path / "night2")["step"] == 2
    assert session.load()["step"] == 2  # --resume without a directory: the newest
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pa.with_suffix(".lock").write_text(str(other.pid))  # another live wizard holds night1
        assert session.save(WizardState(config=a), 3) is None
        assert session.load(tmp_path / "night1")["step"] == 1
    finally:
        other.kill()
        other.wait()
    assert session.save(WizardState(config=a), 3) == pa  # its holder is gone: ours now
    assert int(pa.with_suffix(".lock").read_text()) == os.getpid()
    session.release(pa)
    assert not pa.with_suffix(".lock").exists()


def test_help_is_not_a_folder(capsys):
    from tui_stack import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["help"])
    assert exc.value.code == 0 and "usage: tui-stack" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["help", "run"])
    assert "usage: tui-stack run" in capsys.readouterr().out
    assert cli.main(["help", "nosuch"]) == 2 and "'nosuch'" in capsys.readouterr().err


def test_another_selection_goes_through_the_pipeline_state(demo_dir, tmp_path, state):
    """A frame skipped on Files after the shifts were measured goes through the pipeline's
    RunState (set_used): out of the stack, the shifts kept. Back and forth keeps the state."""
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            run = app.ws.run
            frames = list(run.frames)
            assert len(run.files) == 4 and frames
            await press(pilot, "b", 2)
            await press(pilot, "n", 2)  # nothing changed: same state, same shifts
            assert app.ws.run is run and run.frames == frames
            await press(pilot, "b", 2)
            await press(pilot, "down")
            await press(pilot, "space")  # skip the second frame
            await press(pilot, "n", 2)
            assert app.ws.run is run and run.frames == frames  # the shifts are not measured again
            assert "excluded" in run.frames[1].flags and not run.frames[1].used
            await press(pilot, "n", 2)
            await press(pilot, "c")
            assert run.combined[-1].n_frames == 3

    asyncio.run(go())


def test_the_palette_does_not_blink(demo_dir, tmp_path, state):
    """ctrl+p opens Textual's command palette with the screen's actions; its field does not
    blink (a blinking cursor sends ~1.8 KB/s while idle)."""
    from textual.command import CommandPalette

    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("ctrl+p")
            await pilot.pause(0.3)
            assert isinstance(app.screen, CommandPalette)
            assert all(not f.cursor_blink for f in app.screen.query(Input))

    asyncio.run(go())


def test_help_wraps_a_long_description_under_itself():
    """At 80 columns a long description goes on under the description, not under the keys."""
    from rich.console import Console

    from tui_stack.tui.common import KEY_WIDTH, HelpScreen

    desc = "Cursor to the nearest good star: bright, unsaturated, isolated, as the automatic pick takes them"
    body = HelpScreen("t", ["What the screen is for.", "", ("g", desc), ("x, space", "Use or skip")])._body()
    console = Console(width=60, record=True, color_system=None)
    console.print(body)
    lines = [ln.rstrip() for ln in console.export_text().splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("g "))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("x, space"))
    assert end - start >= 2  # it did wrap
    assert all(ln.startswith(" " * (KEY_WIDTH + 1)) for ln in lines[start + 1:end])
    assert " ".join(ln[KEY_WIDTH + 1:].strip() for ln in lines[start:end]) == desc


NAVIGATION = {"n", "b", "q", "escape", "question_mark", "f1", "tab", "shift+tab"}


def test_every_key_of_every_screen_runs_without_an_internal_error(demo_dir, tmp_path, state):
    """Each screen's keys pressed once, as a new user trying them would (on frames without
    calibration frames, where `k` used to end the wizard with an internal error). Keys that
    leave the screen, quit or open help are covered by the tests above."""
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            async for step, screen in each_screen(pilot):
                for b in screen_bindings(screen):
                    for key in b.key.split(","):
                        if key in NAVIGATION or key.startswith(("ctrl+", "super+")):
                            continue
                        await press(pilot, key)
                        while app.screen is not screen and type(app.screen).__name__ != "_Default":
                            await press(pilot, "escape")  # a dialog or an input the key opened
                        if app.focused is not None and isinstance(app.focused, Input):
                            screen.focus_next()
                        assert app.return_code is None, (STEPS[step], key)
                        assert "internal error" not in status(app), (STEPS[step], key, status(app))

    asyncio.run(go())


def test_shift_mode_switches_to_subpixel_and_back_and_is_saved(demo_dir, tmp_path, state):
    """`s` on Shifts: integer <-> subpixel, the shifts measured again (applied shifts become
    fractional), and the mode goes into the saved config."""
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            run = app.screen.ws.run
            assert run.config.shift.mode == "integer" and "integer mode" in status(app)
            assert all(float(f.applied_shift_x).is_integer() for f in run.frames if f.used)
            await press(pilot, "s")
            run = app.screen.ws.run
            assert run.config.shift.mode == "subpixel" and "subpixel mode" in status(app)
            assert any(not float(f.applied_shift_x).is_integer() for f in run.frames if f.used)
            assert 'mode = "subpixel"' in app.screen.ws.config_toml()
            await press(pilot, "s")
            assert app.screen.ws.run.config.shift.mode == "integer"

    asyncio.run(go())


def test_escape_and_enter_leave_a_field_so_the_screen_keys_work_again(demo_dir, tmp_path, state):
    """After `/` on Files, escape leaves the filter (the next `n` used to go into it); on
    Combine, enter or escape leaves the output folder field (a `w` used to become part of the path)."""
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "slash")
            assert isinstance(app.focused, Input)
            before = app.focused.value
            await press(pilot, "escape")
            assert not isinstance(app.focused, Input)
            await press(pilot, "n")
            assert app.screen.STEP == 1
            assert app.screen.ws.config.input.select == {"PICTTYPE": 1} and before == "PICTTYPE=1"
            await press(pilot, "n", 3)
            assert app.screen.STEP == 4
            field = app.screen.query_one("#outdir", Input)
            for leave in ("enter", "escape"):
                field.focus()
                await pilot.pause()
                await press(pilot, "end")
                await press(pilot, "x")
                await press(pilot, leave)
                assert not isinstance(app.focused, Input), leave
                await press(pilot, "backspace")  # the table has it now: the field keeps its x
                assert field.value.endswith("x")
                field.value = field.value[:-1]

    asyncio.run(go())


def test_a_frame_of_another_size_goes_on_as_run_takes_it(demo_dir, tmp_path, state):
    """A frame cut to a smaller size (a subframe readout) is registered onto the reference by
    run; the Files screen used to refuse the set ("differ in shape"), a second owner of that
    decision. Now the wizard goes on and the frame is used, without a 'turned' flag."""
    import shutil

    from astropy.io import fits

    frames = tmp_path / "frames"
    shutil.copytree(demo_dir / "frames", frames)
    path = sorted(frames.glob("demo_0*.fits"))[-1]
    data, hdr = fits.getdata(path, header=True)
    fits.writeto(path, data[40:400, 60:460], hdr, overwrite=True)
    cfg = load_config(demo_dir / "demo.toml")
    cfg.input.directory, cfg.output.directory = frames, tmp_path / "out"
    app = StackApp(frames, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            fr = next(f for f in app.screen.ws.run.frames if f.path == path)
            assert fr.used and "turned" not in fr.flags, (fr.flags, status(app))

    asyncio.run(go())


def test_calibration_keys_say_the_header_filter_hides_the_calibration_frames(demo_dir, tmp_path, state):
    """The demo's folder holds a flat (PICTTYPE 2) that the filter PICTTYPE=1 leaves out of the
    table: `c` and `k` said "no bias, dark or flat frames in this directory"."""
    assert (demo_dir / "frames" / "demo_flat.fits").exists()
    app = app_for(demo_dir, tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            for key in ("c", "k"):
                await press(pilot, key)
                assert status(app) == "no bias, dark or flat frames pass the filter PICTTYPE=1 (/ edits it)"

    asyncio.run(go())
