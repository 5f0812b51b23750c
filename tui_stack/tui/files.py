"""Step 1: which frames. Directory, glob and header filter; a table of headers and quick stats."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input

from tui_stack.fmt import fmt
from tui_stack.tui.app import WizardScreen
from tui_stack import safetext

COLUMNS = ("use", "file", "DATE-OBS", "EXPTIME", "FILTER", "type", "shape", "median", "std", "max", "note")


class FilesScreen(WizardScreen):
    STEP = 0
    BINDINGS = [
        Binding("space", "toggle", "Use/skip"),
        Binding("a", "toggle_all", "All"),
        Binding("r", "rescan", "Rescan"),
        Binding("slash", "edit", "Edit filter"),
        Binding("escape", "cancel_task", "Cancel", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        cfg = self.ws.config
        select = ", ".join(f"{k}={v}" for k, v in cfg.input.select.items())
        with Horizontal(classes="inputs"):
            yield Input(str(cfg.input.directory), placeholder="directory", id="directory")
            yield Input(cfg.input.pattern, placeholder="glob, e.g. *.fits", id="pattern")
            yield Input(select, placeholder="header filter, e.g. PICTTYPE=1", id="filter")
        table = DataTable(id="files", cursor_type="row", zebra_stripes=False)
        table.add_columns(*COLUMNS)
        yield table

    def on_mount(self) -> None:
        for inp in self.query(Input):
            inp.cursor_blink = False  # a blinking cursor costs ~1.8 KB/s over SSH
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
        self.action_rescan()
        self.query_one(DataTable).focus()

    def action_edit(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_rescan(self) -> None:
        from tui_stack.config import parse_select

        cfg = self.ws.config
        directory = Path(self.query_one("#directory", Input).value).expanduser()
        pattern = self.query_one("#pattern", Input).value.strip() or "*.fits"
        try:
            select = parse_select(self.query_one("#filter", Input).value)
        except ValueError as exc:
            self.status(f"header filter: {exc}; write KEY=VALUE, KEY2=VALUE2", error=True)
            return
        cfg.input.directory, cfg.input.pattern, cfg.input.select = directory.resolve(), pattern, select
        if not directory.is_dir():
            self.status(f"{directory}: no such directory; type another and press enter", error=True)
            return
        table = self.query_one(DataTable)
        table.clear()
        self.ws.infos, self.ws.included = [], set()
        self.ws.run = None

        def scan(progress):
            from tui_stack import pipeline

            n = 0
            for info in pipeline.scan(directory, pattern, progress):
                n += 1
                if info.error or info.selected_by(select):
                    self.app.call_from_thread(self._add, info)
            return n

        self.run_task("reading frames", scan, self._scanned)

    def _add(self, info) -> None:
        ws = self.ws
        ws.infos.append(info)
        i = len(ws.infos) - 1
        if not info.error:
            ws.included.add(i)
        shape = f"{info.shape[1]}x{info.shape[0]}" if info.shape else ""
        self.query_one(DataTable).add_row(
            "✓" if i in ws.included else "·", safetext.markup(info.path.name), safetext.markup(info.date_obs[:19]), fmt(info.exptime, "g", missing=""),
            info.filter, info.imagetyp, shape, fmt(info.median, ".1f", ""), fmt(info.std, ".1f", ""), fmt(info.max, ".0f", missing=""),
            info.error, key=str(i),
        )

    def _scanned(self, n_files: int) -> None:
        ws = self.ws
        # Settle the table once its rows are laid out: else the first cursor key repaints all
        # of it (2.8 KB instead of 0.6 KB over SSH, measured with tmux pipe-pane).
        table = self.query_one(DataTable)
        self.set_timer(0.2, lambda: (table.action_cursor_down(), table.action_cursor_up()))
        bad = sum(1 for i in ws.infos if i.error)
        if n_files == 0:
            self.status(f"no files match {ws.config.input.pattern!r} in {ws.config.input.directory}; edit the glob (/)", error=True)
            return
        msg = f"{len(ws.usable_infos())} of {n_files} files selected"
        if len(ws.infos) < n_files:
            msg += f" ({n_files - len(ws.infos)} left out by the header filter)"
        if bad:
            msg += f"; {bad} unreadable (see note)"
        self.status(msg + ". space: use/skip, n: next")
        if ws.resume is not None:
            self.call_after_refresh(self._resume)  # once the scan's worker has fully ended

    def _resume(self) -> None:
        """Back to where the saved session was: same frames, tables, step."""
        from tui_stack.tui import session

        ws = self.ws
        data, ws.resume = ws.resume, None
        names = set(data.get("included", []))
        for i, info in enumerate(ws.infos):
            self._set_use(i, info.path.name in names and not info.error)
        stale = session.restore_run(ws, data)
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
            ws.dirty = True
            self.app.goto(step)

        self.run_task("resuming the saved session", load, loaded)

    def _set_use(self, i: int, use: bool) -> None:
        ws = self.ws
        if ws.infos[i].error:
            return
        (ws.included.add if use else ws.included.discard)(i)
        table = self.query_one(DataTable)
        table.update_cell(str(i), table.ordered_columns[0].key, "✓" if use else "·")
        ws.run = None

    def action_toggle(self) -> None:
        table = self.query_one(DataTable)
        if not self.ws.infos or table.cursor_row is None:
            return
        row_key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        i = int(row_key.value)
        self._set_use(i, i not in self.ws.included)
        self.status(f"{len(self.ws.usable_infos())} frames selected")

    def action_toggle_all(self) -> None:
        use = len(self.ws.included) < sum(1 for i in self.ws.infos if not i.error)
        for i in range(len(self.ws.infos)):
            self._set_use(i, use)

    def can_leave(self) -> bool:
        usable = self.ws.usable_infos()
        if len(usable) < 2:
            self.status("select at least two readable frames to stack", error=True)
            return False
        shapes = {u.shape for u in usable}
        if len(shapes) > 1:
            self.status("the selected frames differ in shape; skip the odd ones (space)", error=True)
            return False
        return True
