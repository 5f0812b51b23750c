"""Pieces every wizard screen shares: the base screen (step bar, status, progress, key line,
help), the preview screen, the confirm dialog and table helpers.

The app imports the screens and the screens import this module, never the app: a screen
reaches the app only through `self.app` at run time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Input, ProgressBar, Static

from tui_stack import safetext
from tui_stack.errors import InputError

STEPS = ("Files", "Reference", "Shifts", "Scales", "Combine")
MIN_SIZE = (80, 24)  # columns, rows: every screen is laid out for this
PROGRESS_WIDTH = 16  # columns of the progress bar beside the status while work runs (app.tcss)
PROGRESS_EVERY = 0.25  # s between progress repaints: a bar that moves 4 times a second is enough

# Short codes for the flags in narrow table columns; the detail line and help give them in full.
# One code per flag any step can set (frames, comparison stars), none shared (tested).
FLAG_CODES = {
    # frame quality (core/quality.py)
    "low_transparency": "T", "trailed": "E", "out_of_focus": "F", "high_sky": "S", "few_stars": "f",
    # registration (pipeline/register.py)
    "rotated": "R", "turned": "t", "mirrored": "m", "rescaled": "r", "meridian_flip": "M",
    "needs_subpixel": "i", "star_off_frame": "O", "star_not_found": "L", "methods_disagree": "D",
    "poor_fit": "P", "few_matches": "w", "shift_exceeds_frame": "B", "no_data": "0", "no_stars": "N",
    "no_match": "X", "duplicate": "2", "excluded": "x", "unreadable": "U",
    # scale (pipeline/scale.py, core/photometry.py)
    "no_comparison_star": "C", "stars_disagree": "d", "no_psf": "p", "few_scale_stars": "n",
    "saturated": "s", "crowded": "c", "off_frame": "o", "no_flux": "z",
}


def flag_codes(flags) -> str:
    return "".join(FLAG_CODES.get(f, "?") for f in flags)


LEGEND_WIDTH = 66  # help's text column at 80 columns: a legend line no wider is never wrapped


def flag_legend(flags=None, width: int = LEGEND_WIDTH) -> str:
    """'code name' pairs, packed into lines of `width` so no pair is broken across two."""
    items = FLAG_CODES.items() if flags is None else ((f, FLAG_CODES.get(f, "?")) for f in flags)
    lines = [""]
    for name, code in items:
        pair = f"{code} {name}"
        if lines[-1] and len(lines[-1]) + 2 + len(pair) > width:
            lines.append("")
        lines[-1] += ("  " if lines[-1] else "") + pair
    return "\n".join(lines)


def fit_line(text: str, width: int) -> str:
    """One line of at most `width` characters that keeps the end of the sentence: what is cut
    is the middle of the longest path (its file name stays whole), else the middle of the line."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    words = text.split(" ")
    k = max(range(len(words)), key=lambda i: len(words[i]) if "/" in words[i] else -1)
    word = words[k]
    over = len(text) - width
    tail = word[word.rstrip("/").rfind("/"):]  # "/name" or "/folder/"
    keep = len(word) - over - 1 - len(tail)  # characters of the path's start that still fit
    if "/" in word and keep >= 1:
        words[k] = word[:keep] + "…" + word[len(word) - len(tail):]
        return " ".join(words)
    head = width // 2 - 1
    return text[:head] + "…" + text[-(width - head - 1):]


def name_list(lead: str, names: list, width: int) -> str:
    """lead + as many of `names` as fit in `width` characters, then how many more; '' if none."""
    if not names:
        return ""
    shown = []
    for n in names:
        more = len(names) - len(shown) - 1
        if shown and len(lead) + len(", ".join(shown + [n])) + (len(f" and {more} more") if more else 0) > width:
            break
        shown.append(n)
    rest = len(names) - len(shown)
    return lead + ", ".join(shown) + (f" and {rest} more" if rest else "")


def crash_log(exc: BaseException) -> Path | str:
    """The traceback in a new private file of the user's state directory (tui_stack.crashlog)."""
    from tui_stack import crashlog

    return crashlog.write(exc) or "nowhere (the state directory is not writable)"


def fixed_table(id: str, columns, names: int = 0):
    """A row-cursor table with fixed column widths: no reflow (and no extra bytes over SSH)
    when rows arrive. names: the width of its "file" column, if not the one in `columns`."""
    from textual.widgets import DataTable

    table = DataTable(id=id, cursor_type="row", classes="small-table", zebra_stripes=False)
    add_columns(table, columns, names)
    return table


