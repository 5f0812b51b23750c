"""Moving a frame onto the reference grid, with a mask for pixels that came from outside it.

Integer shifts move pixels (slices). Everything else - a subpixel shift, a turn, a mirror, any
affine map of the transform contract (reference (x, y) -> frame (a x + b y + c, d x + e y + f))
- is resampled by `Warp`, one box of output pixels at a time, so the combine can resample each
frame's rows inside its own row blocks (core.combine.WarpSource) and the written `s<name>`
frames come from the same code. The map is split into 1-D passes with a short kernel:

    L = X(b/e) Y(d/sx) D,   D = diag(sx = det/e, sy = e),
    X(s) = [[1, s], [0, 1]],  Y(s) = [[1, 0], [s, 1]]

(Catmull and Smith's two passes; near a quarter turn, where e is small, Paeth's three shears
of the turn with the rest in D). A shear moves each line by one constant amount, so a line
needs one set of kernel weights; the last pass is separable (each output column, and each
row, its own weights). A pure shift is that last pass alone. A turned block is done in
tiles of columns, so a y-shear reads few extra rows. Any output pixel whose kernel touched a masked pixel or
one outside the frame is masked: NaN spreads through the passes and is the mask. The 1-D
passes run compiled (core/_resample.c, same pixels) when it was built; the numpy forms here
are the reference and the fallback (COMPILED below).
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np

# The kernel chosen by benchmarks/kernels.py (alignment, flux, noise, ringing, speed; see README).
DEFAULT_KERNEL = "poly5"
KERNELS = ("lanczos3", "lanczos4", "poly5", "cubic", "linear")
_HALF = {"lanczos3": 3, "lanczos4": 4, "poly5": 3, "cubic": 2, "linear": 1}
TILE_ROWS = 128  # rows a y-shear may add to the box a turned block reads (measured: see Warp)
_EXACT = 1e-6  # a phase this close to a whole pixel is one: no interpolation, no mask spread


def integer_slices(shape, dx: int, dy: int):
    """Slices (out_y, out_x, in_y, in_x) such that out[y, x] = in[y - dy, x - dx]."""
    h, w = shape

    def axis(n, d):
        d = int(d)
        if abs(d) >= n:
            return None
        return (slice(max(0, d), n + min(0, d)), slice(max(0, -d), n - max(0, d)))

    ay, ax = axis(h, dy), axis(w, dx)
    if ay is None or ax is None:
        return None
    return ay[0], ax[0], ay[1], ax[1]


def applied_shift(dx: float, dy: float, mode: str) -> tuple[float, float]:
    if mode == "integer":
        return int(np.round(dx)), int(np.round(dy))
    return float(dx), float(dy)


# ---------------------------------------------------------------- kernels


def kernel_weights(kernel: str, phase: np.ndarray) -> np.ndarray:
    """(n, 2r) float64 weights of the taps floor(pos) - r + 1 ... floor(pos) + r for the
    fractional parts `phase` in [0, 1). Each row sums to 1 (flux kept)."""
    phase = np.asarray(phase, np.float64)
    r = _HALF.get(kernel)
    if r is None:
        raise ValueError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
    j = (r - 1) - np.arange(2 * r)  # x = phase + j: distance of each tap from the position
    x = phase[:, None] + j
    if kernel.startswith("lanczos"):
        # sinc(x) sinc(x / r) with two sines per phase: sin(pi x) = (-1)^j sin(pi phase), and
        # sin(pi x / r) by angle addition (np.sinc on every tap is 5x slower, measured)
        beta = np.pi * j / r
        a = np.pi * phase[:, None] / r
        num = (np.sin(np.pi * phase)[:, None] * np.where(j % 2, -1.0, 1.0)) * (np.sin(a) * np.cos(beta) + np.cos(a) * np.sin(beta))
        with np.errstate(invalid="ignore", divide="ignore"):
            w = r * num / (np.pi * np.pi * x * x)
        w[np.abs(x) < 1e-12] = 1.0
    elif kernel == "poly5":  # IRAF's poly5: the degree-5 polynomial through the 6 nearest pixels
        nodes = -j.astype(np.float64)
        w = np.ones_like(x)
        for k in range(2 * r):
            for m in range(2 * r):
                if m != k:
                    w[:, k] *= (phase - nodes[m]) / (nodes[k] - nodes[m])
    elif kernel == "cubic":  # Keys' cubic convolution, a = -0.5
        a, ax = -0.5, np.abs(x)
        w = np.where(ax <= 1, (a + 2) * ax**3 - (a + 3) * ax**2 + 1,
                     np.where(ax < 2, a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a, 0.0))
    else:  # linear
        w = np.maximum(0.0, 1 - np.abs(x))
    return w / w.sum(axis=1, keepdims=True)


class _Taps:
    """Kernel taps for the positions a * i + b of the whole numbers i: first tap index and
    weights (float32 (taps, positions), or (taps, 1) when one phase serves all), computed for a range of i once and reused by
    every block (the weights cost as much as a pass, measured). Positions that are all whole
    pixels (a whole, b whole) take one tap: an exact copy, no spread of the mask."""

    def __init__(self, a: float, b: float, kernel: str):
        self.a, self.b, self.kernel = float(a), float(b), kernel
        self.exact = self.a.is_integer() and abs(self.b - round(self.b)) < _EXACT
        self.same = self.a.is_integer()  # one phase for all: one row of weights
        self.taps = 1 if self.exact else 2 * _HALF[kernel]
        self.step = -1 if self.a < 0 else 1
        self._cache = None

    def get(self, i0: int, i1: int):
        cache = self._cache
        if cache is None or i0 < cache[0] or i1 > cache[1]:
            pad = max(64, i1 - i0)
            lo, hi = i0 - pad, i1 + pad
            if cache is not None:  # at least twice as wide: blocks walking down a frame recompute
                width = cache[1] - cache[0]  # a few times, not once a block (1° frame 0.044 -> 0.037 s)
                lo = min(lo, cache[0] - width if i0 < cache[0] else cache[0])
                hi = max(hi, cache[1] + width if i1 > cache[1] else cache[1])
            pos = self.a * np.arange(lo, hi, dtype=np.float64) + self.b
            if self.exact:
                start, w = np.rint(pos).astype(np.int64), np.ones((1, 1))
            else:
                base = np.floor(pos)
                start = base.astype(np.int64) - (_HALF[self.kernel] - 1)
                w = kernel_weights(self.kernel, (pos - base)[:1] if self.same else pos - base)
            # one contiguous row per tap: a tap's weights broadcast fast over a block
            w = np.ascontiguousarray(w.T, np.float32)
            cache = self._cache = (lo, hi, start, w)  # one assignment: safe for threads
        lo, _, start, w = cache
        w = w if w.shape[1] == 1 else w[:, i0 - lo:i1 - lo]
        return start[i0 - lo:i1 - lo], w

    def span(self, i0: int, i1: int, offset: int = 0, n_line: int = 1):
        """[lo, hi) of the source indices read for i in [i0, i1) (each line n_line long)."""
        start = self.get(i0, i1)[0]
        return offset + int(start.min()), offset + int(start.max()) + self.taps + n_line - 1


class _Scratch(threading.local):
    """Each thread's working arrays of the passes, reused block after block: a fresh 1-2 MB
    array per pass is fresh pages for the kernel to fault in (measured: half the time of a
    shift, 0.10 -> 0.05 s CPU per 4096^2 frame)."""

    def __init__(self):
        self.bufs = {}

    def get(self, name: str, shape, padded: bool = False) -> np.ndarray:
        """A (rows, cols) float32 array; `padded`: rows PAD longer than cols (a view), which
        numpy multiplies by per-row weights 2x faster than a contiguous array (measured:
        105 x 4096 by a (105, 1) column, 70 -> 35 us; by a row of per-column weights 58 -> 39 us)."""
        rows, cols = int(shape[0]), int(shape[1])
        stride = cols + (_PAD if padded else 0)
        n = rows * stride
        buf = self.bufs.get(name)
        if buf is None or buf.size < n:
            buf = self.bufs[name] = np.empty(n + n // 4, np.float32)  # room for a slightly larger next box
        return buf[:n].reshape(rows, stride)[:, :cols]


_PAD = 16
_SCRATCH = _Scratch()


def _compiled():
    """The compiled passes (core/_resample.c, built at install when a C compiler is there), or
    None: not built, or TUI_STACK_PURE=1 asks for the numpy passes (the same pixels, slower)."""
    if os.environ.get("TUI_STACK_PURE", "0") not in ("", "0"):
        return None
    try:
        from tui_stack.core import _resample
    except ImportError:
        return None
    return _resample


COMPILED = _compiled()  # the one switch between the two forms of every pass below


def _runs(key):
    """[i, j) runs of equal consecutive values of `key`."""
    cut = (np.flatnonzero(key[1:] != key[:-1]) + 1).tolist()
    return zip([0] + cut, cut + [len(key)])


# ---------------------------------------------------------------- 1-D passes
# Each pass works on slices: a run of output columns (or rows, or lines) whose taps start at
# consecutive (or equal) source pixels is a weighted sum of shifted slices, weights per
# column, row or line. A shift is one run; a scale or shear a few.


def _along_x(src, start, w, step: int = 1, dst=None):
    """dst[:, j] = sum_k w[j, k] src[:, start[j] + k] (w one row: the same for all j).
    `step` -1: start falls by one a column (a mirrored frame): slices read backwards."""
    n, taps = len(start), w.shape[0]
    dst = np.empty((src.shape[0], n), np.float32) if dst is None else dst
    if COMPILED is not None:
        COMPILED.along_x(src, start, w, dst)
        return dst
    for i, j in _runs(start - step * np.arange(n)):
        part, tmp = dst[:, i:j], _SCRATCH.get("tmp", (src.shape[0], j - i))
        for k in range(taps):
            np.multiply(_slice(src, start[i] + k, j - i, step, 1), _w(w, i, j, k), out=tmp if k else part)
            if k:
                part += tmp
    return dst


def _along_y(src, start, w, step: int = 1, dst=None):
    """dst[i, :] = sum_k w[i, k] src[start[i] + k, :]."""
    n, taps = len(start), w.shape[0]
    dst = np.empty((n, src.shape[1]), np.float32) if dst is None else dst
    if COMPILED is not None:
        COMPILED.along_y(src, start, w, dst)
        return dst
    for i, j in _runs(start - step * np.arange(n)):
        part, tmp = dst[i:j], _SCRATCH.get("tmp", (j - i, src.shape[1]))
        for k in range(taps):
            np.multiply(_slice(src, start[i] + k, j - i, step, 0), _w(w, i, j, k)[:, None], out=tmp if k else part)
            if k:
                part += tmp
    return dst


def _w(w, i, j, k):
    """Weights of tap k for positions [i, j) (one column of weights: the same for all)."""
    return w[k, :1] if w.shape[1] == 1 else w[k, i:j]


def _slice(src, first: int, m: int, step: int, axis: int):
    """m rows (axis 0) or columns from `first` on, forwards or backwards."""
    sl = slice(first, first + m) if step > 0 else slice(first, first - m if first - m >= 0 else None, -1)
    return src[sl] if axis == 0 else src[:, sl]


def _shear_rows(src, start, w, n, dst):
    """dst[i, j] = sum_k w[i, k] src[i, start[i] + j + k]: each row moved by its own amount;
    rows that start on the same pixel (the amount grows slowly) together."""
    if COMPILED is not None:
        COMPILED.shear_rows(src, start, w, dst)
        return dst
    for i, j in _runs(start):
        s0 = start[i]
        part, tmp = dst[i:j], _SCRATCH.get("tmp", (j - i, n))
        for k in range(w.shape[0]):
            np.multiply(src[i:j, s0 + k:s0 + k + n], _w(w, i, j, k)[:, None], out=tmp if k else part)
            if k:
                part += tmp
    return dst


def _shear_cols(src, start, w, n, dst):
    """dst[i, j] = sum_k w[j, k] src[start[j] + i + k, j]: each column moved by its own
    amount. The columns are first lined up (one copy per run of columns that start on the
    same pixel), then every tap is one pass over the whole block with per-column weights:
    few numpy calls however many runs a turn makes (measured 2x faster than tap by run)."""
    if COMPILED is not None:
        COMPILED.shear_cols(src, start, w, dst)
        return dst
    taps = w.shape[0]
    lined = _SCRATCH.get("lined", (n + taps - 1, len(start)), padded=True)
    for i, j in _runs(start):
        lined[:, i:j] = src[start[i]:start[i] + n + taps - 1, i:j]
    tmp = _SCRATCH.get("tmp", dst.shape)
    for k in range(taps):
        np.multiply(lined[k:k + n], w[k] if w.shape[1] > 1 else w[k, 0], out=tmp if k else dst)
        if k:
            dst += tmp
    return dst


# ---------------------------------------------------------------- the map


def shift_matrix(dx: float, dy: float, flipped: bool = False, shape=None) -> list[float]:
    """The contract's [a, b, c, d, e, f] for out[y, x] = in[y - dy, x - dx], the frame first
    turned by 180 degrees (`flipped`, a meridian flip) if asked: frame pixel = ref pixel - shift."""
    if not flipped:
        return [1.0, 0.0, -float(dx), 0.0, 1.0, -float(dy)]
    h, w = shape
    return [-1.0, 0.0, w - 1 + float(dx), 0.0, -1.0, h - 1 + float(dy)]


def as_matrix(transform) -> list[float]:
    """The contract's 6 numbers from a transform: 6 already, or a similarity [a, b, tx, ty]
    (x' = a x - b y + tx, y' = b x + a y + ty)."""
    t = [float(v) for v in transform]
    if len(t) == 6:
        return t
    if len(t) == 4:
        a, b, tx, ty = t
        return [a, -b, tx, b, a, ty]
    raise ValueError(f"a transform has 6 numbers (or a similarity's 4), not {len(t)}")


class Warp:
    """out[y, x] = frame(a x + b y + c, d x + e y + f), one box of output pixels at a time."""

    def __init__(self, matrix, kernel: str = DEFAULT_KERNEL, size: int = 4096):
        a, b, c, d, e, f = as_matrix(matrix)
        if kernel not in _HALF:
            raise ValueError(f"unknown kernel {kernel!r}; use one of {', '.join(KERNELS)}")
        if abs(a * e - b * d) < 1e-9:
            raise ValueError("transform is singular")
        self.kernel = kernel

        # a coefficient within 1e-6 px over a `size` frame of a whole number is that number:
        # 0 is no pass at all, 1 a pass that copies exactly (a quarter turn's shears)
        def small(v):
            return float(round(v)) if abs(v - round(v)) * size < 1e-6 else v

        det = a * e - b * d
        if abs(a) >= 0.7 * math.sqrt(abs(det)):
            # turned by less than ~45 degrees (or near a half turn): L = Y(d/a) X(b/sy) D with
            # D = diag(a, det/a), two shears (Catmull and Smith's two passes, the scale last).
            # The y-shear first: the rows it sweeps are only read, every pass works on the
            # block's own rows (the x-shear first would shear them all)
            sx, sy = a, det / a
            shears = [(small(d / a), "y"), (small(b / sy), "x")]
        elif abs(e) >= 0.7 * math.sqrt(abs(det)):  # an affine map with a small a: the x-shear first
            sx, sy = det / e, e
            shears = [(small(b / e), "x"), (small(d / sx), "y")]
        else:  # near a quarter turn: Paeth's three shears of R(theta), the rest in D
            theta = math.atan2(d, a)
            cs, sn = math.cos(theta), math.sin(theta)
            sx, u12, sy = math.hypot(a, d), cs * b + sn * e, -sn * b + cs * e
            if abs(theta) > math.pi / 2:  # a half turn is a sign of D: shears stay small
                theta -= math.copysign(math.pi, theta)
                sx, u12, sy = -sx, -u12, -sy
            p = -math.tan(theta / 2)
            shears = [(small(p), "x"), (small(math.sin(theta)), "y"), (small(p + u12 / sy), "x")]
        sx, sy = small(sx), small(sy)
        # L = M D with M the shears in order; out = g(D p + tau), tau = M^-1 (c, f)
        m = np.eye(2)
        for v, axis in shears:
            m = m @ (np.array([[1, v], [0, 1]]) if axis == "x" else np.array([[1, 0], [v, 1]]))
        tx, ty = np.linalg.solve(m, [c, f])
        self.shears = [(_Taps(v, 0.0, kernel), axis) for v, axis in shears if v]
        self.x, self.y = _Taps(sx, tx, kernel), _Taps(sy, ty, kernel)
        self.matrix = [a, b, c, d, e, f]
        # columns per tile of a turned block: a y-shear reads q * width more rows. First, those
        # rows are only read (up to TILE_ROWS more a block: whole rows, long numpy loops);
        # later, every earlier pass works on them too (then ~8 rows)
        q = max([abs(t.a) for t, axis in self.shears if axis == "y"], default=0.0)
        budget = TILE_ROWS if self.shears and self.shears[0][1] == "y" else 8
        self.tile = max(256, int(budget / q)) if q else None

    @property
    def turns(self) -> bool:
        return bool(self.shears)

    def _plan(self, y0, y1, x0, x1):
        """The boxes (r0, r1, c0, c1) each stage needs, from the output box back to the frame:
        boxes[0] is read, boxes[-1] feeds the separable pass."""
        box = (*self.y.span(y0, y1), *self.x.span(x0, x1))
        boxes = [box]
        for taps, axis in reversed(self.shears):
            r0, r1, c0, c1 = box
            if axis == "x":  # columns move by s * row
                box = (r0, r1, *taps.span(r0, r1, c0, c1 - c0))
            else:  # rows move by s * column
                box = (*taps.span(c0, c1, r0, r1 - r0), c0, c1)
            boxes.append(box)
        return boxes[::-1]

    def input_box(self, y0, y1, x0, x1):
        boxes = [self._plan(y0, y1, t0, t1)[0] for t0, t1 in self._tiles(x0, x1)]
        return (min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes))

    def _tiles(self, x0, x1):
        step = self.tile or (x1 - x0)
        return [(t, min(x1, t + step)) for t in range(x0, x1, step)]

    def render(self, read_box, y0, y1, x0, x1, out=None) -> np.ndarray:
        """Output pixels [y0, y1) x [x0, x1) as float32, NaN = no data, into `out` if given.
        `read_box(r0, r1, c0, c1)` gives the frame's pixels there (float32, NaN outside the
        frame or masked); it is called once, for the box every tile needs."""
        if out is None:
            out = np.empty((y1 - y0, x1 - x0), np.float32)
        tiles = self._tiles(x0, x1)
        plans = [self._plan(y0, y1, t0, t1) for t0, t1 in tiles]
        if len(tiles) == 1:
            self._render(read_box(*plans[0][0]), plans[0], y0, y1, x0, x1, out)
            return out
        r0, r1 = min(p[0][0] for p in plans), max(p[0][1] for p in plans)
        c0, c1 = min(p[0][2] for p in plans), max(p[0][3] for p in plans)
        whole = read_box(r0, r1, c0, c1)
        for (t0, t1), boxes in zip(tiles, plans):
            b = boxes[0]
            self._render(whole[b[0] - r0:b[1] - r0, b[2] - c0:b[3] - c0], boxes, y0, y1, t0, t1,
                         out[:, t0 - x0:t1 - x0])
        return out

    def _render(self, img, boxes, y0, y1, x0, x1, out):
        # the passes write into two of the thread's arrays in turn; the last into `out`
        for k, ((taps, axis), src, box) in enumerate(zip(self.shears, boxes, boxes[1:])):
            r0, r1, c0, c1 = box
            dst = _SCRATCH.get(f"pass{k % 2}", (r1 - r0, c1 - c0))
            if axis == "x":  # columns move by s * row
                start, w = taps.get(r0, r1)
                img = _shear_rows(img, start + (c0 - src[2]), w, c1 - c0, dst)
            else:  # rows move by s * column
                start, w = taps.get(c0, c1)
                img = _shear_cols(img[:, c0 - src[2]:c1 - src[2]], start + (r0 - src[0]), w, r1 - r0, dst)
        g = boxes[-1]
        start, w = self.x.get(x0, x1)
        # padded for the y-pass's per-row weights (a shift's one weight a tap: faster contiguous)
        dst = _SCRATCH.get(f"pass{len(self.shears) % 2}", (len(img), x1 - x0), padded=not self.y.same)
        img = _along_x(img, start - g[2], w, self.x.step, dst)
        start, w = self.y.get(y0, y1)
        _along_y(img, start - g[0], w, self.y.step, out)


def empty_box(shape, r0, r1, c0, c1):
    """A float32 box [r0, r1) x [c0, c1) of a frame of `shape`: NaN outside the frame, the
    part inside left to fill (a view, or None) with its frame rows and columns. Only the
    margins are written: a whole-box fill costs as much as a pass (measured). The box is
    the thread's own working array: valid until its next box."""
    h, w = shape
    out = _SCRATCH.get("box", (r1 - r0, c1 - c0))
    a0, a1, b0, b1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if a1 <= a0 or b1 <= b0:
        out[...] = np.nan
        return out, None, (a0, a1, b0, b1)
    out[:a0 - r0] = np.nan
    out[a1 - r0:] = np.nan
    out[:, :b0 - c0] = np.nan
    out[:, b1 - c0:] = np.nan
    return out, out[a0 - r0:a1 - r0, b0 - c0:b1 - c0], (a0, a1, b0, b1)


