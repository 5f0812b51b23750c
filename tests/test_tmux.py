"""The real console command in tmux at 80x24: keys in, screen out, and the bytes it costs.

Over a slow SSH link what matters is what the app sends: nothing while idle, under 1 KB
per cursor key. tmux pipe-pane records every byte the app writes to the terminal.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (CI installs it)")

SESSION = f"tui-stack-test-{os.getpid()}"  # own server: runs side by side do not meet


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


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import wizard_walk  # noqa: E402  (the same walk as the benchmark's)

KB = 1024
BUDGET = {"key": 1 * KB, "screen": 15 * KB, "idle": 0}  # per step, at 80x24
WALK_BUDGET = 150 * KB


def no_error(label, screen):
    assert "internal error" not in screen and "Traceback" not in screen, (label, screen)


def replay(stream: str, cols: int, rows: int, tmp: Path, name: str) -> str:
    """What a terminal (tmux) shows after receiving `stream`."""
    sock = f"tui-stack-replay-{name}-{os.getpid()}"
    path = tmp / f"{name}.bytes"
    path.write_bytes(stream.encode("utf-8"))
    subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", sock, "-x", str(cols), "-y", str(rows),
                    f"cat {path}; sleep 60"], check=True)
    try:
        time.sleep(0.5)
        last = None
        for _ in range(50):  # until the pane stops changing
            shown = subprocess.run(["tmux", "-L", sock, "capture-pane", "-p", "-e", "-t", sock],
                                   capture_output=True, text=True).stdout
            if shown == last:
                return shown
            last = shown
            time.sleep(0.2)
        return last
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


@pytest.mark.parametrize("cols, rows", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_byte_budget_of_the_whole_walk(tmp_path, cols, rows):
    """The README's walk through all five screens, combine and write, on the demo: nothing while
    idle, at most 1 KB per cursor key in every table and preview at either size; at 80x24 at
    most 15 KB per screen change, frame change or zoom and 150 KB in all, on a larger terminal
    those in proportion to its cells (what a screen change repaints). Then the screen the
    terminal shows with only the changed cells sent equals the one Textual drew, at points
    along the walk."""
    area = cols * rows / (80 * 24)
    budget = {"key": BUDGET["key"], "screen": BUDGET["screen"] * area, "idle": 0}
    raw = tmp_path / "raw.log"
    steps = wizard_walk.walk(cols, rows, work=tmp_path, frames=6, px=1024, env={"TUI_STACK_RAW_LOG": str(raw)},
                             check=no_error)
    table = wizard_walk.table(steps)
    for r in steps:
        kind = "screen" if r["kind"] == "focus" else r["kind"]
        assert r["bytes"] <= budget[kind], f"{r['step']}: {r['bytes']} B\n{table}"
        if kind == "key" and "Tab" not in r["step"]:
            assert r["bytes"] > 0, f"{r['step']} changed nothing\n{table}"  # the key did something
    assert sum(r["bytes"] for r in steps) <= WALK_BUDGET * area, table
    out = tmp_path / "demo" / "out"
    assert (out / "combined_median.fits").exists() and (out / "tui-stack.toml").exists()

    from tui_stack.tui.slim import ScreenDiff

    chunks = raw.read_text(encoding="utf-8").split("\0")[:-1]
    end = next(k for k, c in enumerate(chunks) if "\x1b[?1049l" in c)  # leaving: the shell is back
    for cut in sorted({end // 4, end // 2, 3 * end // 4, end - 1}):
        diff = ScreenDiff()
        slim = "".join(diff(c) for c in chunks[: cut + 1])
        full = "".join(chunks[: cut + 1])
        assert len(slim) < len(full)
        assert replay(slim, cols, rows, tmp_path, "slim") == replay(full, cols, rows, tmp_path, "full"), cut


MODES = {
    "NO_COLOR": {"NO_COLOR": "1"},
    "16 colours": {"TERM": "xterm"},
    "TERM=dumb": {"TERM": "dumb"},
    "TERM=vt100": {"TERM": "vt100"},
}
SHORT_WALK = [
    ("first paint", [], "files selected", "screen"),
    ("Files -> Reference", ["n"], "chosen ✓", "screen"),
    ("reference: Left", ["Left"], None, "key"),
    ("Reference -> Shifts", ["n"], "frames used", "screen"),
    ("shifts: Down", ["Down"], None, "key"),
    ("Shifts -> Scales", ["n"], "flagged in the reference", "screen"),
    ("Scales -> Combine", ["n"], "method median", "screen"),
    ("combine: c", ["c"], "combining (median): done", "screen"),
    ("combine: w", ["w"], "written to", "screen"),
]


@pytest.mark.parametrize("mode", list(MODES))
def test_terminal_modes_start_to_finish(tmp_path, mode):
    """Each terminal as it is, through all five screens to the written outputs: no colour where
    there is none, 16 colours only where there are 16, no alternate screen on dumb and vt100."""
    alt = []

    def check(label, screen):
        no_error(label, screen)
        alt.append(wizard_walk.tmux("display", "-p", "-t", wizard_walk.SOCKET, "#{alternate_on}").stdout.strip())

    rows = wizard_walk.walk(80, 24, work=tmp_path, frames=4, px=512, env=MODES[mode], steps=SHORT_WALK, check=check)
    assert rows[-1]["bytes"] == 0  # idle
    assert (tmp_path / "demo" / "out" / "combined_median.fits").exists()
    sent = (tmp_path / "bytes-80x24.log").read_text(encoding="utf-8", errors="replace")
    if mode in ("TERM=dumb", "TERM=vt100"):
        import re

        params = {p for sgr in re.findall(r"\x1b\[([0-9;]*)m", sent) for p in sgr.split(";")}
        assert not params & {"38", "48", *map(str, range(30, 50)), *map(str, range(90, 108))}, params
        assert "\x1b[?1049h" not in sent and set(alt) == {"0"}
    else:
        assert set(alt) == {"1"}
    if mode == "16 colours":
        assert ";5;" not in sent and ";2;" not in sent
        assert "░" in sent or "▒" in sent  # the preview's shades between the 4 greys
    if mode in ("NO_COLOR", "TERM=dumb", "TERM=vt100"):
        assert "▀" not in sent  # the ASCII preview


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
        wait_for("chosen ✓")
        time.sleep(1.0)
        tmux("send-keys", "-t", SESSION, "n")
        s = wait_for("after shift")  # the table is filled and a frame's cut-out shown
        row = next(line.split() for line in s.splitlines() if line.split()[:1] == ["3"])  # frame #3: # file u x y
        assert float(row[3]) != 0 and "internal error" not in s
        tmux("send-keys", "-t", SESSION, "q")
        tmux("send-keys", "-t", SESSION, "y")
        wait_for("EXIT=0")
    finally:
        tmux("kill-server", check=False)


def test_help_box_costs_less_than_the_screen_under_it(tmp_path):
    """`?` and escape on the Reference screen (its preview: one colour per cell). The help box
    does not dim the screen around it, so opening it sends only the box and closing it only the
    cells under the box: 5.5 / 8.1 KB before (dimmed), 4.1 / 6.8 KB now, at 80x24 with a 512²
    demo (trial 6 measured 6.7 / 10.2 KB on the 1024² demo's Combine screen)."""
    steps = [("first paint", [], "files selected", "screen"),
             ("Files -> Reference", ["n"], "chosen", "screen"),
             ("reference: ?", ["?"], "escape closes", "screen"),
             ("reference: escape", ["Escape"], None, "screen")]
    rows = {r["step"]: r["bytes"] for r in wizard_walk.walk(80, 24, work=tmp_path, frames=4, px=512, steps=steps)}
    assert rows["reference: ?"] < 4.8 * KB, rows
    assert rows["reference: escape"] < 7.4 * KB, rows
    assert rows["reference: escape"] < rows["Files -> Reference"], rows
