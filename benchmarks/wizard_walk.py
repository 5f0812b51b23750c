"""What the wizard sends to the terminal, step by step: one scripted walk of the demo through
all five screens (README keys, combine and write) in tmux, every byte recorded by pipe-pane.

    python benchmarks/wizard_walk.py [--size 80x24] [--frames 10] [--px 1024] [--env NO_COLOR=1]

Used by tests/test_tmux.py (the byte budget) and by benchmarks/run.py. Each step waits until
its text is on the screen and the output has been quiet for a moment, so a busy machine makes
the walk slower, not its numbers different.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOCKET = f"tui-stack-walk-{os.getpid()}"  # own server: runs side by side do not meet

# (label, keys, text to wait for on screen or None, kind): kind groups the budget
#   screen: a screen change, frame change, zoom or a step that measures and fills tables;
#   key: one cursor key in a table or preview; focus: tab between them (a screen change's budget)
WALK = [
    ("first paint", [], "files selected", "screen"),
    ("files: Down", ["Down"], None, "key"),
    ("files: Up", ["Up"], None, "key"),
    ("Files -> Reference", ["n"], "chosen ✓", "screen"),
    ("reference: Left", ["Left"], None, "key"),
    ("reference: Up", ["Up"], None, "key"),
    ("reference: next star .", ["."], "star 1/", "key"),
    ("reference: next star .", ["."], "star 2/", "key"),
    ("reference: zoom +", ["+"], "zoom 2", "screen"),
    ("reference: zoom -", ["-"], "zoom 1", "screen"),
    ("reference: next frame ]", ["]"], "reference #1 ", "screen"),
    ("reference: prev frame [", ["["], "reference #0 ", "screen"),
    ("reference: a (auto star)", ["a"], "chosen ✓", "screen"),
    ("Reference -> Shifts", ["n"], "frames used", "screen"),
    ("shifts: Down", ["Down"], None, "key"),
    ("shifts: Down", ["Down"], None, "key"),
    ("Shifts -> Scales", ["n"], "flagged in the reference", "screen"),
    ("scales: Left", ["Left"], None, "key"),
    ("scales: Tab (frames table)", ["Tab"], None, "focus"),
    ("scales: Down", ["Down"], None, "key"),
    ("scales: Tab (stars table)", ["Tab"], None, "focus"),
    ("scales: Down", ["Down"], None, "key"),
    ("Scales -> Combine", ["n"], "method median", "screen"),
    ("combine: c", ["c"], "combining (median): done", "screen"),
    ("combine: Tab (photometry table)", ["Tab"], None, "focus"),
    ("combine: Down", ["Down"], None, "key"),
    ("combine: shift+Tab x2 (preview)", ["BTab", "BTab"], None, "focus"),
    ("combine: Left", ["Left"], None, "key"),
    ("combine: w", ["w"], "written to", "screen"),
]


def tmux(*args, check: bool = False):
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, check=check)


def capture() -> str:
    return tmux("capture-pane", "-p", "-t", SOCKET).stdout


class Walker:
    """A shell in a tmux pane of the given size with every byte it writes logged."""

    def __init__(self, cols: int, rows: int, log: Path, env: dict | None = None):
        self.log = log
        self.mark = 0
        tmux("kill-server")
        shell_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        tmux("new-session", "-d", "-s", SOCKET, "-x", str(cols), "-y", str(rows),
             f"env {shell_env} bash --norc --noprofile" if shell_env else "bash --norc --noprofile")
        tmux("set-option", "-t", SOCKET, "remain-on-exit", "on")
        time.sleep(0.3)
        tmux("send-keys", "-t", SOCKET, "clear", "Enter")
        time.sleep(0.3)
        tmux("pipe-pane", "-t", SOCKET, "-o", f"cat >> {shlex.quote(str(log))}")
        time.sleep(0.2)
        self.mark = self.size()

    def size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def since_mark(self) -> int:
        now = self.size()
        n, self.mark = now - self.mark, now
        return n

    def keys(self, *keys: str) -> None:
        for k in keys:
            tmux("send-keys", "-t", SOCKET, k)

    def type_line(self, line: str) -> None:
        tmux("send-keys", "-t", SOCKET, "-l", line)
        tmux("send-keys", "-t", SOCKET, "Enter")

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        end = time.time() + timeout
        while time.time() < end:
            s = capture()
            if text in s:
                return s
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on screen after {timeout:.0f}s:\n{capture()}")

    def quiet(self, quiet_s: float = 1.0, timeout: float = 60.0) -> None:
        """Until nothing has been written for quiet_s (the app is idle)."""
        end = time.time() + timeout
        last, since = self.size(), time.time()
        while time.time() < end:
            time.sleep(0.1)
            now = self.size()
            if now != last:
                last, since = now, time.time()
            elif time.time() - since >= quiet_s:
                return
        raise AssertionError(f"still writing after {timeout:.0f}s")

    def close(self) -> None:
        tmux("kill-server")


def exe() -> str:
    path = Path(sys.executable).parent / "tui-stack"
    return str(path) if path.exists() else f"{sys.executable} -m tui_stack"


def walk(cols: int = 80, rows: int = 24, work: Path | None = None, frames: int = 10, px: int = 1024,
         env: dict | None = None, idle_s: float = 1.5, steps=WALK, check=None) -> list[dict]:
    """Run the walk; one row per step: label, kind, bytes. The last row is the idle check after
    the walk (0 B expected). check(label, screen) is called after each step with the screen text."""
    work = Path(work or tempfile.mkdtemp(prefix="tui-stack-walk-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"bytes-{cols}x{rows}.log"
    log.unlink(missing_ok=True)
    state = work / "state"
    env = {"TUI_STACK_STATE_DIR": str(state), **(env or {})}
    w = Walker(cols, rows, log, env)
    rows_out = []
    try:
        w.type_line(f"{exe()} demo --out {shlex.quote(str(work / 'demo'))} --frames {frames} --size {px}; "
                    "echo EXIT=$?")
        for label, keys, text, kind in steps:
            w.since_mark()
            start = w.size()
            w.keys(*keys)
            if text:
                w.wait_for(text)
            else:  # a key: until the app has answered (a busy machine may take a while to)
                end = time.time() + 15
                while w.size() == start and time.time() < end:
                    time.sleep(0.05)
            w.quiet()
            screen = capture()
            rows_out.append({"step": label, "kind": kind, "bytes": w.since_mark()})
            if check:
                check(label, screen)
        time.sleep(idle_s)
        rows_out.append({"step": f"idle {idle_s:.1f} s", "kind": "idle", "bytes": w.since_mark()})
        w.keys("q")
        w.wait_for("EXIT=0", timeout=30)
    finally:
        w.close()
    return rows_out


def table(rows: list[dict]) -> str:
    lines = [f"{'step':34} {'bytes':>8}"]
    for r in rows:
        lines.append(f"{r['step']:34} {r['bytes']:>8}")
    total = sum(r["bytes"] for r in rows)
    lines.append(f"{'whole walk':34} {total:>8}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="80x24")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--px", type=int, default=1024)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the wizard's environment")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    if shutil.which("tmux") is None:
        sys.exit("tmux is not installed")
    cols, rows = map(int, a.size.split("x"))
    env = dict(e.split("=", 1) for e in a.env)
    res = walk(cols, rows, frames=a.frames, px=a.px, env=env)
    print(table(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
