"""Fewer bytes to the terminal: send only the cells that changed.

Textual repaints whole widgets (often the whole screen: a screen change, a focus change, a
layout change) and writes every segment as `ESC[style m text ESC[0m`. Over a slow SSH link
that is most of what is sent. ScreenDiff keeps a copy of what the terminal shows, cell by
cell, and turns each of Textual's writes into the cells that differ from it, with a style
sequence only where the style changes (what curses does). Anything it does not model (clear
screen, erase, alternate screen) is passed through and its copy forgotten, so the terminal
always ends up showing exactly what Textual drew (tested in tmux against the plain driver).
"""

from __future__ import annotations

import re

from rich.cells import get_character_cell_size

_TOKEN = re.compile(
    r"\x1b\[([0-9;]*)m"  # 1 SGR
    r"|\x1b\[(\d+);(\d+)H"  # 2, 3 cursor position
    r"|(\x1b\[\?[0-9;]*[hl]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b\[\?[0-9;$]*p|\x1b\[>[0-9;]*u)"  # 4 modes, OSC, queries
    r"|(\r)|(\n)"  # 5, 6
    r"|(\x1b\[[0-9;?<>=$]*[A-Za-z@]|\x1b[^\[\]])"  # 7 anything else: we cannot model it
    r"|([^\x1b\r\n]+|\x1b)"  # 8 text
)
_CONTENT_MODES = ("?1049", "?1047", "?47")  # switching screens changes every cell
_COLOUR_PARAMS = {"39", "49", *map(str, range(30, 38)), *map(str, range(40, 48)), *map(str, range(90, 98)),
                  *map(str, range(100, 108))}
PLAIN_TERMS = ("dumb", "vt52", "vt100", "vt102", "vt220", "unknown")


def terminal_kind(term: str | None = None) -> tuple[bool, bool]:
    """(colour, alternate screen) for the terminal named by TERM: a terminal that has neither
    gets plain text where it is."""
    import os

    term = (os.environ.get("TERM", "") if term is None else term).lower()
    plain = term in PLAIN_TERMS or term.startswith(("vt1", "vt2", "vt5"))
    return not plain, not plain


def _strip_colour(params: str) -> str:
    p, out, i = params.split(";"), [], 0
    while i < len(p):
        if p[i] in ("38", "48") and i + 1 < len(p):
            i += 3 if p[i + 1] == "5" else 5
        elif p[i] in _COLOUR_PARAMS:
            i += 1
        else:
            out.append(p[i])
            i += 1
    return ";".join(out)


def _parse_sgr(sgr: str):
    """'1;38;5;240;48;5;17' -> (flags, fg, bg); None if it holds something else."""
    if not sgr:
        return frozenset(), None, None
    p = sgr.split(";")
    flags, fg, bg, i = set(), None, None, 0
    while i < len(p):
        if p[i] in ("38", "48") and i + 2 < len(p) and p[i + 1] == "5":
            val = f"{p[i]};5;{p[i + 2]}"
            fg, bg = (val, bg) if p[i] == "38" else (fg, val)
            i += 3
        elif p[i] in ("38", "48") and i + 4 < len(p) and p[i + 1] == "2":
            val = ";".join(p[i:i + 5])
            fg, bg = (val, bg) if p[i] == "38" else (fg, val)
            i += 5
        elif p[i].isdigit() and (30 <= int(p[i]) <= 37 or 90 <= int(p[i]) <= 97):
            fg, i = p[i], i + 1
        elif p[i].isdigit() and (40 <= int(p[i]) <= 47 or 100 <= int(p[i]) <= 107):
            bg, i = p[i], i + 1
        elif p[i] in ("1", "2", "3", "4", "5", "7", "8", "9"):
            flags.add(p[i])
            i += 1
        else:
            return None
    return frozenset(flags), fg, bg


def sgr_change(old: str | None, new: str) -> str:
    """The shortest sequence from style `old` (None: unknown) to `new`: only the parts that
    differ when no attribute has to be switched off, else a reset and `new`."""
    if old == new:
        return ""
    if old is None or not new:
        return f"\x1b[0;{new}m" if new else "\x1b[0m"
    a, b = _parse_sgr(old), _parse_sgr(new)
    if a is None or b is None or not a[0] <= b[0]:
        return f"\x1b[0;{new}m"
    parts = sorted(b[0] - a[0])
    if a[1] != b[1]:
        parts.append(b[1] or "39")
    if a[2] != b[2]:
        parts.append(b[2] or "49")
    return f"\x1b[{';'.join(parts)}m"


