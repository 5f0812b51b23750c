"""Step 4: comparison stars on the preview, their fluxes per frame, and the scale of each frame."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult

from tui_stack.fmt import fmt
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable

from tui_stack.tui import plot
from tui_stack.tui.app import fixed_table
from tui_stack.tui.preview import ImageView
from tui_stack.tui.reference import PreviewScreen
from tui_stack import safetext



class ScalesScreen(PreviewScreen):
    STEP = 3
    BINDINGS = [
        Binding("enter", "add_star", "Add star"),
        Binding("d", "remove_star", "Remove"),
        Binding("a", "auto", "Auto stars"),
        Binding("r", "measure", "Measure"),
        Binding("tab", "focus_next", "Focus", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="main"):
            with Vertical():
                yield ImageView(id="preview", classes="preview")
                yield plot.PlotView("scale per frame (1/transparency)", "frame", lines=True, id="plot", classes="plot")
            with Vertical(classes="side-wide"):
                yield fixed_table("frames", (("file", 13), ("scale", 6), ("MAD", 6), ("n", 2), ("flags", 8)))
                yield fixed_table("stars", (("x", 6), ("y", 6), ("ref flux", 8), ("ratio", 6), ("flags", 8)))
        self._frame = 0

    def on_screen_resume(self) -> None:
        ws = self.ws
        if ws.run is None or not ws.run.frames:
            self.status("measure the shifts first (b: back)", error=True)
            return
        self.preview().set_image(ws.ref_image, keep_view=self.preview().image is not None)
        self.preview().focus()
        if not ws.run.comparison_stars or not ws.run.frames[ws.run.ref_index].star_flux:
            self.action_measure()
        else:
            self._fill()

    def action_auto(self) -> None:
        self.ws.config.scale.stars = "auto"
        self.action_measure()

    def action_measure(self) -> None:
        from tui_stack import pipeline

        run = self.ws.run
        run.config = self.ws.config_for_run()
        if run.config.scale.stars != "auto" and not run.config.scale.stars:
            self.status("no comparison stars: enter adds the star at the cursor, a picks automatically", error=True)
            return

        def measure(progress):
            pipeline.measure_scales(run, progress)

        self.run_task("measuring comparison stars", measure, self._measured)

    def _measured(self, _=None) -> None:
        ws = self.ws
        ws.config.scale.stars = [[round(x, 2), round(y, 2)] for x, y in ws.run.comparison_stars]
        ws.dirty = True
        self._fill()

    def _fill(self) -> None:
        run = self.ws.run
        frames = self.query_one("#frames", DataTable)
        frames.clear()
        for i, fr in enumerate(run.frames):
            frames.add_row(safetext.markup(fr.name), fmt(fr.scale, ".4f"), fmt(fr.scale_mad, ".4f"), str(fr.n_scale_stars),
                           " ".join(fr.flags), key=str(i))
        self._fill_stars()
        markers = {}
        ref = run.frames[run.ref_index]
        for k, (x, y) in enumerate(run.comparison_stars):
            flagged = k < len(ref.star_flags) and ref.star_flags[k]
            markers[(int(round(x)), int(round(y)))] = ("x", "red") if flagged else ("o", "yellow")
        self.preview().set_markers(markers)
        ok = [(i, fr.scale) for i, fr in enumerate(run.frames) if np.isfinite(fr.scale)]
        self.query_one("#plot", plot.PlotView).set_data([i for i, _ in ok], [s for _, s in ok])
        n_flagged = sum(1 for f in ref.star_flags if f)
        self.status(f"{len(run.comparison_stars)} stars ({n_flagged} flagged, left out). enter: add at cursor, "
                    "d: remove, a: auto, n: combine")

    def _fill_stars(self) -> None:
        run = self.ws.run
        ref = run.frames[run.ref_index]
        fr = run.frames[min(self._frame, len(run.frames) - 1)]
        stars = self.query_one("#stars", DataTable)
        stars.clear()
        for k, (x, y) in enumerate(run.comparison_stars):
            rf = ref.star_flux[k] if k < len(ref.star_flux) else float("nan")
            ff = fr.star_flux[k] if k < len(fr.star_flux) else float("nan")
            flags = sorted(set((ref.star_flags[k] if k < len(ref.star_flags) else [])
                               + (fr.star_flags[k] if k < len(fr.star_flags) else [])))
            ratio = rf / ff if ff and np.isfinite(ff) and ff > 0 else float("nan")
            stars.add_row(f"{x:.1f}", f"{y:.1f}", fmt(rf, ".0f"), fmt(ratio, ".4f"), " ".join(flags), key=str(k))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "frames" and event.row_key is not None:
            self._frame = int(event.row_key.value)
            self._fill_stars()

    def action_add_star(self) -> None:
        from tui_stack.pipeline import comparison_star_at

        ws = self.ws
        if ws.ref_image is None:
            return
        x, y = self.preview().cursor
        star = comparison_star_at(ws.ref_image, ws.ref_noise, x, y)
        if star is None:
            self.status(f"no star near ({x}, {y}); move the cursor onto one", error=True)
            return
        stars = [list(s) for s in ws.run.comparison_stars] + [list(star)]
        ws.config.scale.stars = stars
        self.action_measure()

    def action_remove_star(self) -> None:
        ws = self.ws
        table = self.query_one("#stars", DataTable)
        if not ws.run.comparison_stars or table.cursor_row is None:
            return
        stars = [list(s) for k, s in enumerate(ws.run.comparison_stars) if k != table.cursor_row]
        ws.config.scale.stars = stars
        if stars:
            self.action_measure()
        else:
            ws.run.set_comparison_stars([])
            self._fill_stars()

    def can_leave(self) -> bool:
        run = self.ws.run
        if run is None or not run.comparison_stars or not any(np.isfinite(f.scale) for f in run.frames):
            self.status("measure the comparison stars first (r, or a for automatic)", error=True)
            return False
        return True
