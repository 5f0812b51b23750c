"""Step 1: which frames. Directory, glob and header filter; a table of headers and quick stats."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Static

from tui_stack import safetext
from tui_stack.core.io import resolved
from tui_stack.errors import InputError
from tui_stack.fmt import fit_number, fmt
from tui_stack.tui.common import Field, WizardScreen, fixed_table, row_index, widen_names
from tui_stack.tui.calibration import CalibrationPanel

# narrow columns for 80 columns; the detail line under the table gives the highlighted file in full
NAME_WIDTH = 15
COLUMNS = (("u", 1), ("file", NAME_WIDTH), ("date  time", 11), ("exp", 4), ("filt", 4), ("shape", 9), ("median", 7),
           ("note", 10))


class FilesScreen(WizardScreen):
    STEP = 0
    NAME_WIDTH = NAME_WIDTH
    KEYS = "[b]space[/] use/skip  [b]g[/] glob  [b]/[/] filter  [b]n[/] next"
    HELP = ("Which frames to stack: the directory, the glob and the header filter (KEY=VALUE, ...) select "
            "them; space leaves one out. Column u: ✓ used, · skipped; the line under the table shows the "
            "highlighted file in full, with the reason an unreadable file is left out.")
    BINDINGS = [
        Binding("space,x", "toggle", "Use or skip the highlighted frame (x as on Shifts)", key_display="space"),
        Binding("a", "toggle_all", "Use all frames, or skip all"),
        Binding("r", "rescan", "Read the directory again"),
        Binding("g", "edit('pattern')", "Edit the glob (enter applies)"),
        Binding("slash", "edit('filter')", "Edit the header filter (enter applies)", key_display="/"),
        # the calibration panel's keys (tui/calibration.py), shown in its own lines
        Binding("c", "calibration('build')", "Calibration: build the masters and show them", show=False),
        Binding("v", "calibration('next_master')", "Calibration: preview the next master", show=False),
        Binding("k", "calibration('toggle')", "Calibration: on or off", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        cfg = self.ws.config
        select = ", ".join(f"{k}={v}" for k, v in cfg.input.select.items())
        with Horizontal(classes="inputs"):
            yield Field(str(cfg.input.directory), placeholder="directory", id="directory")
            yield Field(cfg.input.pattern, placeholder="glob, e.g. *.fits", id="pattern")
            yield Field(select, placeholder="header filter, e.g. PICTTYPE=1", id="filter")
        yield fixed_table("files", COLUMNS, self.name_width)
        yield Static("", id="detail", classes="detail", markup=False)
        yield CalibrationPanel(id="calibration")

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()
        # after the first paint: the scan imports astropy, which would hold the GIL before it
        self.call_after_refresh(self.action_rescan)

    def on_screen_resume(self) -> None:
        """Back from a later step: frames skipped or used there show so here."""
        table = self.query_one(DataTable)
        if not self.ws.infos or table.row_count != len(self.ws.infos):
            return
        column = table.ordered_columns[0].key
        for i, info in enumerate(self.ws.infos):
            mark = "✓" if i in self.ws.included else "·"
            if not info.error and table.get_cell(str(i), column) != mark:
                table.update_cell(str(i), column, mark)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_rescan()  # then WizardScreen's handler leaves the field

    def action_edit(self, field: str) -> None:
        self.query_one(f"#{field}", Input).focus()

    def action_rescan(self) -> None:
        from tui_stack.config import parse_select

        cfg = self.ws.config
        directory = Path(self.query_one("#directory", Input).value).expanduser()
        pattern = self.query_one("#pattern", Input).value.strip() or "*.fits"
        if self._took is not None and self._took[1] != pattern:  # the user's own glob now
            self._took = None
        try:
            select = parse_select(self.query_one("#filter", Input).value)
        except ValueError as exc:
            self.status(f"header filter: {exc}; write KEY=VALUE, KEY2=VALUE2", error=True)
            return
        try:
            where = resolved(directory)
        except InputError as exc:
            self.status(str(exc), error=True)
            return
        self.save_pending()  # before the selection changes under the measured tables
        cfg.input.directory, cfg.input.pattern, cfg.input.select = where, pattern, select
        if not directory.is_dir():
            self.status(f"{directory}: no such directory; type another and press enter", error=True)
            return
        table = self.query_one(DataTable)
        table.clear()
        self.ws.infos, self.ws.included = [], set()
        self._changed = True

        def scan(progress):
            import time

            from tui_stack import pipeline

            n = 0
            batch, sent = [], time.monotonic()
            for info in pipeline.scan(directory, pattern, progress):
                n += 1
                if info.error or info.selected_by(select):
                    batch.append(info)
                if batch and time.monotonic() - sent > 0.5:  # rows in batches: each add repaints the table
                    self.app.call_from_thread(self._add, batch)
                    batch, sent = [], time.monotonic()
            if batch:
                self.app.call_from_thread(self._add, batch)
            return n

        self.run_task("reading frames", scan, self._scanned)

    def _add(self, infos) -> None:
        ws = self.ws
        table = self.query_one(DataTable)
        for info in infos:
            ws.infos.append(info)
            i = len(ws.infos) - 1
            if not info.error:
                ws.included.add(i)
            self._row(table, i, info)

    def _row(self, table, i: int, info) -> None:
        shape = f"{info.shape[1]}x{info.shape[0]}" if info.shape else ""
        table.add_row(
            "✓" if i in self.ws.included else "·", safetext.markup_name(info.path.name, self.name_width),
            safetext.markup(info.date_obs[5:16].replace("T", " ")),
            fit_number(info.exptime, 4, missing=""), info.filter, shape, fmt(info.median, ".1f", ""),
            info.error, key=str(i),
        )

    def names_widened(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row or 0
        if widen_names(table, COLUMNS, self.name_width):
            for i, info in enumerate(self.ws.infos):
                self._row(table, i, info)
            if table.row_count:
                table.move_cursor(row=min(row, table.row_count - 1))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is None or int(event.row_key.value) >= len(self.ws.infos):
            return
        info = self.ws.infos[int(event.row_key.value)]
        if info.error:
            text = f"{info.path.name}: unreadable, not used: {info.error}"
        else:
            text = (f"{info.path.name}  {info.date_obs}  {info.imagetyp or '-'}  median "
                    f"{fmt(info.median, '.1f', '?')} std {fmt(info.std, '.1f', '?')} max {fmt(info.max, '.0f', missing='?')}")
        self.query_one("#detail", Static).update(safetext.terminal(text))

    def _scanned(self, n_files: int) -> None:
        ws = self.ws
        # Settle the table once its rows are laid out: else the first cursor key repaints all
        # of it (2.8 KB instead of 0.6 KB over SSH, measured with tmux pipe-pane).
        table = self.query_one(DataTable)
        self.set_timer(0.2, lambda: (table.action_cursor_down(), table.action_cursor_up()))
        if n_files == 0:
            from tui_stack.config import InputConfig
            from tui_stack.core.io import fits_pattern

            pattern = ws.config.input.pattern
            other = fits_pattern(ws.config.input.directory)
            if other is not None and pattern == InputConfig().pattern and other[0] != pattern:
                # the default glob and a folder of .fit / .fits.fz frames: take those, and say so
                self._took = (pattern, other[0])
                self.query_one("#pattern", Input).value = other[0]
                self.action_rescan()
                return
            held = f" (it holds {other[1]} {other[0]!r} files)" if other else ""
            self.status(f"no files match {pattern!r} in {ws.config.input.directory}{held}; g edits the glob",
                        error=True)
            return
        self._n_files = n_files
        self._selection_status()
        self.query_one(CalibrationPanel).scanned(self)
        if ws.resume is not None:
            self.call_after_refresh(self._resume)  # once the scan's worker has fully ended
        else:  # a fresh wizard's session from here on: --resume after a dropped link finds this one
            self.app.save_session(self.STEP)

    _n_files = 0
    _took = None  # (the default glob, the one taken instead) after a folder the default missed

    def _selection_status(self) -> None:
        """How many files are ticked, as the table's u column shows."""
        ws, n_files = self.ws, self._n_files
        msg = f"{len(ws.usable_infos())} of {n_files} files selected"
        if self._took is not None:
            msg = f"no {self._took[0]!r} files here: glob {self._took[1]!r} (g edits it); {msg}"
        if len(ws.infos) < n_files:
            msg += f" ({n_files - len(ws.infos)} left out by the header filter)"
        bad = sum(1 for i in ws.infos if i.error)
        if bad:
            msg += f"; {bad} unreadable (the line above says why)"
        self.status(msg)

    def _resume(self) -> None:
        """Back to where the saved session was: same frames, tables, step."""
        from tui_stack.tui import session

        ws = self.ws
        data, ws.resume = ws.resume, None
        names = set(data.get("included", []))
        for i, info in enumerate(ws.infos):
            self._set_use(i, info.path.name in names and not info.error)
        stale = session.restore_run(ws, data)
        self._changed = False  # the restored state is the selection's
        self.restore_ui(fields=False)
        self._selection_status()
        step = int(data.get("step", 0))
        if stale:
            self.status(stale, error=True)
        if ws.run is None or step == 0:
            return

        def load(progress):
            from tui_stack.pipeline import sky_subtracted

            return sky_subtracted(ws.run.files[ws.run.ref_index], ws.config)

        def loaded(result):
            ws.ref_image, ws.ref_noise = result
            ws.dirty = bool(ws.run.frames)  # measured tables, not written yet
            self.app.goto(step)

        self.run_task("resuming the saved session", load, loaded)

    def _set_use(self, i: int, use: bool) -> None:
        ws = self.ws
        if ws.infos[i].error:
            return
        (ws.included.add if use else ws.included.discard)(i)
        table = self.query_one(DataTable)
        table.update_cell(str(i), table.ordered_columns[0].key, "✓" if use else "·")
        self._changed = True

    _changed = False  # the selection changed here since the pipeline state was last told

    def _apply_selection(self) -> bool:
        """Leaving with another selection: the pipeline selects the frames again and its state
        drops what depended on the old set (RunState.set_files; the wizard's preview too), or
        skips and takes back frames already measured (RunState.set_used)."""
        ws = self.ws
        if ws.run is None:
            return True  # built on the next screen
        chosen = self.pipeline_selection()
        if chosen is None:
            return False
        files, ws.run.skipped = chosen
        if files != ws.run.files:
            ws.run.set_files(files)
            ws.ref_image, ws.star_xy = None, None
        else:  # the same frames, some skipped or taken back: measured shifts stay
            chosen = set(ws.selected_files())
            for i, fr in enumerate(ws.run.frames):
                if (fr.path in chosen) != ("excluded" not in fr.flags):
                    ws.run.set_used(i, fr.path in chosen)
        ws.run.config = ws.config
        self._changed = False
        return True

    def action_toggle(self) -> None:
        i = row_index(self.query_one(DataTable))
        if not self.ws.infos or i is None:
            return
        self._set_use(i, i not in self.ws.included)
        self._selection_status()

    def action_toggle_all(self) -> None:
        use = len(self.ws.included) < sum(1 for i in self.ws.infos if not i.error)
        for i in range(len(self.ws.infos)):
            self._set_use(i, use)
        self._selection_status()

    def can_leave(self) -> bool:
        usable = self.ws.usable_infos()
        if len(usable) < 2:
            self.status("select at least two readable frames to stack", error=True)
            return False
        if self._changed and not self._apply_selection():
            return False
        return self.query_one(CalibrationPanel).ready(self, self.action_next)

    def action_calibration(self, what: str) -> None:
        panel = self.query_one(CalibrationPanel)
        if what == "build" and not self.busy:
            panel.build(self)
        elif what == "toggle" and not self.busy:
            panel.toggle(self)
        elif what == "next_master":
            panel.next_master()
