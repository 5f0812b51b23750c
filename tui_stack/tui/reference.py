"""Step 2: reference frame and reference star, on a zscale preview with a cursor."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tui_stack import safetext
from tui_stack.tui import stars as star_list
from tui_stack.tui.common import PreviewScreen, cutout, stamp_limits
from tui_stack.tui.preview import ImageView

class ReferenceScreen(PreviewScreen):
    STEP = 1
    KEYS = "[b].[/]/[b],[/] next/prev star  [b]g[/] good star  [b]enter[/] pick  [b]a[/] auto  [b]+[/]/[b]-[/] zoom"
    HELP = ("The reference frame and the reference star every frame is located against. Jump between the "
            "detected stars (brightest first) with . and , or to the nearest good one (bright, unsaturated, "
            "isolated) with g; the panel shows its peak, FWHM, isolation and saturation. enter picks the star "
            "at the cursor (it is centroided, marked X and kept); [ and ] change the frame.")
    BINDINGS = [
        Binding("enter", "pick", "Pick the star at the cursor as the reference star"),
        Binding("full_stop", "jump(1)", "Cursor to the next detected star (brightest first)", key_display="."),
        Binding("comma", "jump(-1)", "Cursor to the previous detected star", key_display=","),
        Binding("g", "good_star", "Cursor to the nearest good star: bright, unsaturated, isolated"),
        Binding("a", "auto_star", "Pick a star automatically"),
        Binding("left_square_bracket", "frame(-1)", "Previous frame as reference", key_display="["),
        Binding("right_square_bracket", "frame(1)", "Next frame as reference", key_display="]"),
        Binding("f", "suggested", "The suggested frame (sharpest and clearest) as reference"),
    ]

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="main"):
            yield ImageView(id="preview", classes="preview")
            with Vertical(classes="side"):
                yield Static("", id="frameinfo", classes="info")
                yield ImageView(id="cutout", classes="cutout", magnify=True)
                yield Static("", id="starinfo", classes="info")
                yield Static("", id="chosen", classes="info")
        self._stars: list = []  # star_list.Candidate of the reference frame, brightest first
        self._star_k: int | None = None

    def on_screen_resume(self) -> None:
        if not self.ensure_run():
            return
        self.preview().focus()
        run = self.ws.run
        if not run.qualities:
            self.run_task("assessing frames", lambda p: self._assess(p), self._assessed)
        elif self.ws.ref_image is None:
            self.load_reference(run.ref_index)
        elif self.preview().image is None:  # resumed past this step: show what was chosen
            self._loaded((self.ws.ref_image, self.ws.ref_noise))

    def _assess(self, progress):
        from tui_stack import pipeline

        return pipeline.suggested_reference(self.ws.run, progress)

    def _assessed(self, best: int) -> None:
        ws = self.ws
        ws.suggested_ref = best
        cfg = ws.config
        start = best
        if isinstance(cfg.reference.frame, int) and cfg.reference.frame < len(ws.run.files):
            start = cfg.reference.frame
        elif isinstance(cfg.reference.frame, str) and cfg.reference.frame in [f.name for f in ws.run.files]:
            start = [f.name for f in ws.run.files].index(cfg.reference.frame)
        self.load_reference(start)

    def load_reference(self, index: int) -> None:
        ws = self.ws
        self.save_pending()  # before another frame clears the tables
        if index != ws.run.ref_index:
            ws.star_xy = None
        ws.run.set_reference_frame(index)  # another frame clears the shifts and scales
        ws.config.reference.frame = ws.run.files[index].name

        from tui_stack.pipeline import sky_subtracted
        from tui_stack.pipeline.reference import reference_box

        cfg, run = ws.config, ws.run

        def load(progress):
            img, noise = sky_subtracted(run.files[index], cfg)
            sky = run.qualities[index].sky if run.qualities else 0.0
            box = reference_box(cfg, img.shape)
            return img, noise, star_list.candidates(img, noise, sky, cfg.scale.saturation, box)

        self.run_task(f"loading {ws.run.files[index].name}", load, self._loaded)

    def _loaded(self, result) -> None:
        img, noise, cands = result if len(result) == 3 else (*result, None)
        ws = self.ws
        ws.ref_image, ws.ref_noise = img, noise
        if cands is None:
            from tui_stack.pipeline.reference import reference_box

            sky = ws.run.qualities[ws.run.ref_index].sky if ws.run.qualities else 0.0
            box = reference_box(ws.config, img.shape)
            cands = star_list.candidates(img, noise, sky, ws.config.scale.saturation, box)
        self._stars, self._star_k = cands, None
        with self.app.batch_update():
            self.preview().set_markers({})
            self.preview().set_image(img)
            self.query_one("#cutout", ImageView).set_image(None)
            self._show_frame_info()
            if isinstance(ws.config.reference.star, tuple):
                self._locate(tuple(ws.config.reference.star))
            else:
                self._show_chosen()
                self.status(f"{len(cands)} stars found: . and , go through them, g to a good one; enter picks")

    def _show_frame_info(self) -> None:
        ws = self.ws
        run = ws.run
        i = run.ref_index
        q = run.qualities[i] if run.qualities else None
        lines = [f"[b]reference #{i}[/] {safetext.markup(run.files[i].name)}"]
        if q is not None:
            lines.append(f"FWHM {q.fwhm:.2f} stars {q.n_stars} sky {q.sky:.0f}")
            if q.flags:
                lines.append(f"[yellow]{' '.join(q.flags)}[/]")
        if ws.suggested_ref is not None:
            mark = "this one" if ws.suggested_ref == i else f"{safetext.markup(run.files[ws.suggested_ref].name)} (f)"
            lines.append(f"best: {mark}")
        self.query_one("#frameinfo", Static).update("\n".join(lines))

    def _show_chosen(self) -> None:
        xy = self.ws.star_xy
        text = (f"[green]chosen ✓[/] x {xy[0]:.2f} y {xy[1]:.2f}" if xy is not None
                else "[yellow]no star chosen yet[/]")
        self.query_one("#chosen", Static).update(text)

    def on_image_view_cursor_moved(self, event: ImageView.CursorMoved) -> None:
        if event.view.id != "preview" or self.ws.ref_image is None:
            return
        k = star_list.nearest(self._stars, event.x, event.y, within=3)
        if k is not None and k != self._star_k:
            self._show_star(k)
        elif k is None:
            v = event.view.value_at(event.x, event.y)
            self.status(f"x {event.x} y {event.y}: {v:.0f} above sky, no detected star here")
        self._star_k = k

    def _show_star(self, k: int) -> None:
        c = self._stars[k]
        self.query_one("#starinfo", Static).update("\n".join(star_list.describe(c, k, len(self._stars))))
        xy = self.ws.star_xy
        if xy is not None and np.hypot(c.x - xy[0], c.y - xy[1]) < 1.5:
            self.status(f"star {k + 1} is the chosen reference star ✓; n measures the shifts")
        else:
            self.status(f"star {k + 1}: enter picks it" + (" (saturated: choose another)" if c.saturated else ""))

    def action_jump(self, step: int) -> None:
        if not self._stars:
            return
        k = 0 if self._star_k is None and step > 0 else ((self._star_k or 0) + step) % len(self._stars)
        self._goto_star(k)

    def action_good_star(self) -> None:
        if not self._stars:
            return
        k = star_list.nearest(self._stars, *self.preview().cursor, good_only=True)
        if k is None:
            self.status("no good star detected (bright, unsaturated, isolated); pick one by hand", error=True)
            return
        self._goto_star(k)

    def _goto_star(self, k: int) -> None:
        c = self._stars[k]
        self._star_k = k
        self._show_star(k)
        self.preview().set_cursor(int(round(c.x)), int(round(c.y)))

    def action_frame(self, step: int) -> None:
        run = self.ws.run
        if run is None or self.busy or not run.files:
            return
        self.load_reference((run.ref_index + step) % len(run.files))

    def action_suggested(self) -> None:
        if self.ws.suggested_ref is not None and not self.busy:
            self.load_reference(self.ws.suggested_ref)

    def action_pick(self) -> None:
        if self.ws.ref_image is None:
            return
        self._locate(tuple(self.preview().cursor))

    def action_auto_star(self) -> None:
        if self.ws.ref_image is None:
            return
        self._locate(None)

    def _locate(self, at: tuple[float, float] | None) -> None:
        """The star near `at` (None: picked automatically), as `run` would take it."""
        from tui_stack.errors import InputError
        from tui_stack.pipeline import reference_star

        ws = self.ws
        img = ws.ref_image
        mask = ~np.isfinite(img)
        sky = ws.run.qualities[ws.run.ref_index].sky if ws.run.qualities else 0.0
        cfg = ws.config.copy()
        cfg.reference.star = "auto"
        try:
            star = reference_star(np.nan_to_num(img), mask, ws.ref_noise, sky, cfg, ws.run.files[ws.run.ref_index].name,
                                  at=at)
        except InputError as exc:
            self.status(str(exc).split(": ", 1)[-1], error=True)
            return
        ws.run.set_reference_star(star)  # another star: the shifts must be measured again
        ws.star_xy = (star.x, star.y)
        ws.config.reference.star = (float(star.x), float(star.y))  # full precision: `run` on the saved config centroids from here
        view = self.preview()
        with self.app.batch_update():
            view.set_markers({(int(round(star.x)), int(round(star.y))): ("X", "green")})
            view.set_cursor(int(round(star.x)), int(round(star.y)))
            cut = self.query_one("#cutout", ImageView)
            stamp = cutout(img, star.x, star.y)
            cut.set_image(stamp, stamp_limits(stamp))
            k = star_list.nearest(self._stars, star.x, star.y, within=3)
            info = [f"[b]picked[/] centroid ({ws.config.reference.centroid})", f"peak {star.peak + sky:.0f}  FWHM {star.fwhm:.1f}"]
            if k is not None:
                c = self._stars[k]
                info.append(f"isolated {c.isolation:.0f} px" if np.isfinite(c.isolation) else "no bright neighbour")
            self.query_one("#starinfo", Static).update("\n".join(info))
            self._show_chosen()
            self.status(f"star chosen ✓ at x {star.x:.1f} y {star.y:.1f}; n measures the shifts")

    def can_leave(self) -> bool:
        if self.ws.star_xy is None:
            self.status("pick a reference star first: enter at the cursor, or a for automatic", error=True)
            return False
        return True
