"""The real console command in tmux at 80x24: keys in, screen out, and the bytes it costs.

Over a slow SSH link what matters is what the app sends: nothing while idle, under 1 KB
per cursor key. tmux pipe-pane records every byte the app writes to the terminal.
"""

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI installs it)")

SESSION = "tui-stack-test"


def tmux(*args, check=True):
    return subprocess.run(["tmux", "-L", SESSION, *args], capture_output=True, text=True, check=check)


def screen() -> str:
    return tmux("capture-pane", "-p", "-t", SESSION).stdout


def wait_for(text: str, timeout: float = 90.0) -> str:
    end = time.time() + timeout
    while time.time() < end:
        s = screen()
        if text in s:
            return s
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not on screen after {timeout}s:\n{screen()}")


class ByteMeter:
    def __init__(self, log: Path):
        self.log = log
        self.mark = 0

    def size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def since_mark(self) -> int:
        n = self.size() - self.mark
        self.mark = self.size()
        return n


def test_demo_in_tmux_80x24(tmp_path):
    exe = Path(sys.executable).parent / "tui-stack"
    cmd = f"{exe} demo --out {tmp_path / 'demo'} --frames 4 --size 512; echo EXIT=$?; sleep 30"
    tmux("kill-server", check=False)
    tmux("new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24", cmd)
    try:
        s = wait_for("files selected")
        assert "demo_001.fits" in s and "1 Files" in s
        time.sleep(1.0)  # the last repaint of the scan
        log = tmp_path / "bytes.log"
        tmux("pipe-pane", "-t", SESSION, "-o", f"cat >> {log}")
        meter = ByteMeter(log)
        time.sleep(2.0)
        assert meter.since_mark() == 0  # idle: nothing at all
        tmux("send-keys", "-t", SESSION, "Down")
        time.sleep(0.8)
        assert 0 < meter.since_mark() < 1024

        tmux("send-keys", "-t", SESSION, "n")
        s = wait_for("centroid 2dg")
        assert "2 Reference" in s
        time.sleep(1.0)
        meter.since_mark()
        for key in ("Left", "Left", "Up", "Right"):
            tmux("send-keys", "-t", SESSION, key)
            time.sleep(0.6)
            assert 0 < meter.since_mark() < 1024, key
        time.sleep(2.0)
        assert meter.since_mark() == 0

        tmux("send-keys", "-t", SESSION, "n")
        wait_for("after shift")
        tmux("send-keys", "-t", SESSION, "n")
        wait_for("left out")
        tmux("send-keys", "-t", SESSION, "n")
        wait_for("method median (m)")
        tmux("send-keys", "-t", SESSION, "c")
        wait_for("combining (median): done")
        tmux("send-keys", "-t", SESSION, "w")
        wait_for("written to")
        tmux("send-keys", "-t", SESSION, "q")
        wait_for("EXIT=0")
        assert (tmp_path / "demo" / "out" / "combined_median.fits").exists()
        assert (tmp_path / "demo" / "out" / "tui-stack.toml").exists()
    finally:
        tmux("kill-server", check=False)


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="Dask is an optional extra")
def test_wizard_on_a_dask_cluster_in_tmux(tmp_path):
    """[compute] scheduler = "dask" in the real console: the cluster's worker processes start
    (before Textual holds the terminal) and the shifts are measured on them."""
    from tui_stack import demo
    from tui_stack.config import config_to_toml, load_config

    demo.write_demo(tmp_path / "d", n_frames=4, size=384)
    cfg = load_config(tmp_path / "d" / "demo.toml")
    cfg.compute.scheduler, cfg.compute.workers = "dask", 2
    (tmp_path / "dask.toml").write_text(config_to_toml(cfg))
    exe = Path(sys.executable).parent / "tui-stack"
    cmd = f"TUI_STACK_STATE_DIR={tmp_path} {exe} --config {tmp_path / 'dask.toml'}; echo EXIT=$?; sleep 30"
    tmux("kill-server", check=False)
    tmux("new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24", cmd)
    try:
        wait_for("files selected")
        time.sleep(1.0)
        tmux("send-keys", "-t", SESSION, "n")
        wait_for("centroid 2dg")
        time.sleep(1.0)
        tmux("send-keys", "-t", SESSION, "n")
        s = wait_for("after shift")  # the table is filled and a frame's cut-out shown
        row = next(line for line in s.splitlines() if "demo_004.fits" in line)
        assert float(row.split()[3]) != 0 and "internal error" not in s
        tmux("send-keys", "-t", SESSION, "q")
        tmux("send-keys", "-t", SESSION, "y")
        wait_for("EXIT=0")
    finally:
        tmux("kill-server", check=False)
