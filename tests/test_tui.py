"""The wizard driven by Textual's pilot, at 80x24: whole runs, errors, and the saved config."""

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import demo, pipeline
from tui_stack.config import load_config
from tui_stack.tui.app import StackApp

SIZE = (80, 24)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("wizard")
    demo.write_demo(d, n_frames=5, size=512)
    return d


async def settle(pilot):
    """Wait until no worker has run for a few event-loop rounds: workers start from messages
    (a highlighted row loads its cut-out), so one wait is not enough."""
    from textual.worker import WorkerCancelled

    quiet = 0
    while quiet < 4:
        try:
            await pilot.app.workers.wait_for_complete()
        except WorkerCancelled:  # an exclusive task replaced another: normal
            pass
        await pilot.pause(0.02)
        quiet = 0 if any(w.is_running for w in pilot.app.workers) else quiet + 1


async def press(pilot, key: str, times: int = 1):
    """A key, then wait for the work it starts; `times` over."""
    for _ in range(times):
        await pilot.press(key)
        await settle(pilot)


async def to_step(pilot, step: int):
    """From the first screen, once it has settled, `n` up to wizard step `step`."""
    await settle(pilot)
    await press(pilot, "n", step)
    assert pilot.app.screen.STEP == step


async def drive_to_combine(pilot):
    await settle(pilot)
    await press(pilot, "n", 4)


def test_whole_wizard_equals_run_with_saved_config(demo_dir, tmp_path):
    import asyncio

    cfg = load_config(demo_dir / "demo.toml")
    cfg.output.directory = tmp_path / "wizard_out"
    cfg.set("combine", "nlow", 1)  # 5 frames: 3 + 3 would drop them all
    cfg.set("combine", "nhigh", 1)
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await drive_to_combine(pilot)
            assert app.screen.STEP == 4
            await pilot.press("c")
            await settle(pilot)
            await pilot.press("m")  # median -> minmax
            await pilot.press("c")
            await settle(pilot)
            await pilot.press("w")
            await settle(pilot)
            assert not app.ws.dirty

    asyncio.run(go())
    out = tmp_path / "wizard_out"
    saved = out / "tui-stack.toml"
    assert saved.exists()
    rerun_cfg = load_config(saved)
    rerun_cfg.output.directory = tmp_path / "run_out"
    pipeline.run(rerun_cfg)
    assert rerun_cfg.combine.method == "minmax"
    a = fits.getdata(out / "combined_minmax.fits")
    b = fits.getdata(tmp_path / "run_out" / "combined_minmax.fits")
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).mean() > 0.9
    assert (out / "combined_median.fits").exists()  # both methods the user ran are written
    ra = json.loads((out / "report.json").read_text())
    rb = json.loads((tmp_path / "run_out" / "report.json").read_text())
    assert ra["frames"] == rb["frames"] and ra["reference"] == rb["reference"]
    assert ra["combined"] == rb["combined"] and ra["photometry"] == rb["photometry"]
    assert len(list(out.glob("sdemo_*.fits"))) == 5


def test_wizard_auto_star_and_excluded_frame(demo_dir, tmp_path):
    import asyncio

    cfg = load_config(demo_dir / "demo.toml")
    cfg.reference.star, cfg.scale.stars = "auto", "auto"
    cfg.output.directory = tmp_path / "o"
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("down", "down", "space")  # skip the third frame
            await pilot.press("n")
            await settle(pilot)
            assert app.ws.star_xy is None
            await pilot.press("n")  # refused: no star yet
            assert app.screen.STEP == 1
            await pilot.press("a")
            assert app.ws.star_xy is not None
            await pilot.press("n")
            await settle(pilot)
            run = app.ws.run
            assert "excluded" in run.frames[2].flags and not run.frames[2].used
            await pilot.press("n")
            await settle(pilot)
            assert len(run.comparison_stars) >= 3
            assert isinstance(app.ws.config.scale.stars, list)  # the auto pick is saved as positions

    asyncio.run(go())


