"""Step 3: the shifts table, a plot of the shifts, and the lab's visual check (blink)."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult

from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from tui_stack import safetext
from tui_stack.fmt import fmt
from tui_stack.tui import plot
from tui_stack.tui.common import (WizardScreen, cutout, fixed_table, flag_codes, flag_legend, name_list, row_index,
                                  stamp_limits, widen_names)
from tui_stack.tui.preview import ImageView

# narrow columns; the detail line gives the highlighted frame in full
NAME_WIDTH = 10
COLUMNS = (("#", 2), ("file", NAME_WIDTH), ("u", 1), ("shift x", 7), ("shift y", 7), ("n", 2), ("rms", 5), ("flags", 4))


def geometry(fr) -> str:
    """What the registration found beyond a shift and a turn; empty for a plain frame."""
    parts = [f"scale {fr.scale_ratio:.5f}"] if abs(fr.scale_ratio - 1) > 5e-6 else []
    parts += [name for name, on in (("mirrored", fr.mirrored), ("flipped", fr.flipped)) if on]
    return "".join(", " + p for p in parts)


class ShiftsScreen(WizardScreen):
    STEP = 2
    NAME_WIDTH = NAME_WIDTH
    KEYS = "[b]k[/] blink  [b]x[/] use/skip  [b]s[/] mode  [b]e[/] residuals  [b]n[/] next"
    HELP = ("The shift of each frame onto the reference: # the frame's index (as in [reference] frame and "
            "run's summary); u ✓ used; n stars matched; rms of the fit (px); "
            "the line under the table: the highlighted frame's shift to 0.001 px, rotation, scale ratio, mirror or flip, and flags in full. The cut-out shows the highlighted frame after shifting (k blinks it against "
            "the reference); the plot shows all shifts, or with e the star residuals of one frame.")
    BINDINGS = [
        Binding("k", "blink", "Blink the cut-out: this frame shifted / the reference"),
        Binding("x,space", "exclude", "Use or skip the highlighted frame (space as on Files)", key_display="x"),
        Binding("r", "measure", "Measure the shifts again"),
        Binding("s", "mode", "Shift mode: integer (whole pixels, as the lab) or subpixel (resampled; turned frames)"),
        Binding("e", "residuals", "Plot: star residuals of this frame / shifts of all"),
    ]

    def legend(self) -> str:
        return "flags (code name):\n" + flag_legend()

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="main"):
            with Vertical():
                yield fixed_table("shifts", COLUMNS, self.name_width)
                yield Static("", id="detail", classes="detail", markup=False)
                yield plot.PlotView("shifts (px)", "x", "y", id="plot", classes="plot")
            with Vertical(classes="side-narrow"):
                yield Static("", id="cutinfo", classes="info")
                yield ImageView(id="cutout", classes="cutout", magnify=True)
        self._showing_ref = False
        self._residuals = False  # the plot: shifts of all frames, or the fit residuals of one
        self._frame_cut = None
        self._ref_cut = None

    def on_screen_resume(self) -> None:
        run = self.ws.run
        self.query_one(DataTable).focus()
        if run is None or self.ws.star_xy is None:
            self.status("choose the reference star first (b: back)", error=True)
            return
        if not run.frames:
            self.action_measure()
        else:
            self._fill()

    def names_widened(self) -> None:
        if widen_names(self.query_one(DataTable), COLUMNS, self.name_width) and self.ws.run and self.ws.run.frames:
            self._fill()

    def action_measure(self, undo=None) -> None:
        from tui_stack import pipeline

        if self.still_busy():
            return
        run = self.ws.run
        run.config = self.ws.config_for_run()
        self.run_task("measuring shifts", lambda p: pipeline.register(run, p), self._measured, undo=undo)

    def undone(self) -> None:
        if self.ws.run is not None and self.ws.run.frames:
            self._fill()

    def _measured(self, _=None) -> None:
        self.ws.dirty = True
        self._fill()

    def _fill(self) -> None:
        run = self.ws.run
        table = self.query_one(DataTable)
        row = table.cursor_row or 0
        table.clear()
        for i, fr in enumerate(run.frames):
            table.add_row(
                str(i), safetext.markup_name(fr.name, self.name_width), "✓" if fr.used else "·", fmt(fr.shift_x, ".2f"),
                fmt(fr.shift_y, ".2f"), str(fr.n_matched or "-"), fmt(fr.fit_rms, ".3f"), flag_codes(fr.flags),
                key=str(i),
            )
        if run.frames:
            table.move_cursor(row=min(row, len(run.frames) - 1))
        self._ref_cut = cutout(self.ws.ref_image, *self.ws.star_xy) if self.ws.ref_image is not None else None
        self._plot()
        self.restore_ui()
        bad = [fr.name for fr in run.frames if fr.flags and not set(fr.flags) <= {"excluded"}]
        head = f"{sum(f.used for f in run.frames)} of {len(run.frames)} frames used, {run.config.shift.mode} mode (s)"
        tail, room = ". n: scales", self.size.width - len(head) - 11
        flagged = name_list("; flagged: ", bad, room)
        if len(flagged) > room:  # not even one name fits: the count (the fl column names them)
            flagged = f"; {len(bad)} flagged"
        self.status(head + flagged + tail)

    def _plot(self) -> None:
        run = self.ws.run
        view = self.query_one("#plot", plot.PlotView)
        table = self.query_one(DataTable)
        i = row_index(table)
        if self._residuals and run.frames and i is not None:
            fr = run.frames[i]
            res = np.array(fr.residuals, float).reshape(-1, 4)
            # the table's n counts the stars kept in the fit; the plot shows the rejected ones too
            view.title = (f"{safetext.terminal(fr.name)}: star - fit (px), {fr.n_matched} of {len(res)} stars used, "
                          f"rms {fmt(fr.fit_rms, '.3f')}")
            view.xlabel, view.ylabel = "dx", "dy"
            view.set_data(res[:, 2], res[:, 3])
            return
        ok = [fr for fr in run.frames if fr.used and np.isfinite(fr.shift_x)]
        view.title, view.xlabel, view.ylabel = "shifts (px)", "x", "y"
        view.set_data([f.shift_x for f in ok], [f.shift_y for f in ok])

    def action_residuals(self) -> None:
        """The plot shows the highlighted frame's fit residuals, or the shifts of all frames."""
        if self.ws.run is None or not self.ws.run.frames:
            return
        self._residuals = not self._residuals
        self._plot()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        run = self.ws.run
        if run is None or event.row_key is None or not run.frames:
            return
        i = int(event.row_key.value)
        fr = run.frames[i]
        if self._residuals:
            self._plot()
        self.query_one("#cutinfo", Static).update(f"[b]{safetext.markup(fr.name)}[/]\nafter shift ({fmt(fr.applied_shift_x, 'g')}, "
                                                  f"{fmt(fr.applied_shift_y, 'g')})")
        # two lines at 80 columns hold it all with a long name and three flags (the star's
        # centroid is in report.json)
        rot = f"{fmt(round(fr.rotation, 3) + 0.0, '.3f')}°" if np.isfinite(fr.rotation) else "-"
        self.query_one("#detail", Static).update(safetext.terminal(
            f"{i} {fr.name}: shift ({fmt(fr.shift_x, '.3f')}, {fmt(fr.shift_y, '.3f')}), rot {rot}{geometry(fr)}; "
            + (f"flags: {', '.join(fr.flags)}" if fr.flags else "no flags")))
        if not np.isfinite(fr.shift_x):
            return

        def load(progress):
            from tui_stack import pipeline

            data, mask, _ = pipeline.prepared_frame(run, i)
            data = np.where(mask, np.nan, data)
            return cutout(data, *self.ws.star_xy)

        self.run_task(f"cut-out of {fr.name}", load, self._show_cut, quiet=True)

    def _show_cut(self, cut) -> None:
        self._frame_cut = cut
        self._showing_ref = False
        self._show()

    def _show(self) -> None:
        view = self.query_one("#cutout", ImageView)
        img = self._ref_cut if self._showing_ref else self._frame_cut
        if img is None:
            return
        # one scale for both, from the reference: blinking compares like with like
        limits = stamp_limits(self._ref_cut) if self._ref_cut is not None else None
        same = view.image is not None and view.image.shape == img.shape
        view.set_image(img, limits, keep_view=same)
        view.set_markers({(img.shape[1] // 2, img.shape[0] // 2): ("+", "green")})
        view.cursor_visible = False
        view.border_title = "reference" if self._showing_ref else "shifted"

    def action_blink(self) -> None:
        self._showing_ref = not self._showing_ref
        self._show()

    def action_exclude(self) -> None:
        run = self.ws.run
        i = row_index(self.query_one(DataTable))
        if run is None or not run.frames or i is None:
            return
        fr = run.frames[i]
        wanted = "excluded" in fr.flags
        if not wanted and not fr.used:
            # already out for a reason of its own (integer mode cannot turn it, no stars, ...):
            # skipping it too would keep it out once that reason is gone (s: subpixel)
            self.status(f"{fr.name} is not used anyway: {self._why_unused(fr)}", error=True)
            return
        info_index = next(k for k, info in enumerate(self.ws.infos) if info.path == fr.path)
        if run.set_used(i, wanted):
            self.ws.included.add(info_index)
        else:
            self.ws.included.discard(info_index)
        run.config = self.ws.config_for_run()
        self._fill()
        if wanted and not fr.used:  # taken back, but the frame itself cannot be used: say why
            self.status(f"{fr.name} cannot be used: {self._why_unused(fr)}", error=True)

    @staticmethod
    def _why_unused(fr) -> str:
        why = fr.message or ", ".join(f for f in fr.flags if f != "excluded") or "no shift"
        return why + ("; s: subpixel mode" if "needs_subpixel" in fr.flags else "")

    def action_mode(self) -> None:
        """Integer <-> subpixel, then the shifts measured again in the new mode."""
        if self.still_busy():
            return
        cfg = self.ws.config
        mode = "subpixel" if cfg.shift.mode == "integer" else "integer"
        if self.ws.run is not None and self.ws.run.frames:
            self.remeasure("shift", "mode", mode, self.action_measure)
        else:
            cfg.set("shift", "mode", mode)
            self.status(f"{cfg.shift.mode} mode")

    def can_leave(self) -> bool:
        run = self.ws.run
        if run is None or not run.frames:
            self.status("measure the shifts first (r)", error=True)
            return False
        if sum(f.used for f in run.frames) < 1:
            self.status("no frame is usable; go back and choose another star or frames", error=True)
            return False
        return True
