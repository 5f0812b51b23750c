"""Snapshots of each wizard screen at 80x24 on the demo field (pytest-textual-snapshot).

Regenerate after an intended change of the UI: pytest tests/test_snapshots.py --snapshot-update
"""

import pytest

from tui_stack import demo
from tui_stack.config import load_config
from tui_stack.tui.app import StackApp

from test_tui import settle


@pytest.fixture()
def demo_app(tmp_path, monkeypatch):
    demo.write_demo(tmp_path, n_frames=4, size=512)
    monkeypatch.chdir(tmp_path)  # relative paths: the screens show no temporary directory
    monkeypatch.delenv("NO_COLOR", raising=False)
    cfg = load_config(tmp_path / "demo.toml")
    cfg.input.directory, cfg.output.directory = cfg.input.directory.relative_to(tmp_path), cfg.output.directory.relative_to(tmp_path)
    return StackApp(cfg.input.directory, cfg)


def steps(n, extra=()):
    async def run_before(pilot):
        await settle(pilot)
        for _ in range(n):
            await pilot.press("n")
            await settle(pilot)
        for key in extra:
            await pilot.press(key)
            await settle(pilot)

    return run_before


@pytest.mark.parametrize("name,n,extra", [
    ("files", 0, ()),
    ("reference", 1, ()),
    ("shifts", 2, ()),
    ("scales", 3, ()),
    ("combine", 4, ("c",)),
])
def test_screen_snapshot(snap_compare, demo_app, name, n, extra):
    assert snap_compare(demo_app, terminal_size=(80, 24), run_before=steps(n, extra))