def add_columns(table, columns, names: int = 0) -> None:
    for label, width in columns:
        table.add_column(label, width=names if names and label == "file" else width)


NAME_MOST = 40  # a file column wider than this only adds blanks for names of the usual length


def name_width(base: int, screen_width: int) -> int:
    """A file column: `base` at 80 columns, and what a wider terminal has beyond 80."""
    return max(base, min(NAME_MOST, base + screen_width - 80))


def widen_names(table, columns, names: int) -> bool:
    """The columns again, the "file" column `names` wide; False (nothing done) if it is already:
    the caller adds the rows again, cut to the new width."""
    if any(str(c.label) == "file" and c.width == names for c in table.ordered_columns):
        return False
    table.clear(columns=True)
    add_columns(table, columns, names)
    return True


def row_index(table) -> int | None:
    """The key (an int) of the highlighted row, or None in an empty table."""
    if not table.row_count or table.cursor_row is None:
        return None
    key = table.coordinate_to_cell_key((min(table.cursor_row, table.row_count - 1), 0)).row_key
    return int(key.value)


def key_name(app, binding: Binding) -> str:
    return binding.key_display or app.get_key_display(binding)


class StepBar(Static):
    """Where the user is: ' 1 Files > 2 Reference > ...' with the current step highlighted;
    'not saved' after it while another wizard holds the session."""

    def __init__(self, step: int):
        parts = []
        for i, name in enumerate(STEPS):
            label = f" {i + 1} {name} "
            parts.append(f"[reverse bold]{label}[/]" if i == step else f"[dim]{label}[/]" if i > step else label)
        self.steps = " > ".join(parts)
        super().__init__(self.steps)

    def mark(self, unsaved: str) -> None:
        self.update(self.steps + ("  [b red]not saved[/]" if unsaved else ""))


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Static("\n[b]y[/] yes    [b]n[/] no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


def screen_bindings(screen) -> list[Binding]:
    """Every binding of a wizard screen (its classes' and the app's), first one wins per key."""
    seen, out = set(), []
    last = getattr(screen, "STEP", 0) == len(STEPS) - 1
    for cls in type(screen).__mro__:
        for b in cls.__dict__.get("BINDINGS", []):
            if b.action == "screen.copy_text":  # ctrl+c quits here (the app's binding comes first)
                continue
            if b.action in ("app.focus_next", "app.focus_previous", "focus_next", "focus_previous"):
                continue  # help has its own line for tab and shift+tab
            if b.action == "next" and last:  # no step after the last
                continue
            if isinstance(b, Binding) and b.description and b.key not in seen:
                seen.add(b.key)
                out.append(b)
    for b in type(screen.app).BINDINGS:
        if isinstance(b, Binding) and b.description and b.key not in seen:
            seen.add(b.key)
            out.append(b)
    return out


KEY_WIDTH = 14  # help's keys column


class HelpScreen(ModalScreen[None]):
    """Every key of the screen underneath, with what it does; escape, q or ? closes."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def __init__(self, title: str, lines: list[str]):
        super().__init__()
        self.title_text, self.lines = title, lines

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(f"[b]{self.title_text}[/]  (escape closes; arrows scroll)")
            yield Static(self._body())

    def _body(self):
        """Paragraphs as they are; (keys, description) rows in a grid, so a long description
        wraps under itself and not back into the keys' column."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        parts, grid = [], None
        for line in self.lines:
            if isinstance(line, tuple):
                if grid is None:
                    grid = Table.grid(padding=(0, 1))
                    grid.add_column(width=KEY_WIDTH, no_wrap=True)
                    grid.add_column()
                grid.add_row(Text(line[0]), Text(line[1]))
                continue
            if grid is not None:
                parts.append(grid)
                grid = None
            parts.append(Text(line))
        if grid is not None:
            parts.append(grid)
        return Group(*parts)

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)


class KeyLine(Static):
    """The few keys that matter on this screen; `?` lists the rest. Static text: repainted only
    when the screen changes or a field gains or loses focus, not on every focus change as
    Textual's Footer is."""


