"""A zscale image preview in the terminal: half-block cells in grey, or an ASCII ramp without colour.

Made for slow links: the view is computed once per pan/zoom; moving the cursor repaints
just the two cells it leaves and enters, not the image. North (higher y) is up, as in ds9.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

ASCII_RAMP = " .:-=+*#%@"
# 256-colour greys: far fewer bytes per cell than 24-bit colour, plenty for a preview.
GREYS = [16] + list(range(232, 256)) + [231]
_FG = [Style(color=f"color({g})") for g in GREYS]
_CELL = {}


def _cell_style(top: int, bottom: int) -> Style:
    key = (top, bottom)
    if key not in _CELL:
        _CELL[key] = Style(color=f"color({GREYS[top]})", bgcolor=f"color({GREYS[bottom]})")
    return _CELL[key]


def no_colour() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def zscale_limits(image: np.ndarray) -> tuple[float, float]:
    from astropy.visualization import ZScaleInterval

    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    step = max(1, finite.size // 250_000)
    lo, hi = ZScaleInterval().get_limits(finite[::step])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


class ImageView(Widget, can_focus=True):
    """Image with a movable cursor and markers. Keys are bound by the screen that holds it."""

    DEFAULT_CSS = "ImageView { min-height: 4; }"

    class CursorMoved(Message):
        def __init__(self, view: "ImageView", x: int, y: int):
            super().__init__()
            self.view, self.x, self.y = view, x, y

    cursor_visible = reactive(True)

    def __init__(self, *, magnify: bool = False, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.image: np.ndarray | None = None
        self.limits = (0.0, 1.0)
        self.scale = 1.0  # image px per half-cell (per cell in ASCII mode); <1 magnifies
        self.cx = self.cy = 0.0  # image coordinates at the view's centre
        self.cursor = (0, 0)  # image x, y
        self.markers: dict[tuple[int, int], tuple[str, str]] = {}  # (x, y) -> (char, colour)
        self.magnify = magnify
        self._levels: np.ndarray | None = None  # (2*rows, cols) level indices for the view
        self._user_view = False  # zoomed or panned by the user: keep it on resize
        self.ascii = no_colour()

    # ------------------------------------------------------------ data

    def set_image(self, image: np.ndarray | None, limits: tuple[float, float] | None = None, keep_view: bool = False):
        self.image = image
        if image is None:
            self._levels = None
            self.refresh()
            return
        self.limits = limits or zscale_limits(image)
        h, w = image.shape
        if not keep_view:
            self.cursor = (w // 2, h // 2)
            self._user_view = False
            self.fit()
        self._invalidate()

    def fit(self) -> None:
        if self.image is None:
            return
        h, w = self.image.shape
        cols, rows = max(1, self.size.width), max(1, self.size.height * self._sub())
        s = max(w / cols, h / rows)
        self.scale = s if not self.magnify or s >= 1 else 1 / max(1, int(1 / s))
        self.cx, self.cy = (w - 1) / 2, (h - 1) / 2
        self._invalidate()

    def _sub(self) -> int:
        return 1 if self.ascii else 2

    def zoom(self, factor: float) -> None:
        if self.image is None:
            return
        self.scale = float(np.clip(self.scale / factor, 1 / 16, max(self.image.shape)))
        self.cx, self.cy = self.cursor
        self._user_view = True
        self._invalidate()

    def pan(self, dx_cells: int, dy_cells: int) -> None:
        self.cx += dx_cells * self.scale
        self.cy -= dy_cells * self.scale * self._sub()
        self._user_view = True
        self._invalidate()

    def set_markers(self, markers: dict) -> None:
        self.markers = markers
        self.refresh()

    def move_cursor(self, dx: int, dy: int) -> None:
        """Move by image pixels (at least one cell's worth); y up."""
        if self.image is None:
            return
        h, w = self.image.shape
        step = max(1, int(round(self.scale)))
        x = int(np.clip(self.cursor[0] + dx * step, 0, w - 1))
        y = int(np.clip(self.cursor[1] + dy * step, 0, h - 1))
        self.set_cursor(x, y)

    def set_cursor(self, x: int, y: int) -> None:
        old = self._cell_of(*self.cursor)
        self.cursor = (int(x), int(y))
        new = self._cell_of(x, y)
        if new is None:  # the cursor left the view: recentre on it
            self.cx, self.cy = x, y
            self._invalidate()
        else:
            for cell in (old, new):
                if cell is not None:
                    self.refresh(Region(cell[0], cell[1], 1, 1))
        self.post_message(self.CursorMoved(self, *self.cursor))

    def value_at(self, x: int, y: int) -> float:
        if self.image is None:
            return float("nan")
        return float(self.image[y, x])

    # ------------------------------------------------------------ geometry

    def _origin(self):
        cols, rows = self.size.width, self.size.height * self._sub()
        return self.cx - cols / 2 * self.scale, self.cy + rows / 2 * self.scale

    def _cell_of(self, x: float, y: float):
        """Widget cell (col, row) showing image pixel (x, y), or None if off view."""
        if self.size.width == 0:
            return None
        x0, ytop = self._origin()
        col = int(np.floor((x - x0) / self.scale + 1e-9))
        sub = int(np.floor((ytop - y) / self.scale + 1e-9))
        row = sub // self._sub()
        if 0 <= col < self.size.width and 0 <= row < self.size.height:
            return col, row
        return None

    def _invalidate(self) -> None:
        self._levels = None
        self.refresh()

    def on_resize(self) -> None:
        if self.image is not None and not self._user_view:
            self.fit()
        self._invalidate()

    def _compute_levels(self) -> None:
        cols, rows = self.size.width, self.size.height * self._sub()
        img = self.image
        h, w = img.shape
        x0, ytop = self._origin()
        s = self.scale
        lo, hi = self.limits
        n = len(GREYS) if not self.ascii else len(ASCII_RAMP)
        vals = np.full((rows, cols), np.nan, dtype=np.float32)
        if s > 1:
            # Block means over whole image pixels: the sky goes flat grey and stars stand out;
            # block maxima would turn every block's noise peak into a star.
            b = int(np.ceil(s))
            xs = np.floor(x0 + np.arange(cols) * s).astype(int)
            ys = np.floor(ytop - (np.arange(rows) + 1) * s).astype(int)
            pad = b + 1
            padded = np.full((h + 2 * pad, w + 2 * pad), np.nan, dtype=np.float32)
            padded[pad:-pad, pad:-pad] = img
            okx = (xs > -b) & (xs < w)
            oky = (ys > -b) & (ys < h)
            xi = np.clip(xs[okx], -pad, w) + pad
            yi = np.clip(ys[oky], -pad, h) + pad
            blocks = padded[yi[:, None, None, None] + np.arange(b)[None, None, :, None],
                            xi[None, :, None, None] + np.arange(b)[None, None, None, :]]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(blocks, axis=(2, 3))
            vals[np.ix_(np.nonzero(oky)[0], np.nonzero(okx)[0])] = means
        else:
            xs = np.floor(x0 + (np.arange(cols) + 0.5) * s).astype(int)
            ys = np.floor(ytop - (np.arange(rows) + 0.5) * s).astype(int)
            okx, oky = (xs >= 0) & (xs < w), (ys >= 0) & (ys < h)
            vals[np.ix_(np.nonzero(oky)[0], np.nonzero(okx)[0])] = img[np.ix_(ys[oky], xs[okx])]
        with np.errstate(invalid="ignore"):
            lev = np.clip((vals - lo) / (hi - lo), 0, 1) * (n - 1)
        out = np.where(np.isfinite(lev), lev, -1).astype(np.int16)
        self._levels = out

    # ------------------------------------------------------------ rendering

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return container.height

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if self.image is None:
            return Strip([Segment(" " * width)])
        if self._levels is None or self._levels.shape != (self.size.height * self._sub(), width):
            self._compute_levels()
        cursor_cell = self._cell_of(*self.cursor) if self.cursor_visible else None
        marks = {}
        for (mx, my), (ch, colour) in self.markers.items():
            cell = self._cell_of(mx, my)
            if cell is not None and cell[1] == y:
                marks[cell[0]] = (ch, colour)
        segs = []
        if self.ascii:
            row = self._levels[y]
            chars = [ASCII_RAMP[v] if v >= 0 else " " for v in row]
            for c, (ch, _) in marks.items():
                chars[c] = ch
            if cursor_cell is not None and cursor_cell[1] == y:
                chars[cursor_cell[0]] = "+"
            return Strip([Segment("".join(chars))])
        top, bot = self._levels[2 * y], self._levels[2 * y + 1]
        run_style, run_text = None, []
        for c in range(width):
            if cursor_cell is not None and cursor_cell == (c, y):
                style, ch = Style(color="red", bgcolor="black", bold=True), "+"
            elif c in marks:
                ch, colour = marks[c]
                style = Style(color=colour, bgcolor=f"color({GREYS[max(0, bot[c])]})", bold=True)
            else:
                t, b = max(0, int(top[c])), max(0, int(bot[c]))
                style, ch = (_cell_style(t, b), "▀") if t != b else (Style(bgcolor=f"color({GREYS[t]})"), " ")
            if style is run_style or style == run_style:
                run_text.append(ch)
            else:
                if run_text:
                    segs.append(Segment("".join(run_text), run_style))
                run_style, run_text = style, [ch]
        if run_text:
            segs.append(Segment("".join(run_text), run_style))
        return Strip(segs, width)