def box_reader(data: np.ndarray, mask: np.ndarray | None = None):
    """read_box for an in-memory frame: NaN where masked or outside."""
    h, w = data.shape

    def read_box(r0, r1, c0, c1):
        out, part, (a0, a1, b0, b1) = empty_box((h, w), r0, r1, c0, c1)
        if part is not None:
            part[...] = data[a0:a1, b0:b1]
            if mask is not None:
                part[mask[a0:a1, b0:b1]] = np.nan
        return out

    return read_box


def warp_frame(data: np.ndarray, mask: np.ndarray | None, matrix, out_shape=None, kernel: str = DEFAULT_KERNEL,
               block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A whole frame through `matrix` (the contract's 6 numbers), block of rows by block of rows.
    Returns (data float32 with 0 where masked, mask True = no data)."""
    h, w = out_shape or data.shape
    warp = Warp(matrix, kernel, max(data.shape))
    read = box_reader(data, mask)
    out = np.empty((h, w), np.float32)
    for y0 in range(0, h, block):
        warp.render(read, y0, min(h, y0 + block), 0, w, out[y0:y0 + block])
    out_mask = np.isnan(out)
    out[out_mask] = 0.0
    return out, out_mask


def shift_frame(
    data: np.ndarray, mask: np.ndarray | None, dx: float, dy: float, mode: str = "integer",
    kernel: str = DEFAULT_KERNEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Shift by (dx, dy): out[y, x] = in[y - dy, x - dx]. Returns (data, mask); mask True = no data.

    Integer mode rounds the shift and moves pixels (the lab's order-0 scipy shift, done as a
    slice copy). Subpixel mode resamples (Warp: two 1-D passes of the kernel); any output pixel
    whose kernel touched a masked or outside pixel is masked. Masked output pixels hold 0,
    never a value meant to be combined.
    """
    if mask is None:
        mask = np.zeros(data.shape, dtype=bool)
    if mode == "integer":
        ix, iy = applied_shift(dx, dy, mode)
        out = np.zeros(data.shape, dtype=np.float32)
        out_mask = np.ones(data.shape, dtype=bool)
        sl = integer_slices(data.shape, ix, iy)
        if sl is not None:
            oy, ox, iy_, ix_ = sl
            out[oy, ox] = data[iy_, ix_]
            out_mask[oy, ox] = mask[iy_, ix_]
        out[out_mask] = 0.0
        return out, out_mask
    if mode == "subpixel":
        return warp_frame(data, mask, shift_matrix(dx, dy), kernel=kernel)
    raise ValueError(f"unknown shift mode {mode!r}; use 'integer' or 'subpixel'")


def transform_frame(data: np.ndarray, mask: np.ndarray | None, transform,
                    shape: tuple[int, int] | None = None, kernel: str = DEFAULT_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """Resample a frame onto the reference grid through `transform` (the contract's 6 numbers,
    or a similarity's 4), with the same kernel and mask rule as the subpixel shift. `shape`:
    the reference grid's, if not the frame's."""
    return warp_frame(data, mask, as_matrix(transform), shape, kernel=kernel)
