"""Step 2: reference frame and reference star, on a zscale preview with a cursor."""

from __future__ import annotations

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tui_stack.tui.app import WizardScreen
from tui_stack.tui.preview import ImageView
from tui_stack import safetext

CUTOUT = 19  # px: one pixel per half-cell in a 12-row box


def cutout(image: np.ndarray, x: float, y: float, size: int = CUTOUT) -> np.ndarray:
    """A size x size stamp centred on (x, y); NaN outside the image."""
    h, w = image.shape
    half = size // 2
    out = np.full((size, size), np.nan, dtype=np.float32)
    xc, yc = int(round(x)), int(round(y))
    x0, x1 = max(0, xc - half), min(w, xc + half + 1)
    y0, y1 = max(0, yc - half), min(h, yc + half + 1)
    if x1 > x0 and y1 > y0:
        out[y0 - (yc - half) : y1 - (yc - half), x0 - (xc - half) : x1 - (xc - half)] = image[y0:y1, x0:x1]
    return out


def stamp_limits(stamp: np.ndarray) -> tuple[float, float] | None:
    """Linear from the stamp's sky to its peak: the star's profile, not a white disc."""
    if not np.isfinite(stamp).any():
        return None
    lo, hi = float(np.nanpercentile(stamp, 10)), float(np.nanmax(stamp))
    return (lo, hi) if hi > lo else None


class PreviewScreen(WizardScreen):
    """Shared by the screens with a preview: cursor, pan and zoom keys."""

    BINDINGS = [
        Binding("up", "move(0, 1)", "Move", show=False),
        Binding("down", "move(0, -1)", show=False),
        Binding("left", "move(-1, 0)", show=False),
        Binding("right", "move(1, 0)", show=False),
        Binding("shift+up,K", "pan(0, -5)", "Pan", show=False),
        Binding("shift+down,J", "pan(0, 5)", show=False),
        Binding("shift+left,H", "pan(-10, 0)", show=False),
        Binding("shift+right,L", "pan(10, 0)", show=False),
        Binding("plus,equals_sign", "zoom(2)", "Zoom +"),
        Binding("minus", "zoom(0.5)", "Zoom -"),
        Binding("0", "fit", "Fit", show=False),
        Binding("escape", "cancel_task", "Cancel", show=False),
    ]

    def preview(self) -> ImageView:
        return self.query_one("#preview", ImageView)

    def action_move(self, dx: int, dy: int) -> None:
        self.preview().move_cursor(dx, dy)

    def action_pan(self, dx: int, dy: int) -> None:
        self.preview().pan(dx, dy)

    def action_zoom(self, factor: float) -> None:
        self.preview().zoom(factor)

    def action_fit(self) -> None:
        self.preview().fit()

    def ensure_run(self) -> bool:
        """The pipeline state for the frames chosen on step 1 (rebuilt when they change)."""
        from tui_stack import pipeline
        from tui_stack.errors import InputError

        ws = self.ws
        if ws.run is not None:
            return True
        cfg = ws.config_for_run()
        try:
            files = pipeline.select(cfg)
        except InputError as exc:
            self.status(str(exc), error=True)
            return False
        ws.run = pipeline.RunState(config=cfg, files=files)
        ws.ref_image = None
        ws.star_xy = None
        return True


class ReferenceScreen(PreviewScreen):
    STEP = 1
    BINDINGS = [
        Binding("enter", "pick", "Pick star"),
        Binding("a", "auto_star", "Auto star"),
        Binding("left_square_bracket", "frame(-1)", "Prev frame"),
        Binding("right_square_bracket", "frame(1)", "Next frame"),
        Binding("f", "suggested", "Best frame"),
    ]

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="main"):
            yield ImageView(id="preview", classes="preview")
            with Vertical(classes="side"):
                yield Static("", id="frameinfo", classes="info")
                yield ImageView(id="cutout", classes="cutout", magnify=True)
                yield Static("", id="starinfo", classes="info")

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
        if index != ws.run.ref_index:
            ws.star_xy = None
        ws.run.set_reference_frame(index)  # another frame clears the shifts and scales
        ws.config.reference.frame = ws.run.files[index].name
        ws.dirty = True

        from tui_stack.pipeline import sky_subtracted

        self.run_task(f"loading {ws.run.files[index].name}", lambda p: sky_subtracted(ws.run.files[index], ws.config),
                      self._loaded)

    def _loaded(self, result) -> None:
        img, noise = result
        ws = self.ws
        ws.ref_image, ws.ref_noise = img, noise
        self.preview().set_image(img)
        self._show_frame_info()
        if isinstance(ws.config.reference.star, tuple):
            self._locate(tuple(ws.config.reference.star))
        else:
            self.status("move the cursor onto a bright isolated star and press enter, or a for automatic")

    def _show_frame_info(self) -> None:
        ws = self.ws
        run = ws.run
        i = run.ref_index
        q = run.qualities[i] if run.qualities else None
        lines = [f"[b]reference {i + 1}/{len(run.files)}[/]", safetext.markup(run.files[i].name)]
        if q is not None:
            lines.append(f"FWHM {q.fwhm:.2f}  stars {q.n_stars}")
            lines.append(f"signal {q.signal:.0f}  sky {q.sky:.0f}")
            if q.flags:
                lines.append(f"[yellow]{' '.join(q.flags)}[/]")
        if ws.suggested_ref is not None:
            mark = "this one" if ws.suggested_ref == i else safetext.markup(run.files[ws.suggested_ref].name)
            lines.append(f"best (sharp, clear): {mark}")
        self.query_one("#frameinfo", Static).update("\n".join(lines))

    def on_image_view_cursor_moved(self, event: ImageView.CursorMoved) -> None:
        if event.view.id != "preview" or self.ws.ref_image is None:
            return
        v = event.view.value_at(event.x, event.y)
        self.status(f"x {event.x}  y {event.y}  value {v:.0f} above sky   enter: pick star here")

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
        ws.config.reference.star = (round(star.x, 2), round(star.y, 2))
        ws.dirty = True
        view = self.preview()
        view.set_markers({(int(round(star.x)), int(round(star.y))): ("x", "green")})
        view.set_cursor(int(round(star.x)), int(round(star.y)))
        cut = self.query_one("#cutout", ImageView)
        stamp = cutout(img, star.x, star.y)
        cut.set_image(stamp, stamp_limits(stamp))
        info = [
            f"[b]star[/] x {star.x:.2f}  y {star.y:.2f}",
            f"peak {star.peak + sky:.0f}  FWHM {star.fwhm:.1f}",
            f"centroid {ws.config.reference.centroid}",
        ]
        self.query_one("#starinfo", Static).update("\n".join(info))
        self.status("star chosen; n: measure the shifts")

    def can_leave(self) -> bool:
        if self.ws.star_xy is None:
            self.status("pick a reference star first: enter at the cursor, or a for automatic", error=True)
            return False
        return True
