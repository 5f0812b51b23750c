"""Step 4: comparison stars on the preview, their fluxes per frame, and the scale of each frame."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from tui_stack import safetext
from tui_stack.fmt import fmt
from tui_stack.tui import plot
from tui_stack.tui.common import PreviewScreen, fixed_table, flag_codes, flag_legend, row_index, widen_names
from tui_stack.tui.preview import ImageView


NAME_WIDTH = 14  # the frames table's file column (80 columns)
FRAME_COLUMNS = (("file", NAME_WIDTH), ("scale", 6), ("MAD", 6), ("n", 2), ("fl", 4))
SIDE_WIDTH = 46  # the tables' panel at 80 columns (.side-wide)


class ScalesScreen(PreviewScreen):
    STEP = 3
    NAME_WIDTH = NAME_WIDTH
    KEYS = "[b]tab[/] pane  [b]enter[/] add  [b]d[/] del  [b]a[/] auto  [b]m[/] method  [b]<>[/] radius  [b]n[/] next"
    HELP = ("The scale of each frame from comparison stars (o on the preview; x: flagged, left out). "
            "The frames table gives each frame's scale, its spread (MAD) and the stars used; the stars "
            "table gives each star's reference flux and its ratio in the highlighted frame. tab moves "
            "between the preview and the two tables. m switches the aperture method (fixed: one radius "
            "in every frame, the lab's; growth: each frame's own PSF, for changing seeing), < and > make "
            "the aperture radius 1 px smaller or larger and R gives it back to auto; each re-measures.")
    BINDINGS = [
        Binding("enter", "add_star", "Add the star at the preview's cursor"),
        Binding("d", "remove_star", "Remove the highlighted star of the stars table"),
        Binding("a", "auto", "Pick the comparison stars automatically"),
        Binding("r", "measure", "Measure the comparison stars again"),
        Binding("m", "method", "Aperture method: fixed (one radius, the lab's) or growth (each frame's PSF)"),
        Binding("less_than_sign", "radius(-1)", "Aperture radius 1 px smaller", key_display="<"),
        Binding("greater_than_sign", "radius(1)", "Aperture radius 1 px larger", key_display=">"),
        Binding("R", "radius(0)", "Aperture radius auto again (fixed: 20 px; growth: 2 FWHM per frame)"),
    ]

    def legend(self) -> str:
        return "flags (code name):\n" + flag_legend()

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="main"):
            with Vertical():
                yield ImageView(id="preview", classes="preview")
                yield plot.PlotView("scale per frame (1/transparency)", "frame", lines=True, id="plot", classes="plot")
            with Vertical(classes="side-wide") as side:
                side.styles.width = SIDE_WIDTH + self.name_width - NAME_WIDTH
                yield fixed_table("frames", FRAME_COLUMNS, self.name_width)
                yield fixed_table("stars", (("x", 6), ("y", 6), ("ref flux", 8), ("ratio", 6), ("fl", 4)))
                yield Static("", id="detail", classes="detail", markup=False)
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

    def names_widened(self) -> None:
        self.query_one(".side-wide").styles.width = SIDE_WIDTH + self.name_width - NAME_WIDTH
        if widen_names(self.query_one("#frames", DataTable), FRAME_COLUMNS, self.name_width) and self.ws.run and self.ws.run.frames:
            self._fill()

    def action_auto(self) -> None:
        if self.still_busy():
            return
        self.save_pending()  # before the stars change: the session keeps those its tables measured
        self.ws.config.scale.stars = "auto"
        self.action_measure()

    def action_method(self) -> None:
        from tui_stack.config import SCALE_METHODS

        cfg = self.ws.config
        self._set_scale("method", SCALE_METHODS[(SCALE_METHODS.index(cfg.scale.method) + 1) % len(SCALE_METHODS)])

    def action_radius(self, step: int) -> None:
        if step == 0:
            self._set_scale("radius", "auto")
            return
        r = self.ws.config.scale.aperture()
        if r is None:  # growth's auto radius is each frame's own: start from the reference's
            run = self.ws.run
            r = run.frames[run.ref_index].aperture_radius if run and run.frames else float("nan")
            r = round(r) if np.isfinite(r) else 8.0
        self._set_scale("radius", float(round(r) + step))

    def _set_scale(self, key: str, value) -> None:
        """A [scale] key through the config's own checks, then measured again."""
        if self.still_busy():
            return
        if self.ws.run is None or not self.ws.run.frames:
            return
        self.remeasure("scale", key, value, self.action_measure)

    def aperture_text(self) -> str:
        cfg = self.ws.config.scale
        r = cfg.aperture()
        return f"{cfg.method}, r {'2 FWHM' if r is None else f'{r:g} px'}{' (auto)' if cfg.radius == 'auto' else ''}"

    def action_measure(self, undo=None) -> None:
        from tui_stack import pipeline

        if self.still_busy():
            return
        run = self.ws.run
        run.config = self.ws.config_for_run()
        if run.config.scale.stars != "auto" and not run.config.scale.stars:
            self.status("no comparison stars: enter adds the star at the cursor, a picks automatically", error=True)
            return

        def measure(progress):
            pipeline.measure_scales(run, progress)

        self.run_task("measuring comparison stars", measure, self._measured, undo=undo)

    def undone(self) -> None:
        if self.ws.run is not None and self.ws.run.frames:
            self._fill()

    def _measured(self, _=None) -> None:
        ws = self.ws
        # full precision: a 0.002 px move changes a flux by ~0.1% (exact apertures, sampled annulus)
        ws.config.scale.stars = [[float(x), float(y)] for x, y in ws.run.comparison_stars]
        ws.dirty = True
        self._fill()

    def _fill(self) -> None:
        run = self.ws.run
        frames = self.query_one("#frames", DataTable)
        frames.clear()
        for i, fr in enumerate(run.frames):
            frames.add_row(safetext.markup_name(fr.name, self.name_width), fmt(fr.scale, ".4f"), fmt(fr.scale_mad, ".4f"), str(fr.n_scale_stars),
                           flag_codes(fr.flags), key=str(i))
        self._fill_stars()
        markers = {}
        ref = run.frames[run.ref_index]
        for k, (x, y) in enumerate(run.comparison_stars):
            flagged = k < len(ref.star_flags) and ref.star_flags[k]
            markers[(int(round(x)), int(round(y)))] = ("x", "red") if flagged else ("o", "yellow")
        self.preview().set_markers(markers)
        ok = [(i, fr.scale) for i, fr in enumerate(run.frames) if np.isfinite(fr.scale)]
        self.query_one("#plot", plot.PlotView).set_data([i for i, _ in ok], [s for _, s in ok])
        self.restore_ui()
        n_flagged = sum(1 for f in ref.star_flags if f)
        n = len(run.comparison_stars)
        self.status(f"{n} star{'s' * (n != 1)}, {n_flagged} flagged in the reference; "
                    f"aperture {self.aperture_text()} (m, < >)")

    def _fill_stars(self) -> None:
        run = self.ws.run
        ref = run.frames[run.ref_index]
        fr = run.frames[min(self._frame, len(run.frames) - 1)]
        stars = self.query_one("#stars", DataTable)
        rows = []
        for k, (x, y) in enumerate(run.comparison_stars):
            rf = ref.star_flux[k] if k < len(ref.star_flux) else float("nan")
            ff = fr.star_flux[k] if k < len(fr.star_flux) else float("nan")
            flags = sorted(set((ref.star_flags[k] if k < len(ref.star_flags) else [])
                               + (fr.star_flags[k] if k < len(fr.star_flags) else [])))
            ratio = rf / ff if ff and np.isfinite(ff) and ff > 0 else float("nan")
            rows.append((f"{x:.1f}", f"{y:.1f}", fmt(rf, ".0f"), fmt(ratio, ".4f"), flag_codes(flags)))
        if stars.row_count == len(rows) and all(stars.get_row_at(k)[:3] == list(r[:3]) for k, r in enumerate(rows)):
            # same stars, another frame: only the cells that differ are repainted (a cursor key
            # in the frames table stays under 1 KB over SSH)
            cols = [c.key for c in stars.ordered_columns]
            for k, r in enumerate(rows):
                old = stars.get_row_at(k)
                for c in (3, 4):
                    if old[c] != r[c]:
                        stars.update_cell(str(k), cols[c], r[c])
            return
        stars.clear()
        for k, r in enumerate(rows):
            stars.add_row(*r, key=str(k))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        run = self.ws.run
        if event.row_key is None or run is None or not run.frames:
            return
        k = int(event.row_key.value)
        if event.data_table.id == "frames":
            fr = run.frames[k]
            if self._frame != k:
                self._frame = k
                self._fill_stars()
            # [scale] method "growth": the spread of the star ratios, the frame's PSF and the
            # aperture correction it took (issue 22). The spread and the flags come before the PSF:
            # with a real frame's 18-character name the panel's two lines at 80 columns end within
            # the PSF numbers, and `stars_disagree` is the reason to distrust the scale (trial 8 #13)
            from tui_stack.core.photometry import STARS_DISAGREE
            from tui_stack.pipeline.scale import FEW_SCALE_STARS

            own = (STARS_DISAGREE, FEW_SCALE_STARS, "no_comparison_star", "no_psf")  # this step's flags first
            growth = np.isfinite(fr.psf_fwhm)
            self._detail(f"{fr.name}: scale {fmt(fr.scale, '.4f')} ({fr.n_scale_stars} stars"
                         + (f", spread {fmt(fr.scale_spread, '.1f')})" if growth else ")")
                         + (f"; flags: {', '.join(sorted(fr.flags, key=lambda f: f not in own))}"
                            if fr.flags else "")
                         + (f"; FWHM {fr.psf_fwhm:.2f} px β {fr.psf_beta:.2f}, r {fr.aperture_radius:.1f} px "
                            f"×{fr.aperture_correction:.4f}" if growth else ""))
        elif k < len(run.comparison_stars):
            fr = run.frames[min(self._frame, len(run.frames) - 1)]
            ref = run.frames[run.ref_index]
            flags = sorted(set((ref.star_flags[k] if k < len(ref.star_flags) else [])
                               + (fr.star_flags[k] if k < len(fr.star_flags) else [])))
            x, y = run.comparison_stars[k]
            self._detail(f"star {k + 1} at ({x:.1f}, {y:.1f}) in {fr.name}: "
                         + (f"flags: {', '.join(flags)}" if flags else "no flags"))

    def _detail(self, text: str) -> None:
        self.query_one("#detail", Static).update(safetext.terminal(text))

    def action_add_star(self) -> None:
        from tui_stack.pipeline import comparison_star_at

        ws = self.ws
        if ws.ref_image is None or self.still_busy():
            return
        x, y = self.preview().cursor
        star = comparison_star_at(ws.ref_image, ws.ref_noise, x, y)
        if star is None:
            self.status(f"no star near ({x}, {y}); move the cursor onto one", error=True)
            return
        self.save_pending()
        stars = [list(s) for s in ws.run.comparison_stars] + [list(star)]
        ws.config.scale.stars = stars
        self.action_measure()

    def action_remove_star(self) -> None:
        ws = self.ws
        gone = row_index(self.query_one("#stars", DataTable))
        if not ws.run.comparison_stars or gone is None or self.still_busy():
            return
        self.save_pending()
        stars = [list(s) for k, s in enumerate(ws.run.comparison_stars) if k != gone]
        ws.config.scale.stars = stars
        if stars:
            self.action_measure()
        else:  # the scales of the last star go too
            ws.run.set_comparison_stars([])
            self._fill()
            self.status("no comparison stars left: enter adds the star at the cursor, a picks automatically",
                        error=True)

    def can_leave(self) -> bool:
        run = self.ws.run
        if run is None or not run.comparison_stars or not any(np.isfinite(f.scale) for f in run.frames):
            self.status("measure the comparison stars first (r, or a for automatic)", error=True)
            return False
        return True