def test_errors_are_shown_not_raised(tmp_path):
    import asyncio

    (tmp_path / "bad.fits").write_text("not fits\n" * 100)
    (tmp_path / "empty.fits").write_bytes(b"")
    app = StackApp(tmp_path)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert {i.path.name for i in app.ws.infos} == {"bad.fits", "empty.fits"}
            assert all(i.error for i in app.ws.infos)
            await pilot.press("n")  # refused with a message
            assert app.screen.STEP == 0
            status = str(app.screen.query_one("#status").render())
            assert "at least two readable frames" in status

    asyncio.run(go())


def test_unreadable_file_does_not_reach_reference_and_shifts(demo_dir, tmp_path, monkeypatch):
    """Trial 6 #2: a file Files marks "unreadable, not used" (header fine, data truncated) was
    counted as a frame by Reference and read again there and on Shifts."""
    import asyncio
    import shutil

    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state"))
    frames = tmp_path / "frames"
    shutil.copytree(demo_dir / "frames", frames)
    raw = (frames / "demo_002.fits").read_bytes()
    (frames / "demo_000.fits").write_bytes(raw[: len(raw) // 2])  # sorts first: the old index 0
    cfg = load_config(demo_dir / "demo.toml")
    cfg.input.directory = frames
    cfg.reference.frame, cfg.reference.star, cfg.scale.stars = "auto", "auto", "auto"
    cfg.output.directory = tmp_path / "o"
    app = StackApp(frames, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            bad = [i for i in app.ws.infos if i.error]
            assert [i.path.name for i in bad] == ["demo_000.fits"] and "truncated" in bad[0].error
            await press(pilot, "n")
            assert app.screen.STEP == 1
            run = app.ws.run
            assert [p.name for p in run.files] == [f"demo_00{k}.fits" for k in range(1, 6)]
            assert [p.name for p, _ in run.skipped] == ["demo_000.fits"]
            assert not app.screen.query_one("#status").has_class("error")
            await press(pilot, "a")
            await press(pilot, "n")
            assert app.screen.STEP == 2
            assert [fr.name for fr in run.frames] == [p.name for p in run.files]
            assert sum(fr.used for fr in run.frames) == 5
            assert not app.screen.query_one("#status").has_class("error")

    asyncio.run(go())


def test_quit_asks_when_work_would_be_lost(demo_dir):
    import asyncio

    cfg = load_config(demo_dir / "demo.toml")
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await press(pilot, "n", 2)  # shifts measured (choosing the reference alone loses nothing)
            assert app.ws.dirty
            await pilot.press("q")
            await pilot.pause()
            assert app.screen.__class__.__name__ == "ConfirmScreen"
            await pilot.press("n")
            await pilot.pause()
            assert app.screen.STEP == 2 and app.is_running
            await pilot.press("ctrl+c")  # asks too; yes: interrupted, 130 as SPEC says
            await pilot.pause()
            assert app.screen.__class__.__name__ == "ConfirmScreen"
            await pilot.press("y")
            await pilot.pause()

    asyncio.run(go())
    assert app.return_code == 130


def test_dropped_session_resumes_at_the_same_step(demo_dir, tmp_path, monkeypatch):
    """The SSH link drops at the scales step; `tui-stack --resume` is back there, same tables."""
    import asyncio

    from tui_stack.tui import session

    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state"))
    cfg = load_config(demo_dir / "demo.toml")
    cfg.output.directory = tmp_path / "o"
    app = StackApp(cfg.input.directory, cfg)
    seen = {}

    async def first():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("down", "space")  # skip the second frame
            await press(pilot, "n", 3)
            assert app.screen.STEP == 3
            run = app.ws.run
            seen["shifts"] = [(f.shift_x, f.shift_y, f.used, f.flags) for f in run.frames]
            seen["scales"] = [f.scale for f in run.frames]
            seen["stars"] = list(run.comparison_stars)
        # the app is gone, as with a dropped connection

    asyncio.run(first())
    saved = session.load()
    assert saved is not None and saved["step"] == 3
    import tomllib

    from tui_stack.config import config_from_dict

    app2 = StackApp(cfg.input.directory, config_from_dict(tomllib.loads(saved["config"])), resume=saved)

    async def second():
        async with app2.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await settle(pilot)
            assert app2.screen.STEP == 3
            run = app2.ws.run
            assert [(f.shift_x, f.shift_y, f.used, f.flags) for f in run.frames] == seen["shifts"]
            assert [f.scale for f in run.frames] == seen["scales"]
            assert [tuple(s) for s in run.comparison_stars] == [tuple(s) for s in seen["stars"]]
            assert "excluded" in run.frames[1].flags
            table = app2.screen.query_one("#frames")
            assert table.row_count == len(run.frames)
            await pilot.press("n")  # and the wizard goes on from there
            await settle(pilot)
            await pilot.press("c")
            await settle(pilot)
            assert run.combined and run.combined[-1].n_frames == 4

    asyncio.run(second())


def test_a_crash_writes_a_log_and_says_where(demo_dir, monkeypatch, tmp_path, capfd):
    import asyncio

    from tui_stack.tui.files import FilesScreen

    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state"))  # logs: the user's own state dir

    def boom(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(FilesScreen, "action_toggle_all", boom)
    cfg = load_config(demo_dir / "demo.toml")
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("a")
            await pilot.pause()

    with pytest.raises(RuntimeError, match="a bug"):  # the test pilot re-raises what the app caught
        asyncio.run(go())
    logs = list((tmp_path / "state" / "crash").glob("crash-*.log"))
    assert len(logs) == 1 and "RuntimeError: a bug" in logs[0].read_text()
    assert logs[0].stat().st_mode & 0o777 == 0o600
    assert app.return_code == 1
    out, err = capfd.readouterr()
    assert f"details in {logs[0]}" in (out + err).replace("\n", "")


def test_residual_plot_of_one_frame(demo_dir):
    """e on the shifts screen plots the highlighted frame's star residuals; e again, the shifts."""
    import asyncio

    from tui_stack.tui import plot

    cfg = load_config(demo_dir / "demo.toml")
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            await press(pilot, "down")
            await press(pilot, "e")
            view = app.screen.query_one("#plot", plot.PlotView)
            fr = app.ws.run.frames[1]
            assert view.title.startswith(fr.name) and len(view.xs) == len(fr.residuals) >= 30
            assert np.sqrt(np.mean(np.square(view.xs) + np.square(view.ys))) < 0.2  # star - fit, px
            await press(pilot, "e")
            assert view.title == "shifts (px)" and len(view.xs) == sum(f.used for f in app.ws.run.frames)

    asyncio.run(go())


def test_a_frame_skipped_on_the_shifts_screen_shows_skipped_on_the_files_screen(demo_dir):
    import asyncio

    from textual.widgets import DataTable

    cfg = load_config(demo_dir / "demo.toml")
    app = StackApp(cfg.input.directory, cfg)

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await to_step(pilot, 2)
            await pilot.press("down", "down", "x")  # skip the third frame
            await settle(pilot)
            assert not app.ws.run.frames[2].used
            await press(pilot, "b", 2)
            assert app.screen.STEP == 0
            table = app.screen.query_one(DataTable)
            marks = [table.get_row_at(r)[0] for r in range(table.row_count)]
            assert marks == ["✓", "✓", "·", "✓", "✓"]

    asyncio.run(go())


def test_shifts_detail_line_names_scale_ratio_mirror_and_flip():
    """The Shifts screen's detail line says what the registration found beyond shift and turn."""
    from tui_stack.pipeline.state import FrameResult
    from tui_stack.tui.shifts import geometry

    fr = FrameResult(path=Path("a.fits"))
    assert geometry(fr) == ""
    fr.scale_ratio, fr.mirrored = 0.5, True
    assert geometry(fr) == ", scale 0.50000, mirrored"
    fr.scale_ratio, fr.mirrored, fr.flipped = 1.0, False, True
    assert geometry(fr) == ", flipped"


@pytest.mark.parametrize("name, width, shown", [
    ("demo_001.fits", 10, "demo_001"),
    ("AKB13475I0002.fits", 10, "AKB…5I0002"),
    ("proc_NGC_2362_V_30_017.fits.fz", 14, "proc…_V_30_017"),
    ("short.fits", 14, "short"),
    (".fits", 10, ".fits"),
    ("[red]x.FIT", 10, r"\[red]x"),
])
def test_table_names_drop_the_suffix_and_keep_the_frame_number(name, width, shown):
    from tui_stack.safetext import markup_name

    assert markup_name(name, width) == shown
    assert len(markup_name(name, width).replace("\\[", "[")) <= width


def test_every_flag_the_steps_set_has_a_code_of_its_own():
    """Found in the sources (appended to flags, given as a FrameShift's flags, the photometry's
    flag names, the quality flags), so a new flag without a code fails here; codes are unique,
    so the `?` legend reads one way (turned, mirrored, rescaled, needs_subpixel and crowded fell
    back to first letters that other flags had)."""
    import re

    from tui_stack.core import photometry, quality
    from tui_stack.tui.common import FLAG_CODES, flag_codes

    root = Path(__file__).resolve().parent.parent / "tui_stack"
    found = set(quality.QUALITY_FLAGS)
    found |= {v for k, v in vars(photometry).items() if k.isupper() and isinstance(v, str) and v.islower()}
    for path in [*(root / "core").glob("*.py"), *(root / "pipeline").glob("*.py")]:
        text = path.read_text()
        found |= set(re.findall(r'flags\.append\(\s*"([a-z_]+)"', text))
        found |= set(re.findall(r'flags\.append\("[a-z_]+" if .* else "([a-z_]+)"\)', text))
        found |= set(re.findall(r'\["([a-z]+_[a-z_]+)"\]\)', text))  # FrameShift(..., ["star_not_found"])
    assert {"turned", "mirrored", "rescaled", "needs_subpixel", "crowded", "star_not_found"} <= found
    missing = sorted(found - set(FLAG_CODES))
    assert not missing, missing
    assert len(set(FLAG_CODES.values())) == len(FLAG_CODES)
    assert flag_codes(["turned", "low_transparency", "something_new"]) == "tT?"


@pytest.mark.parametrize("value, shown", [(300.045, "300"), (30.0, "30"), (2.5, "2.5"), (0.25, "0.25"),
                                          (1200.0, "1200"), (12345.6, "1e4"), (0.001, "1e-3"), (None, "")])
def test_exposure_fits_its_column_without_a_cut(value, shown):
    """The Files screen's exp column (4 wide) showed '300.' for 300.045 s."""
    from tui_stack.fmt import fit_number

    assert fit_number(value, 4, missing="") == shown


def test_file_columns_widen_with_the_terminal(demo_dir, tmp_path):
    """At 80 columns a long name is cut in the middle; a wider terminal shows it whole on every
    screen with a file column, and back at 80 it is cut again, on the same row."""
    import asyncio
    import shutil

    from textual.widgets import DataTable

    long = "ngc2362_V_30s_night2_{:04d}"
    for k, f in enumerate(sorted((demo_dir / "frames").glob("demo_*.fits"))):
        shutil.copy(f, tmp_path / (long.format(k) + ".fits"))
    cfg = load_config(demo_dir / "demo.toml")
    cfg.input.directory, cfg.input.pattern = tmp_path, "ngc*.fits"
    app = StackApp(tmp_path, cfg)

    def names(table_id: str) -> list[str]:
        table = app.screen.query_one(f"#{table_id}", DataTable)
        col = [str(c.label) for c in table.ordered_columns].index("file")
        return [str(table.get_row_at(r)[col]) for r in range(table.row_count)]

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert len(names("files")) == 5 and all("…" in n for n in names("files"))
            await press(pilot, "down", 2)
            await pilot.resize_terminal(200, 60)
            await settle(pilot)
            assert names("files") == [long.format(k) for k in range(5)]
            assert app.screen.query_one("#files", DataTable).cursor_row == 2
            await pilot.resize_terminal(*SIZE)
            await settle(pilot)
            assert len(names("files")) == 5 and all("…" in n for n in names("files"))
            assert app.screen.query_one("#files", DataTable).cursor_row == 2
            await pilot.resize_terminal(200, 60)
            await press(pilot, "n", 2)
            assert names("shifts") == [long.format(k) for k in range(5)]
            await press(pilot, "n")
            assert names("frames") == [long.format(k) for k in range(5)]
            await pilot.resize_terminal(*SIZE)
            await settle(pilot)
            assert len(names("frames")) == 5 and all("…" in n for n in names("frames"))

    asyncio.run(go())