class ScreenDiff:
    def __init__(self, colour: bool = True, alt_screen: bool = True):
        self.colour, self.alt_screen = colour, alt_screen
        self.cells: dict[tuple[int, int], tuple[str, str]] = {}  # (row, col) 1-based -> (char, sgr)
        self.cursor: str | None = None  # the last cursor move sent

    def forget(self) -> None:
        """The terminal's content is unknown (resized, cleared): the next writes go out whole."""
        self.cells.clear()

    def __call__(self, data: str) -> str:
        out: list[str] = []
        pending: dict[tuple[int, int], tuple[str, str]] = {}
        row = col = 1
        sgr = ""
        moved_last = False

        def flush():
            if pending:
                out.append(self._emit(pending))
                pending.clear()

        for m in _TOKEN.finditer(data):
            g = m.groups()
            if g[0] is not None:
                params = g[0] if self.colour else _strip_colour(g[0])
                if params in ("", "0"):
                    sgr = ""
                elif params.startswith("0;"):
                    sgr = params[2:]
                else:
                    sgr = f"{sgr};{params}" if sgr else params
                continue
            if g[1] is not None:
                row, col = int(g[1]), int(g[2])
                moved_last = True
                continue
            if g[4] is not None:
                col = 1
                continue
            if g[5] is not None:
                row += 1
                continue
            if g[3] is not None or g[6] is not None:
                flush()
                token = m.group(0)
                if not self.alt_screen and token.startswith(("\x1b[?1049", "\x1b[?1047", "\x1b[?47")):
                    # no alternate screen: draw on the screen there is, and clear it when done
                    token = "\x1b[H\x1b[2J"
                out.append(token)
                if g[6] is not None or m.group(0).startswith(tuple(f"\x1b[{mode}" for mode in _CONTENT_MODES)):
                    self.cells.clear()  # an erase or a screen switch: what is shown is unknown
                continue
            text = g[7]
            moved_last = False
            for ch in text:
                w = get_character_cell_size(ch)
                if w == 0:
                    continue
                pending[(row, col)] = (ch, sgr)
                if w == 2:
                    pending[(row, col + 1)] = ("", sgr)
                col += w
        flush()
        result = "".join(out).replace("\x1b[?2026h\x1b[?2026l", "")  # an empty synchronised update
        move = f"\x1b[{row};{col}H"
        if moved_last and (result or move != self.cursor):
            result += move  # where Textual leaves the cursor
            self.cursor = move
        elif result:
            self.cursor = None
        return result

    def _emit(self, pending: dict) -> str:
        cells = self.cells
        changed = sorted(k for k, v in pending.items() if cells.get(k) != v)
        if not changed:
            return ""
        out: list[str] = []
        term_sgr = None
        prev = None  # (row, col) after the last cell written
        for key in changed:
            r, c = key
            ch, sgr = pending[key]
            if ch == "":  # the right half of a wide character: its left half is written
                lead = (r, c - 1)
                if lead in pending and lead not in changed:
                    key, (ch, sgr) = lead, pending[lead]
                    r, c = lead
                else:
                    cells[key] = pending[key]
                    continue
            if prev is not None and prev[0] == r and 0 < c - prev[1] <= 3:
                # a short gap of unchanged cells: rewriting them is cheaper than a cursor move
                for gc in range(prev[1], c):
                    gch, gsgr = pending.get((r, gc)) or cells.get((r, gc)) or (None, None)
                    if not gch or get_character_cell_size(gch) != 1:
                        out.append(f"\x1b[{r};{c}H")
                        break
                    out.append(sgr_change(term_sgr, gsgr))
                    term_sgr = gsgr
                    out.append(gch)
            elif prev != (r, c):
                out.append(f"\x1b[{r};{c}H")
            out.append(sgr_change(term_sgr, sgr))
            term_sgr = sgr
            out.append(ch)
            cells[key] = (ch, sgr)
            w = get_character_cell_size(ch)
            if w == 2:
                cells[(r, c + 1)] = ("", sgr)
            prev = (r, c + w)
        if term_sgr:
            out.append("\x1b[0m")
        return "".join(out)


def slim_driver(base):
    """A subclass of Textual's terminal driver that writes through a ScreenDiff."""

    class SlimDriver(base):
        def write(self, data: str) -> None:
            if not hasattr(self, "_diff"):
                import os

                self._diff = ScreenDiff(*terminal_kind())
                # what Textual wrote, write by write (NUL between): tests replay it against the diff
                raw = os.environ.get("TUI_STACK_RAW_LOG")
                self._raw = open(raw, "a", encoding="utf-8") if raw else None
            if self._raw is not None:
                self._raw.write(data + "\0")
                self._raw.flush()
            super().write(self._diff(data))

        def process_message(self, message) -> None:
            from textual import events

            if isinstance(message, events.Resize) and hasattr(self, "_diff"):
                self._diff.forget()  # some terminals clear or reflow on resize: send it all again
            super().process_message(message)

    SlimDriver.__name__ = f"Slim{base.__name__}"
    return SlimDriver
