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
# 256-colour greys: far fewer bytes per cell than 24-bit colour. 13 levels, every other grey of
# the ramp: neighbouring cells share a colour more often (a colour change costs ~12 bytes).
GREYS = [16, 232, 234, 236, 238, 240, 242, 244, 246, 248, 250, 252, 255]
# 16 colours have 4 greys: shade characters between them give 11 steps (one pixel per cell)
SHADES = [(" ", "black", "black"), ("░", "bright_black", "black"), ("▒", "bright_black", "black"),
          ("▓", "bright_black", "black"), (" ", "black", "bright_black"), ("░", "white", "bright_black"),
          ("▒", "white", "bright_black"), (" ", "black", "white"), ("░", "bright_white", "white"),
          ("▒", "bright_white", "white"), (" ", "black", "bright_white")]
_SHADE_STYLE = [Style(color=fg, bgcolor=bg) for _, fg, bg in SHADES]
_CELL = {}


def _cell_style(top: int, bottom: int) -> Style:
    key = (top, bottom)
    if key not in _CELL:
        _CELL[key] = Style(color=f"color({GREYS[top]})", bgcolor=f"color({GREYS[bottom]})")
    return _CELL[key]


def no_colour() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def colour_mode(app) -> str:
    """'grey' (256 colours or more), 'shades' (16 colours) or 'ascii' (NO_COLOR, TERM=dumb)."""
    from tui_stack.tui.slim import terminal_kind

    system = getattr(getattr(app, "console", None), "color_system", "truecolor")
    if no_colour() or system is None or not terminal_kind()[0]:
        return "ascii"
    return "shades" if system in ("standard", "windows") else "grey"


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
        self.mode = "ascii" if no_colour() else "grey"
        self.fit_scale = 1.0

    @property
    def ascii(self) -> bool:
        return self.mode != "grey"  # one pixel per cell (no half blocks)

    def on_mount(self) -> None:
        self.mode = colour_mode(self.app)

    def zoom_label(self) -> str:
        z = self.fit_scale / self.scale
        zoom = f"{z:.0f}x" if z >= 1 else f"1/{1 / z:.0f}x"
        px = f"{self.scale:.0f} px/cell" if self.scale >= 1 else f"{1 / self.scale:.0f} cells/px"
        return f"zoom {zoom}, {px}"

    def _show_zoom(self) -> None:
        if not self.magnify:
            self.border_title = self.zoom_label()

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

    def fit(self, user: bool = False) -> None:
        if self.image is None:
            return
        h, w = self.image.shape
        cols, rows = max(1, self.size.width), max(1, self.size.height * self._sub())
        s = max(w * self._aspect() / cols, h / rows)
        self.scale = s if not self.magnify or s >= 1 else 1 / max(1, int(1 / s))
        self.fit_scale = self.scale
        self.cx, self.cy = (w - 1) / 2, (h - 1) / 2
        if user:
            self._user_view = False
        self._show_zoom()
        self._invalidate()

    def _sub(self) -> int:
        return 1 if self.ascii else 2

    def _aspect(self) -> float:
        """Rows of pixels per column of pixels in one drawn unit: a cell is about twice as tall
        as wide, so one value per cell covers half as many pixels across as down."""
        return 2.0 if self.ascii else 1.0

    @property
    def xscale(self) -> float:
        return self.scale / self._aspect()

    def zoom(self, factor: float) -> None:
        if self.image is None:
            return
        self.scale = float(np.clip(self.scale / factor, 1 / 16, max(self.image.shape)))
        self.cx, self.cy = self.cursor
        self._user_view = True
        self._show_zoom()
        self._invalidate()

    def pan(self, dx_cells: int, dy_cells: int) -> None:
        self.cx += dx_cells * self.xscale
        self.cy -= dy_cells * self.scale * self._sub()
        self._user_view = True
        self._invalidate()

    def set_markers(self, markers: dict) -> None:
        """Markers at image pixels; only the cells they leave and enter are repainted."""
        old = self.markers
        self.markers = dict(markers)
        if self._levels is None:
            return  # a whole repaint is coming anyway
        for xy in set(old) ^ set(markers) | {k for k in markers if old.get(k) != markers[k]}:
            cell = self._cell_of(*xy)
            if cell is not None:
                self.refresh(Region(cell[0], cell[1], 1, 1))

    def move_cursor(self, dx: int, dy: int) -> None:
        """Move by image pixels (at least one cell's worth); y up."""
        if self.image is None:
            return
        h, w = self.image.shape
        x = int(np.clip(self.cursor[0] + dx * max(1, int(round(self.xscale))), 0, w - 1))
        y = int(np.clip(self.cursor[1] + dy * max(1, int(round(self.scale))), 0, h - 1))
        self.set_cursor(x, y)

    def set_cursor(self, x: int, y: int) -> None:
        old = self._cell_of(*self.cursor)
        self.cursor = (int(x), int(y))
        new = self._cell_of(x, y)
        if new is None:  # the cursor left the view: recentre on it
            self.cx, self.cy = x, y
            self._invalidate()
        else:
            for cell in (old, new):  # the cursor is drawn in the cells left and right of its pixel
                if cell is not None:
                    self.refresh(Region(max(0, cell[0] - 1), cell[1], 3, 1))
        self.post_message(self.CursorMoved(self, *self.cursor))

    def value_at(self, x: int, y: int) -> float:
        if self.image is None:
            return float("nan")
        return float(self.image[y, x])

    # ------------------------------------------------------------ geometry

    def _origin(self):
        cols, rows = self.size.width, self.size.height * self._sub()
        return self.cx - cols / 2 * self.xscale, self.cy + rows / 2 * self.scale

    def _cell_of(self, x: float, y: float):
        """Widget cell (col, row) showing image pixel (x, y), or None if off view."""
        if self.size.width == 0:
            return None
        x0, ytop = self._origin()
        col = int(np.floor((x - x0) / self.xscale + 1e-9))
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
        s, sx = self.scale, self.xscale
        lo, hi = self.limits
        n = {"grey": len(GREYS), "shades": len(SHADES), "ascii": len(ASCII_RAMP)}[self.mode]
        vals = np.full((rows, cols), np.nan, dtype=np.float32)
        if s > 1:
            # Block means over whole image pixels: the sky goes flat grey and stars stand out;
            # block maxima would turn every block's noise peak into a star.
            b, bx = int(np.ceil(s)), max(1, int(np.ceil(sx)))
            xs = np.floor(x0 + np.arange(cols) * sx).astype(int)
            ys = np.floor(ytop - (np.arange(rows) + 1) * s).astype(int)
            pad = max(b, bx) + 1
            padded = np.full((h + 2 * pad, w + 2 * pad), np.nan, dtype=np.float32)
            padded[pad:-pad, pad:-pad] = img
            okx = (xs > -bx) & (xs < w)
            oky = (ys > -b) & (ys < h)
            xi = np.clip(xs[okx], -pad, w) + pad
            yi = np.clip(ys[oky], -pad, h) + pad
            blocks = padded[yi[:, None, None, None] + np.arange(b)[None, None, :, None],
                            xi[None, :, None, None] + np.arange(bx)[None, None, None, :]]
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(blocks, axis=(2, 3))
            vals[np.ix_(np.nonzero(oky)[0], np.nonzero(okx)[0])] = means
        else:
            xs = np.floor(x0 + (np.arange(cols) + 0.5) * sx).astype(int)
            ys = np.floor(ytop - (np.arange(rows) + 0.5) * s).astype(int)
            okx, oky = (xs >= 0) & (xs < w), (ys >= 0) & (ys < h)
            vals[np.ix_(np.nonzero(oky)[0], np.nonzero(okx)[0])] = img[np.ix_(ys[oky], xs[okx])]
        if not self.magnify and np.isfinite(vals).sum() > 16:
            # The sky's noise drawn as one flat grey: a colour change per cell of noise would
            # cost ~12 bytes each over SSH and show nothing; stars stay as they are.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                sky = np.nanmedian(vals)
                spread = 1.4826 * np.nanmedian(np.abs(vals - sky))
            with np.errstate(invalid="ignore"):
                vals = np.where(np.abs(vals - sky) < 2.5 * spread, sky, vals)
            if self.mode == "ascii" and np.isfinite(sky) and lo < sky < hi:
                lo = sky  # text: the sky blank, only what stands above it drawn
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
            return Strip([Segment(" " * width, Style())])
        if self._levels is None or self._levels.shape != (self.size.height * self._sub(), width):
            self._compute_levels()
        cursor_cell = self._cell_of(*self.cursor) if self.cursor_visible else None
        marks = {}
        for (mx, my), (ch, colour) in self.markers.items():
            cell = self._cell_of(mx, my)
            if cell is not None and cell[1] == y:
                marks[cell[0]] = (ch, colour)
        cursor_cols = {}
        if cursor_cell is not None and cursor_cell[1] == y:  # brackets beside the pixel, not over it
            cursor_cols = {cursor_cell[0] - 1: "[", cursor_cell[0] + 1: "]"}
        segs = []
        if self.mode == "ascii":
            row = self._levels[y]
            chars = [ASCII_RAMP[v] if v >= 0 else " " for v in row]
            for c, (ch, _) in marks.items():
                chars[c] = ch
            for c, ch in cursor_cols.items():
                if 0 <= c < width:
                    chars[c] = ch
            return Strip([Segment("".join(chars), Style())])
        if self.mode == "shades":
            row = self._levels[y]
            for c in range(width):
                if c in cursor_cols:
                    segs.append(Segment(cursor_cols[c], Style(color="bright_red", bgcolor="black", bold=True)))
                elif c in marks:
                    segs.append(Segment(marks[c][0], Style(color=marks[c][1], bgcolor="black", bold=True)))
                else:
                    v = max(0, int(row[c]))
                    segs.append(Segment(SHADES[v][0], _SHADE_STYLE[v]))
            return Strip(list(Segment.simplify(segs)), width)
        top, bot = self._levels[2 * y], self._levels[2 * y + 1]
        run_style, run_text = None, []
        for c in range(width):
            if c in cursor_cols:
                style, ch = Style(color="red", bgcolor="black", bold=True), cursor_cols[c]
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
