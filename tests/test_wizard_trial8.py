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