class Field(Input):
    """A text field. While it has focus it takes the letter keys, so the key line shows its own
    keys instead of the screen's (a `w` meant to write went into the path); focus keeps the text
    unselected, so a stray key adds a letter rather than replacing the whole path."""

    KEYS = "[b]enter[/] apply  [b]escape[/] leave field  [b]tab[/] next  [b]F1[/] help  [b]ctrl+q[/] quit"
    BINDINGS = [Binding("enter", "submit", "Apply the field and leave it")]  # escape: the screen's

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("select_on_focus", False)
        super().__init__(*args, **kwargs)
        self.cursor_blink = False  # a blinking cursor costs ~1.8 KB/s over SSH


class WizardScreen(Screen):
    """A step of the wizard: step bar, body, progress line, status line, key line."""

    STEP = 0
    KEYS = "n next  b back"  # the key line after '? help'; each screen names its main keys
    HELP = ""  # what the screen is for, shown above its keys in help
    BINDINGS = [
        Binding("n,ctrl+n", "next", "Next step", key_display="n"),
        Binding("b,ctrl+b", "back", "Back a step", key_display="b"),
        Binding("question_mark,f1", "help", "Help: every key of this screen", key_display="?"),
        Binding("escape", "cancel_task", "Cancel the running task", show=False),
    ]

    @property
    def ws(self):
        return self.app.ws

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        yield Static("", id="toosmall")
        yield from self.compose_body()
        # the bar shares the status line while work runs; the status may take two lines
        with Horizontal(id="statusrow"):
            yield Static("", id="status", classes="status", markup=False)
            yield ProgressBar(id="progress", show_eta=False, show_percentage=False, classes="idle")
        yield KeyLine(self._keys(), id="keys")

    def _keys(self) -> str:
        if isinstance(self.focused, Input):
            return Field.KEYS
        return f"[b]?[/] help  {self.KEYS}  [b]q[/] quit"

    def on_descendant_focus(self, event) -> None:
        self._show_keys()

    def on_descendant_blur(self, event) -> None:
        self._show_keys()

    def _show_keys(self) -> None:
        text = self._keys()
        if text != getattr(self, "_keys_shown", None):  # not repainted per table or field
            self._keys_shown = text
            self.query_one("#keys", KeyLine).update(text)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_screen_resume(self) -> None:
        self.mark_unsaved()

    def mark_unsaved(self) -> None:
        if self.app.unsaved:
            self.query_one(StepBar).mark(self.app.unsaved)

    def on_mount(self) -> None:
        from tui_stack.tui.preview import no_colour
        from tui_stack.tui.slim import terminal_kind

        # without colour, focus and the cursor row are shown by reverse video and heavy borders
        self.set_class(no_colour() or not terminal_kind()[0], "plain")

    # ------------------------------------------------------------ what --resume brings back

    def ui_state(self) -> dict:
        """The highlighted row of each table and the text of each field."""
        from textual.widgets import DataTable, Input

        return {"rows": {t.id: t.cursor_row for t in self.query(DataTable) if t.id and t.row_count},
                "fields": {i.id: i.value for i in self.query(Input) if i.id}}

    def restore_ui(self, fields: bool = True, rows: bool = True) -> None:
        """Once the tables are filled: back to the rows and fields of the saved session."""
        from textual.widgets import DataTable, Input

        saved = self.ws.ui_restore.get(str(self.STEP))
        if not saved:
            return
        if fields:
            for i in self.query(Input):
                if i.id in saved.get("fields", {}):
                    i.value = saved["fields"][i.id]
            saved.pop("fields", None)
        if rows:
            for t in self.query(DataTable):
                row = saved.get("rows", {}).get(t.id)
                if row is not None and t.row_count:
                    t.move_cursor(row=min(int(row), t.row_count - 1))
            saved.pop("rows", None)
        if not saved:
            self.ws.ui_restore.pop(str(self.STEP), None)

    def save_soon(self) -> None:
        """Save the session a moment after the last change (a row, a field), not per key."""
        if self._save_timer is not None:
            self._save_timer.stop()
        self._save_timer = self.set_timer(1.0, self.save_pending)

    _save_timer = None

    def save_pending(self) -> None:
        """The save `save_soon` has pending, now: before a key changes what a task will measure
        and before a task starts (no save runs while it does: a choice made just before, such
        as Combine's `m` before `c`, was lost with a link dropped during the task)."""
        if self._save_timer is None:
            return
        self._save_timer.stop()
        self._save_timer = None
        self.app.save_session()

    def on_input_changed(self, event) -> None:
        self.save_soon()

    def on_data_table_row_highlighted(self, event) -> None:
        if not self.ws.ui_restore.get(str(self.STEP)):  # not while the saved rows are put back
            self.save_soon()

    def pipeline_selection(self) -> tuple[list, list] | None:
        """The frames the pipeline selects from what step 1 chose, and the files it skipped
        (unreadable ones: Files lists them as not used, so `exclude` names them); None (and
        said why) if none."""
        from tui_stack import pipeline

        skipped = []
        try:
            return pipeline.select(self.ws.config_for_run(), skipped), skipped
        except InputError as exc:
            self.status(str(exc), error=True)
            return None

    def status(self, text: str, error: bool = False) -> None:
        st = self.query_one("#status", Static)
        # an error may take two or three lines (the layout moves, rarely); anything else keeps to one
        busy = not self.query_one("#progress", ProgressBar).has_class("idle")
        width = max(20, (self.size.width or self.app.size.width) - (PROGRESS_WIDTH if busy else 0))
        lines = 1 if not error or len(text) <= width else 2 if len(text) <= 2 * width - 2 else 3
        st.update(fit_line(safetext.terminal(text), lines * width - 2 * (lines - 1)))  # any file name as it is
        st.set_class(error, "error")
        row = self.query_one("#statusrow")
        row.set_class(lines == 2, "two")
        row.set_class(lines == 3, "three")

    # ------------------------------------------------------------ size, help

    NAME_WIDTH = 0  # the width at 80 columns of the screen's file column (0: it has none)

    @property
    def name_width(self) -> int:
        return name_width(self.NAME_WIDTH, self.app.size.width)

    def names_widened(self) -> None:
        """The file column changed width: cut the names again (screens with one say how)."""

    def on_resize(self, event) -> None:
        w, h = self.app.size
        if self.NAME_WIDTH:
            self.names_widened()
        small = w < MIN_SIZE[0] or h < MIN_SIZE[1]
        self.set_class(small, "too-small")
        if small:
            self.query_one("#toosmall", Static).update(
                f"The terminal is {w}x{h}: tui-stack needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}. "
                "Enlarge the window, or press q to quit.")

    def help_lines(self) -> list:
        """What help shows: paragraphs (str) and (keys, description) rows."""
        lines: list = [self.HELP, ""] if self.HELP else []
        for b in screen_bindings(self):
            keys = ", ".join(self.app.get_key_display(Binding(k, b.action)) for k in b.key.split(","))
            lines.append((keys, b.description))
        if self.query(Input):
            lines += ["", ("enter", "in a field: apply it and leave it"),
                      ("escape", "leave the field; in a field the letter keys above are typed into it")]
        lines += ["", ("tab, shift+tab", "move between the fields and tables"),
                  ("arrows", "move in the focused table, field or preview"),
                  ("ctrl+p", "command palette: every action by name")]
        legend = self.legend()
        if legend:
            lines += ["", legend]
        return lines

    def legend(self) -> str:
        return ""

    def action_help(self) -> None:
        self._in_dialog = True
        self.app.push_screen(HelpScreen(f"{self.STEP + 1} {STEPS[self.STEP]}: keys", self.help_lines()))

    def ask(self, question: str, answer: Callable[[bool], None]) -> None:
        """A yes/no question over the screen; answer(yes) then says what happened (the status)."""
        self._in_dialog = True
        self.app.push_screen(ConfirmScreen(question), lambda yes: answer(bool(yes)))

    _in_dialog = False

    def back_from_dialog(self) -> bool:
        """On a screen resume: it was help or a question that closed, so focus (a field being
        typed in) and the status stay as they were."""
        was, self._in_dialog = self._in_dialog, False
        return was

    # ------------------------------------------------------------ long work in a thread

    def run_task(self, label: str, fn: Callable, done: Callable | None = None, quiet: bool = False,
                 undo: Callable[[], str] | None = None) -> None:
        """Run fn(progress) in a worker thread; progress(stage, k, n) drives the bar; errors become
        messages (a bug also writes a log); done(result) runs on the UI thread. quiet: a short
        task (a cut-out) that shows no bar and no status unless it fails. undo: run if the task
        is cancelled or fails (a changed setting put back, see `remeasure`); says what it did.
        While a task that is not quiet runs, the session is not saved (App.save_session): the
        tables are half measured, or measured under another setting than the config's."""
        if not quiet:
            self.save_pending()
            self.measuring += 1
            bar = self.query_one("#progress", ProgressBar)
            bar.remove_class("idle")
            bar.update(total=100, progress=0)
            self.status(f"{label}…")
        last = [-1.0, ""] if not quiet else [float("inf"), None]
        mine: list = []  # this task's own worker: a newer one replaces self._worker (exclusive)

        def progress(stage, k, n):
            worker = mine[0] if mine else None
            if worker is not None and worker.is_cancelled:
                from tui_stack.core.combine import Cancelled

                raise Cancelled()
            if quiet:
                return
            now = time.monotonic()
            # throttled: every repaint of the bar and the status line costs ~0.2 KB over SSH
            if now - last[0] >= PROGRESS_EVERY or stage != last[1]:
                last[0], last[1] = now, stage
                self.app.call_from_thread(self._progress, stage, int(100 * k / max(n, 1)))

        def work():
            from tui_stack import compute
            from tui_stack.core.combine import Cancelled

            try:
                with compute.using(self.app.engine()):
                    result = fn(progress)
            except Cancelled:
                self.app.call_from_thread(self._finish, None, f"{label}: cancelled", False, quiet, undo, mine)
                return
            except InputError as exc:
                self.app.call_from_thread(self._finish, None, str(exc), True, quiet, undo, mine)
                return
            except Exception as exc:  # a bug: keep the app alive, keep the evidence
                log = crash_log(exc)
                self.app.call_from_thread(
                    self._finish, None, f"internal error ({type(exc).__name__}: {exc}); details in {log}", True,
                    quiet, undo, mine)
                return
            self.app.call_from_thread(self._finish, (done, result), None if quiet else f"{label}: done", False,
                                      quiet, None, mine)

        self._worker = self.run_worker(work, thread=True, exclusive=True, group="step")
        mine.append(self._worker)

    _worker = None
    measuring = 0  # tasks under way that are not quiet

    def remeasure(self, section: str, key: str, value, measure: Callable) -> None:
        """Change a setting the measured tables depend on, then measure(undo) starts the task
        that measures them again. Until it is done the session on disk keeps the old setting
        with the old tables (a dropped link resumes as before the key); if it is cancelled or
        fails, the old setting is put back."""
        from tui_stack.errors import ConfigError

        self.save_pending()  # with the setting the tables were measured in
        part = getattr(self.ws.config, section)
        old = getattr(part, key)
        try:
            self.ws.config.set(section, key, value)
            self.ws.config.check()  # the rules between keys too (growth with an annulus mean)
        except ConfigError as exc:
            setattr(part, key, old)
            self.status(str(exc).removeprefix("config: "), error=True)
            return

        def undo() -> str:
            setattr(part, key, old)
            self.undone()
            return f"{key} {old:g} again" if isinstance(old, float) else f"{key} {old} again"

        measure(undo)

    def undone(self) -> None:
        """A re-measure was cancelled or failed and its setting put back: show the tables as
        they are now (screens with tables say how)."""

    def _progress(self, stage: str, pct: int) -> None:
        self.query_one("#progress", ProgressBar).update(progress=pct)
        dashboard = self.app.dashboard
        self.status(f"{stage}… {pct}%" + (f"  Dask dashboard: {dashboard}" if dashboard else ""))

    def _finish(self, payload, message: str, error: bool, quiet: bool = False, undo: Callable | None = None,
                mine: list | None = None) -> None:
        if not mine or self._worker is mine[0]:  # not when a newer task replaced this one: it runs on
            self._worker = None
        if not quiet:
            self.measuring -= 1
        if payload is None and undo is not None:
            message = f"{message}; {undo()}"
        if message is not None:  # not after a quiet task (a cut-out): nothing was decided
            self.app.save_session(self.STEP)
        self.query_one("#progress", ProgressBar).add_class("idle")
        if message is not None:
            self.status(message, error)
        if payload is not None:
            done, result = payload
            if done is not None:
                done(result)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def still_busy(self) -> bool:
        """A key that would start other work while a task runs: said, not dropped in silence
        (nor run beside it on the same tables)."""
        if self.measuring:  # a cut-out loading (quiet) is replaced, not waited for
            self.status("still working; wait or press escape to cancel")
        return bool(self.measuring)

    def action_cancel_task(self) -> None:
        """escape: cancel the running task; else leave a field being typed in, so the screen's
        keys (n, w, c, ...) work again instead of going into it."""
        if self._worker is not None:
            self._worker.cancel()
        elif isinstance(self.focused, Input):
            self.leave_field()

    def leave_field(self) -> None:
        from textual.widgets import DataTable

        tables = [t for t in self.query(DataTable) if t.display and t.can_focus]
        if tables:
            tables[0].focus()
        else:
            self.set_focus(None)

    def on_input_submitted(self, event) -> None:
        """enter in a field: done typing (Files rescans first)."""
        self.leave_field()

    # ------------------------------------------------------------ navigation

    def can_leave(self) -> bool:
        """Checked before going to the next step; say why not with self.status."""
        return True

    def action_next(self) -> None:
        if self.still_busy():
            return
        if self.STEP + 1 < len(STEPS) and self.can_leave():
            self.app.goto(self.STEP + 1)

    def action_back(self) -> None:
        if self.STEP > 0 and not self.still_busy():
            self.app.goto(self.STEP - 1)


def cutout(image, x: float, y: float, size: int = 19):
    """A size x size stamp centred on (x, y); NaN outside the image."""
    import numpy as np

    h, w = image.shape
    half = size // 2
    out = np.full((size, size), np.nan, dtype=np.float32)
    xc, yc = int(round(x)), int(round(y))
    x0, x1 = max(0, xc - half), min(w, xc + half + 1)
    y0, y1 = max(0, yc - half), min(h, yc + half + 1)
    if x1 > x0 and y1 > y0:
        out[y0 - (yc - half) : y1 - (yc - half), x0 - (xc - half) : x1 - (xc - half)] = image[y0:y1, x0:x1]
    return out


def stamp_limits(stamp) -> tuple[float, float] | None:
    """Linear from just above the stamp's sky to its peak: the star's profile on a flat sky
    (a noisy sky would cost a colour change per cell over SSH and show nothing)."""
    import numpy as np

    if not np.isfinite(stamp).any():
        return None
    sky = float(np.nanmedian(stamp))
    spread = float(np.nanmedian(np.abs(stamp - sky))) * 1.4826
    lo, hi = sky + 2 * spread, float(np.nanmax(stamp))
    return (lo, hi) if hi > lo else None


class PreviewScreen(WizardScreen):
    """Shared by the screens with a preview: cursor, pan and zoom keys."""

    BINDINGS = [
        Binding("up", "move(0, 1)", "Move the cursor (arrows)", show=False),
        Binding("down", "move(0, -1)", show=False),
        Binding("left", "move(-1, 0)", show=False),
        Binding("right", "move(1, 0)", show=False),
        Binding("shift+up,K", "pan(0, -5)", "Pan up (also shift+arrows)", key_display="K"),
        Binding("shift+down,J", "pan(0, 5)", "Pan down", key_display="J"),
        Binding("shift+left,H", "pan(-10, 0)", "Pan left", key_display="H"),
        Binding("shift+right,L", "pan(10, 0)", "Pan right", key_display="L"),
        Binding("plus,equals_sign", "zoom(2)", "Zoom in at the cursor", key_display="+"),
        Binding("minus", "zoom(0.5)", "Zoom out", key_display="-"),
        Binding("0", "fit", "Fit the whole frame"),
    ]

    def preview(self):
        from tui_stack.tui.preview import ImageView

        return self.query_one("#preview", ImageView)

    def action_move(self, dx: int, dy: int) -> None:
        self.preview().move_cursor(dx, dy)

    def action_pan(self, dx: int, dy: int) -> None:
        self.preview().pan(dx, dy)

    def action_zoom(self, factor: float) -> None:
        self.preview().zoom(factor)

    def action_fit(self) -> None:
        self.preview().fit(user=True)

    def ensure_run(self) -> bool:
        """The pipeline state for the frames chosen on step 1 (rebuilt when they change)."""
        from tui_stack import pipeline

        ws = self.ws
        if ws.run is not None:
            return True
        chosen = self.pipeline_selection()
        if chosen is None:
            return False
        ws.run = pipeline.RunState(config=ws.config, files=chosen[0], skipped=chosen[1])
        ws.ref_image = None
        ws.star_xy = None
        return True
