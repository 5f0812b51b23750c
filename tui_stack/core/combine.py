"""Combine aligned frames pixel by pixel, block of rows by block of rows, honouring masks.

Frames are read as row blocks from their sources (positioned reads of the FITS with the
shift applied as a slice offset, or arrays), so peak memory is bounded by `memory_limit`
whatever the number of frames. Inside a block a masked pixel is NaN, and every
reduction ignores NaN; a pixel with no data at all comes out NaN.

Methods (x = the unmasked values of one pixel, n of them, N frames in all):
- average: mean(x)
- median: median(x); the mean of the middle two for even n, as numpy and ccdproc
- minmax: mean after dropping the nlow lowest and nhigh highest values. With masked
  pixels the counts shrink in proportion, as IRAF's imcombine: int(nlow * n / N + 0.001)
- sigmaclip: reject x < c - sigma*s or x > c + sigma*s, c = median(x), s = std(x),
  `maxiters` times (1 = ccdproc's combine with sigma_clip_func=median), then mean
- sigclip (IRAF): s = sqrt(sum((x - c)^2) / (n - 1)) about c, until nothing more is rejected
- avsigclip (IRAF): s = sigma_row * sqrt(max(1, c + sky)), sigma_row^2 the mean over one image
  row of (x - c)^2 / max(1, c + sky), taken once before rejecting
- ccdclip (IRAF): s = sqrt(rdnoise^2 + gain*(c + sky) + (snoise*gain*(c + sky))^2) / gain
- pclip (IRAF): s = |c - x_(j)|, x_(j) int(|pclip| int(N / 2)) ranks below/above the median (N images)
- winsorized (Siril): s = 1.134 std of x pulled in to c +- 1.5 s, iterated
- gesd (Siril): Rosner's generalized extreme studentized deviate test
For the IRAF methods c = median (mclip) or the mean without min and max on the first pass;
then nkeep puts back the values closest to c. All of them then average what is kept, weighted
by `weights` if given.

Two ways through a block: average, median, minmax and sigmaclip's first pass work on whole
frame planes (ranks by a sorting network, sums plane by plane); pixels with masked values
(and, for sigmaclip, those that reject) go the general way: each pixel's values sorted, every
rejection moving the ends of the run it keeps (reduce_block). Both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
import math
import warnings
from typing import Callable, Protocol

import numpy as np

from tui_stack.core.combine_params import DEFAULT_MEMORY_LIMIT, METHODS, CombineParams, method_parameters  # noqa: F401


@dataclass
class CombineResult:
    data: np.ndarray  # float32, NaN where no frame has data
    n_used: np.ndarray | None  # int16: values that went into each pixel
    n_rejected: np.ndarray | None  # int16: values rejected by the method
    sigma: np.ndarray | None = None  # float32: std of the values that went in (IRAF's sigma image)

    @classmethod
    def empty(cls, shape, maps: bool, keep_data: bool = True) -> "CombineResult":
        def a(dtype):
            return np.empty(shape, dtype) if maps else None

        return cls(np.empty(shape, np.float32) if keep_data else None, a(np.int16), a(np.int16), a(np.float32))

    def put(self, y0: int, rows) -> None:
        """Store the rows [y0, y0 + len) that combine_rows returned."""
        data, used, rej, sig = rows
        y1 = y0 + len(data)
        if self.data is not None:
            self.data[y0:y1] = data
        if self.n_used is not None:
            self.n_used[y0:y1], self.n_rejected[y0:y1], self.sigma[y0:y1] = used, rej, sig


class Source(Protocol):
    shape: tuple[int, int]
    zero: float
    scale: float

    def read_into(self, y0: int, y1: int, out: np.ndarray, x0: int = 0, x1: int | None = None) -> None: ...  # NaN = no data

    def close(self) -> None: ...


class ArraySource:
    """An in-memory frame; `mask` True = no data."""

    def __init__(self, data, mask=None, zero: float = 0.0, scale: float = 1.0):
        self.data, self.mask = data, mask
        self.shape = data.shape
        self.zero, self.scale = zero, scale

    def read_into(self, y0, y1, out, x0=0, x1=None):
        out[...] = self.data[y0:y1, x0:x1]
        if self.mask is not None:
            out[self.mask[y0:y1, x0:x1]] = np.nan

    def close(self):
        pass


class FileSource:
    """A FITS frame on disk placed at integer (dx, dy) on the output grid as a slice offset:
    out[y, x] = in[y - dy, x - dx], read block by block, never the whole frame. The file is
    opened for each block and closed again (its header is read once).

    `out_shape` defaults to the frame's own shape (a shift); a larger one holds IRAF-style offsets.
    """

    def __init__(self, path, hdu_index: int, shape, dx: int = 0, dy: int = 0, zero: float = 0.0,
                 scale: float = 1.0, out_shape=None, flip: bool = False):
        self.path, self.hdu_index, self.in_shape = path, hdu_index, tuple(shape)
        self.flip = flip  # turned by 180 degrees before the shift (a meridian flip), exactly
        self.shape = tuple(out_shape) if out_shape is not None else self.in_shape
        self.dx, self.dy = int(dx), int(dy)
        self.zero, self.scale = zero, scale
        self._reader = None

    def _reader_(self):
        if self._reader is None:
            from tui_stack.core.io import RowReader

            # opened for each read: thousands of sources hold no file open
            self._reader = RowReader(self.path, self.hdu_index, keep_open=False)
        return self._reader

    def __getstate__(self):  # a Dask worker makes its own reader
        return {**self.__dict__, "_reader": None}

    def read_into(self, y0, y1, out, x0=0, x1=None):
        """Rows [y0, y1), columns [x0, x1) of the output grid into `out` (float32), NaN where
        the frame has no data."""
        h, w = self.in_shape
        x1 = self.shape[1] if x1 is None else x1
        iy0, iy1 = max(0, y0 - self.dy), min(h, y1 - self.dy)
        ix0, ix1 = max(0, x0 - self.dx), min(w, x1 - self.dx)
        if iy1 <= iy0 or ix1 <= ix0:
            out[...] = np.nan
            return
        oy0, ox0 = iy0 + self.dy - y0, ix0 + self.dx - x0
        oy1, ox1 = oy0 + (iy1 - iy0), ox0 + (ix1 - ix0)
        # only the margins the shift leaves empty are set to NaN; the rest is read in place
        out[:oy0] = np.nan
        out[oy1:] = np.nan
        out[oy0:oy1, :ox0] = np.nan
        out[oy0:oy1, ox1:] = np.nan
        if self.flip:  # rows/columns [a, b) of the turned frame are [n-b, n-a) reversed
            dest = out[oy0:oy1, ox0:ox1]
            self._reader_().rows_into(h - iy1, h - iy0, w - ix1, w - ix0, dest[::-1, ::-1])
        else:
            self._reader_().rows_into(iy0, iy1, ix0, ix1, out[oy0:oy1, ox0:ox1])

    def read_rows(self, y0, y1):
        out = np.empty((y1 - y0, self.shape[1]), dtype=np.float32)
        self.read_into(y0, y1, out)
        mask = ~np.isfinite(out)
        out[mask] = 0.0
        return out, mask

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class WarpSource(FileSource):
    """A frame resampled onto the output grid inside each block of rows: output pixel (x, y)
    is the frame's (a x + b y + c, d x + e y + f) (the transform contract; a subpixel shift is
    [1, 0, -dx, 0, 1, -dy], see shifting.shift_matrix). Each block reads only the frame rows
    its pixels map into, plus the kernel's halo (and, turned, the rows the turn sweeps), and
    resamples them with core.shifting.Warp: no resampled copy of the frame is ever written
    or held. Pixels whose kernel touched a masked pixel or the outside are NaN.

    From a file (`path`, `hdu_index`; `shape` None: read from its header; or `make_reader()`,
    an io.RowReader-like reader such as calibrated rows) or an in-memory frame (`data`,
    `mask`). `out_shape`: the output grid's, if not the frame's."""

    def __init__(self, path, hdu_index: int, shape, matrix, zero: float = 0.0, scale: float = 1.0, out_shape=None,
                 kernel: str | None = None, data=None, mask=None, make_reader=None):
        from tui_stack.core import shifting

        if shape is None:  # the frame's own shape (a quarter-turned frame of another sensor's)
            from tui_stack.core.io import RowReader

            shape = data.shape if data is not None else RowReader(path, hdu_index, keep_open=False).shape
        super().__init__(path, hdu_index, shape, 0, 0, zero, scale, out_shape)
        self.warp = shifting.Warp(matrix, kernel or shifting.DEFAULT_KERNEL, max(self.in_shape))
        self.data, self.mask = data, mask
        self._make_reader = make_reader  # another row reader (calibrated rows), else the file's

    def _reader_(self):
        if self._reader is None and self._make_reader is not None:
            self._reader = self._make_reader()
        return super()._reader_()

    @classmethod
    def of_array(cls, data, mask, matrix, zero: float = 0.0, scale: float = 1.0, out_shape=None,
                 kernel: str | None = None) -> "WarpSource":
        return cls(None, 0, data.shape, matrix, zero, scale, out_shape, kernel, data=data, mask=mask)

    def _read_box(self, r0, r1, c0, c1):
        from tui_stack.core.shifting import box_reader, empty_box

        if self.data is not None:
            return box_reader(self.data, self.mask)(r0, r1, c0, c1)
        out, part, (a0, a1, b0, b1) = empty_box(self.in_shape, r0, r1, c0, c1)
        step = max(1, (8 << 20) // (4 * self.in_shape[1]))  # reads of at most 8 MB: a turned box may be tall
        for y in range(a0, a1 if part is not None else a0, step):
            y2 = min(a1, y + step)
            self._reader_().rows_into(y, y2, b0, b1, part[y - a0:y2 - a0])
        return out

    def read_into(self, y0, y1, out, x0=0, x1=None):
        self.warp.render(self._read_box, y0, y1, x0, self.shape[1] if x1 is None else x1, out)

    def box_rows(self, rows: int, cols: int | None = None) -> int:
        """Frame rows a block of `rows` (and `cols` columns) reads: many more than `rows` for
        a large turn, which sweeps the rows a whole block's width maps into."""
        r0, r1, _, _ = self.warp.input_box(0, rows, 0, cols or self.shape[1])
        return r1 - r0

    def work_bytes(self, rows: int, cols: int | None = None) -> int:
        """Memory one block of `rows` (and `cols` columns) takes while it is resampled: the
        frame box read and the passes' arrays (about 4 of its size)."""
        r0, r1, c0, c1 = self.warp.input_box(0, rows, 0, cols or self.shape[1])
        return 5 * 4 * (r1 - r0) * (c1 - c0)


# Working copies of the block each method needs (the block itself, its sorted copy, float64
# temporaries): sets how many rows fit in the memory limit.
_COPIES = {"average": 3, "median": 4, "minmax": 5, "winsorized": 9, "gesd": 7}


def _row_bytes(n_frames: int, width: int, method: str, threads: int, weighted: bool) -> int:
    copies = _COPIES.get(method, 6) + (3 if weighted else 0)  # argsort's int64 order and the weights
    return max(1, n_frames * width * 4 * copies * threads)


def rows_per_block(n_frames: int, width: int, memory_limit: int, method: str = "minmax", threads: int = 2,
                   weighted: bool = False) -> int:
    return max(1, int(memory_limit // _row_bytes(n_frames, width, method, threads, weighted)))


def rows_for(sources, method: str, memory_limit: int, threads: int = 2, weighted: bool = False) -> int:
    """rows_per_block, less what resampling sources take while they read a block (one frame
    at a time per thread)."""
    return block_shape(sources, method, memory_limit, threads, weighted)[0]


SWEEP = 4  # a block whose turned frames read more than this many rows per row is worked in tiles


def block_shape(sources, method: str, memory_limit: int, threads: int = 2, weighted: bool = False):
    """(rows, cols) of a block: whole rows, as many as memory_limit holds, less what resampling
    sources take while they read one (a frame at a time per thread). cols is None (the whole
    width) unless a large turn makes a block of whole rows read a band of frame rows SWEEP
    times its own: then square tiles, so each tile reads a box about its own size (a 30 degree
    turn on a 4096-wide frame: a few rows a block read 2000 rows of each frame, every block).
    avsigclip keeps whole rows: its sigma is one per row."""
    h, w = sources[0].shape
    warps = [s for s in sources if hasattr(s, "work_bytes")]

    def fits(rows, cols, band=0):
        per_row = _row_bytes(len(sources), cols, method, threads, weighted)
        work = threads * max((s.work_bytes(rows, cols) for s in warps), default=0)
        return per_row * rows + work + band <= memory_limit

    rows = rows_per_block(len(sources), w, memory_limit, method, threads, weighted)
    while warps and rows > 1 and not fits(rows, w):
        rows = max(1, int(rows * 0.8))
    swept = max((s.box_rows(min(rows, h)) for s in warps if s.warp.turns), default=0)
    if swept <= SWEEP * min(rows, h) or method == "avsigclip" or w <= 64:
        return rows, None
    side = min(h, w, int(math.isqrt(memory_limit // _row_bytes(len(sources), 1, method, threads, weighted))))
    # each thread also holds its band's results, tile by tile and joined: 2 x 12 bytes a pixel
    while side > 64 and not fits(side, side, threads * side * w * 24):
        side = int(side * 0.8)
    return side, side


REDUCE_PARTS = 4  # a block is sorted and clipped a quarter at a time


def reduce_block(block: np.ndarray, params: CombineParams, with_sigma: bool = False, weights=None):
    """reduce_block_whole on a quarter of the block's pixels at a time: the sort's copy and the
    clipping passes' temporaries (a pass that moves most pixels copies them) then stay within
    the copies rows_per_block allows for, however many values reject (measured in
    tests/test_memory.py). avsigclip's sigma is one per row: its parts are whole rows."""
    rows, cols, n = block.shape
    by_rows = params.method == "avsigclip"
    units = rows if by_rows else rows * cols
    step = -(-units // REDUCE_PARTS)
    if units <= 1 or step * cols < 4096:
        return reduce_block_whole(block, params, with_sigma, weights)
    flat = block if by_rows else block.reshape(1, rows * cols, n)
    parts = [reduce_block_whole(flat[u:u + step] if by_rows else flat[:, u:u + step], params, with_sigma, weights)
             for u in range(0, units, step)]
    return tuple(None if part[0] is None else np.concatenate([p.reshape(-1) for p in part]).reshape(rows, cols)
                 for part in zip(*parts))


def reduce_block_whole(block: np.ndarray, params: CombineParams, with_sigma: bool = False, weights=None):
    """Combine a (rows, cols, N) float32 block, NaN = masked, along its last (contiguous) axis.

    The N values of each pixel are sorted (NaN last). Every rejection here removes values
    below or above thresholds, so what a pixel keeps is always one run [lo, hi) of its sorted
    values: methods move lo and hi, never re-sort, and each pass revisits only the pixels whose
    run moved in the pass before. numpy's sort on a short contiguous axis is faster than
    bottleneck's median and releases the GIL, so two threads use both cores (measured in
    benchmarks/run.py). With `weights` (one per frame) the sort is an argsort so each value
    keeps its frame's weight for the final weighted average.
    Returns (result float32, n_used int16, n_rejected int16, sigma float32 or None): sigma is
    the (weighted) standard deviation of the values that went in, as IRAF's sigma image.
    """
    import bottleneck as bn

    rows, cols, n = block.shape
    nan = np.isnan(block)
    any_nan = bool(nan.any())
    n_valid = (n - nan.sum(axis=-1)).astype(np.int16) if any_nan else np.full(block.shape[:-1], n, np.int16)
    del nan
    method = params.method
    zeros = np.zeros_like(n_valid)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if weights is None:
            s, wts = np.sort(block, axis=-1), None
        else:
            order = np.argsort(block, axis=-1)
            s = np.take_along_axis(block, order, -1)
            wts = np.asarray(weights, np.float32)[order].reshape(-1, n)
            del order
        if method == "median":
            sig = bn.nanstd(block, axis=-1) if with_sigma else None
            return _median_sorted(s, n_valid, any_nan), n_valid, zeros, sig
        if method == "minmax" and wts is None and not any_nan:
            return _minmax_fast(s, n_valid, params.nlow, params.nhigh, with_sigma)
        s = s.reshape(-1, n)  # one row per pixel (a view: the block is contiguous)
        if any_nan:  # NaN sort last, past every run: zero them so run sums can multiply by masks
            np.copyto(s, np.float32(0), where=np.isnan(s))
        nv = n_valid.reshape(-1)
        lo = np.zeros(nv.shape, np.int32)
        hi = nv.astype(np.int32)
        if method == "minmax":
            # With masked values the counts shrink in proportion (IRAF imcombine).
            lo = np.floor(params.nlow * nv / n + 0.001).astype(np.int32)
            hi = np.maximum(nv - np.floor(params.nhigh * nv / n + 0.001), lo).astype(np.int32)
        runs = _Runs(s, nv)
        if method not in ("average", "minmax"):
            _REJECT[method](runs, lo, hi, params, cols)
        res, used, rej, sig = _mean_kept(runs, lo, hi, wts, with_sigma)
        shape = (rows, cols)
        return res.reshape(shape), used.reshape(shape), rej.reshape(shape), None if sig is None else sig.reshape(shape)
    raise ValueError(method)


def _take(s, i):
    """s[p, i[p]] for every pixel p of a (pixels, N) or (..., N) array, i clipped into range
    (callers mask what is out of it). Flat indexing: faster than take_along_axis."""
    n = s.shape[-1]
    i = np.clip(i, 0, n - 1)
    if s.ndim == 2 and s.flags.c_contiguous:
        return s.reshape(-1)[np.arange(len(i)) * n + i]
    return np.take_along_axis(s, i[..., None].astype(np.intp), -1)[..., 0]


def _median_sorted(s, n_valid, any_nan):
    n = s.shape[-1]
    if not any_nan:
        return ((s[..., (n - 1) // 2].astype(np.float64) + s[..., n // 2]) / 2).astype(np.float32)
    k = n_valid.astype(np.int64)
    res = (_take(s, np.maximum(k - 1, 0) // 2).astype(np.float64) + _take(s, k // 2)) / 2
    return np.where(k > 0, res, np.nan).astype(np.float32)


def _median_run(s, lo, hi):
    """Median of the kept run [lo, hi) of each pixel (float64, NaN where it is empty)."""
    k = hi - lo
    res = (_take(s, lo + np.maximum(k - 1, 0) // 2).astype(np.float64) + _take(s, lo + k // 2)) / 2
    return np.where(k > 0, res, np.nan)


@lru_cache(maxsize=8)
def _run_table(n: int) -> np.ndarray:
    """table[lo * (n + 1) + hi] = which of n sorted values lie in the run [lo, hi)."""
    idx = np.arange(n)
    lo, hi = np.divmod(np.arange((n + 1) ** 2), n + 1)
    return (idx >= lo[:, None]) & (idx < hi[:, None])


def _keep(s, lo, hi):
    """Boolean (..., N): the values inside each pixel's run. A table lookup up to 64 frames
    (10x faster than two broadcast comparisons, measured); comparisons beyond."""
    n = s.shape[-1]
    if n <= 64:
        return np.take(_run_table(n), lo * (n + 1) + hi, axis=0)
    idx = np.arange(n, dtype=np.int32)
    return (idx >= lo[..., None]) & (idx < hi[..., None])


def _run_values(s, lo, hi):
    """The kept values with everything else NaN: for bottleneck's nan-statistics."""
    return np.where(_keep(s, lo, hi), s, np.float32(np.nan))


def _row_sum(x):
    """Sum over the last axis of a (pixels, N) float32 array. einsum's float32 loop: 8x
    faster than numpy's reduction over a short axis, and unlike a BLAS matrix-vector
    product it starts no threads of its own, which beside the combine's two threads made
    it 10x slower on a busy machine (measured: 21 ms against 2 ms for 262144 x 16).
    Callers sum deviations from a nearby value, so float32 accumulation loses nothing that
    matters."""
    return np.einsum("ij->i", x) if x.ndim == 2 else np.einsum("...j->...", x)


def _run_sums(s, lo, hi, centre, wts=None, whole=False):
    """Over each pixel's run: (sum of weights or count, sum of w*(x - centre), sum of
    w*(x - centre)^2), float64. `centre` near the values keeps float32 sums exact enough.
    `whole`: every run is all N values (no mask to apply). Works in place on one temporary:
    fresh 32 MB arrays cost more in page faults than the arithmetic (measured)."""
    c = np.where(np.isfinite(centre), centre, 0).astype(np.float32)
    dev = s - c[:, None]
    if wts is None:
        if not whole:
            np.multiply(dev, _keep(s, lo, hi), out=dev)
        s1 = _row_sum(dev).astype(np.float64)
        np.multiply(dev, dev, out=dev)
        s2 = _row_sum(dev).astype(np.float64)
        return (hi - lo).astype(np.float64), s1, s2
    w = wts * _keep(s, lo, hi)
    count = _row_sum(w).astype(np.float64)
    np.multiply(w, dev, out=w)
    s1 = _row_sum(w).astype(np.float64)
    np.multiply(w, dev, out=w)
    s2 = _row_sum(w).astype(np.float64)
    return count, s1, s2


def _minmax_fast(s, n_valid, nlow, nhigh, with_sigma):
    n = s.shape[-1]
    kept = s[..., nlow : max(nlow, n - nhigh)]
    n_used = np.full(n_valid.shape, kept.shape[-1], np.int16)
    res = kept.mean(axis=-1, dtype=np.float64) if kept.shape[-1] else np.full(n_valid.shape, np.nan)
    sig = kept.std(axis=-1, dtype=np.float64).astype(np.float32) if with_sigma and kept.shape[-1] else None
    return res.astype(np.float32), n_used, (n_valid - n_used).astype(np.int16), sig


class _Runs:
    """The sorted values of a block, one row per pixel, with the median and moments of every
    pixel's whole set computed once. Most runs stay whole through a rejection (only pixels
    with an outlier lose values), so a pass costs only what the changed runs need."""

    def __init__(self, s, n_valid):
        self.s, self.nv = s, n_valid.astype(np.int32)
        zeros = np.zeros_like(self.nv)
        n = s.shape[-1]
        whole = bool((self.nv == n).all())
        self.med = (s[:, (n - 1) // 2].astype(np.float64) + s[:, n // 2]) / 2 if whole else _median_run(s, zeros, self.nv)
        cnt, s1, s2 = _run_sums(s, zeros, self.nv, self.med, whole=whole)
        self.mean = self.med + s1 / cnt
        self.m2 = np.maximum(s2 - s1 * s1 / cnt, 0)

    def stats(self, pixels, lo, hi):
        """(median, k, mean, M2 = sum of squared deviations from the mean) of the runs
        [lo, hi) of `pixels` (None: every pixel), float64."""
        pick = (lambda a: a.copy()) if pixels is None else (lambda a: a[pixels])
        med, mean, m2, nv = pick(self.med), pick(self.mean), pick(self.m2), pick(self.nv)
        part = np.flatnonzero((lo != 0) | (hi != nv))
        if part.size:
            sub = self.s[part if pixels is None else pixels[part]]
            lo1, hi1 = lo[part], hi[part]
            c = _median_run(sub, lo1, hi1)
            cnt, s1, s2 = _run_sums(sub, lo1, hi1, c)
            med[part], mean[part], m2[part] = c, c + s1 / cnt, np.maximum(s2 - s1 * s1 / cnt, 0)
        return med, (hi - lo).astype(np.float64), mean, m2


def _mean_kept(runs, lo, hi, wts, with_sigma):
    """(Weighted) mean and std of each pixel's kept run; counts for the maps."""
    n_used = (hi - lo).astype(np.int16)
    if wts is None:
        _, k, mean, m2 = runs.stats(None, lo, hi)
        sig = np.sqrt(m2 / k) if with_sigma else None
    else:
        centre = _median_run(runs.s, lo, hi)
        wsum, s1, s2 = _run_sums(runs.s, lo, hi, centre, wts)
        mean = centre + s1 / wsum
        sig = np.sqrt(np.maximum(s2 / wsum - (s1 / wsum) ** 2, 0)) if with_sigma else None
    mean = np.where(n_used > 0, mean, np.nan).astype(np.float32)
    return mean, n_used, (runs.nv - n_used).astype(np.int16), None if sig is None else sig.astype(np.float32)


def _clip(s, lo, hi, low_lim, high_lim, active):
    """Drop values below `low_lim` or above `high_lim` from the ends of the kept runs of the
    `active` pixels, walking in from each end (few values ever go). Returns the new (lo, hi)."""
    ok = active & np.isfinite(low_lim) & np.isfinite(high_lim)
    new_lo, new_hi = lo.copy(), hi.copy()
    n = s.shape[-1]
    flat = s.reshape(-1)
    start = np.flatnonzero(ok)
    p = start
    while p.size:
        lp = new_lo[p]
        p = p[(lp < new_hi[p]) & (flat[p * n + np.minimum(lp, n - 1)] < low_lim[p])]
        new_lo[p] += 1
    p = start
    while p.size:
        hp = new_hi[p]
        p = p[(hp > new_lo[p]) & (flat[p * n + np.maximum(hp - 1, 0)] > high_lim[p])]
        new_hi[p] -= 1
    return new_lo, new_hi


def _iterate(s, lo, hi, step, passes):
    """Run `step(values, lo, hi, pixels, first)` -> (lo, hi) up to `passes` times, each time on
    the pixels whose run moved in the pass before (the others cannot move again). lo and hi
    are updated in place."""
    pixels = None  # all of them: no copy on the first pass
    for k in range(passes):
        sub = s if pixels is None else s[pixels]
        lo1, hi1 = (lo, hi) if pixels is None else (lo[pixels], hi[pixels])
        new_l, new_h = step(sub, lo1, hi1, pixels, k == 0)
        moved = (new_l != lo1) | (new_h != hi1)
        if pixels is None:
            pixels = np.flatnonzero(moved)
            lo[:], hi[:] = new_l, new_h
        else:
            lo[pixels], hi[pixels] = new_l, new_h
            pixels = pixels[moved]
        if pixels.size == 0:
            return


def _max_keep(n_valid, nkeep):
    """IRAF's nkeep: at least nkeep values kept, or (negative) at most |nkeep| rejected."""
    n_valid = n_valid.astype(np.int32)
    return np.minimum(n_valid, nkeep) if nkeep >= 0 else np.maximum(0, n_valid + nkeep)


def _add_back(s, lo, hi, n_valid, nkeep, centre_of):
    """Where fewer than nkeep values are left, put back the rejected ones closest to the centre
    (`centre_of(values, lo, hi)` of what is kept, else the median of all), one from either end
    of the run at a time; equal residuals go back together (IRAF). In place."""
    pixels = np.flatnonzero((hi - lo) < _max_keep(n_valid, nkeep))
    if pixels.size == 0:
        return
    sub, lo1, hi1, nv = s[pixels], lo[pixels], hi[pixels], n_valid[pixels].astype(np.int32)
    centre = centre_of(sub, lo1, hi1)
    centre = np.where(np.isfinite(centre), centre, _median_run(sub, np.zeros_like(lo1), nv))
    want = _max_keep(nv, nkeep)
    for _ in range(s.shape[-1] + 1):
        need = (hi1 - lo1) < want
        if not need.any():
            break
        below = np.where(lo1 > 0, np.abs(_take(sub, lo1 - 1) - centre), np.inf)
        above = np.where(hi1 < nv, np.abs(_take(sub, hi1) - centre), np.inf)
        lo1 = lo1 - (need & (below <= above))
        hi1 = hi1 + (need & (above <= below))
    lo[pixels], hi[pixels] = lo1, hi1


def _centre(runs, pixels, lo, hi, mclip, first):
    """IRAF's mclip: the median of the kept values, or their mean - without the lowest and
    highest on the first pass. Also returns the runs' stats."""
    med, k, mean, m2 = runs.stats(pixels, lo, hi)
    if mclip:
        return med, (k, mean, m2)
    if first:
        sub = runs.s if pixels is None else runs.s[pixels]
        inner = (k * mean - _take(sub, lo) - _take(sub, hi - 1)) / (k - 2)
        return np.where(k > 2, inner, mean), (k, mean, m2)
    return mean, (k, mean, m2)


def _iraf_clip(runs, lo, hi, params, spread, extra=None):
    """IRAF's clipping loop (sigclip, avsigclip, ccdclip): reject about the centre with the
    spread the method gives (`spread(centre, (k, mean, M2), extra_of_those_pixels)`), until
    nothing more goes or fewer than max(3, nkeep + 1) are left; then nkeep's add-back."""
    floor = np.maximum(3, _max_keep(runs.nv, params.nkeep) + 1)

    def step(sub, lo1, hi1, pixels, first):
        centre, st = _centre(runs, pixels, lo1, hi1, params.mclip, first)
        ex = extra if extra is None or pixels is None else extra[pixels]
        sd = spread(centre, st, ex)
        fl = floor if pixels is None else floor[pixels]
        return _clip(sub, lo1, hi1, centre - params.low * sd, centre + params.high * sd, (hi1 - lo1) >= fl)

    _iterate(runs.s, lo, hi, step, runs.s.shape[-1])
    _add_back(runs.s, lo, hi, runs.nv, params.nkeep,
              lambda v, lo1, hi1: _median_run(v, lo1, hi1) if params.mclip else _nanmean(_run_values(v, lo1, hi1)))


def _nanmean(v):
    import bottleneck as bn

    return bn.nanmean(v, axis=-1).astype(np.float64)


def _about(centre, st):
    """Sum of squared deviations of a run from `centre`, from its moments."""
    k, mean, m2 = st
    return m2 + k * (mean - centre) ** 2


def _reject_sigmaclip(runs, lo, hi, params, cols):
    """ccdproc/astropy: centre the median, spread the std (about the mean), `maxiters` passes."""
    def step(sub, lo1, hi1, pixels, first):
        med, k, _, m2 = runs.stats(pixels, lo1, hi1)
        sd = np.sqrt(m2 / k)
        return _clip(sub, lo1, hi1, med - params.low * sd, med + params.high * sd, hi1 > lo1)

    _iterate(runs.s, lo, hi, step, max(1, params.maxiters))


def _reject_sigclip(runs, lo, hi, params, cols):
    def spread(centre, st, _):  # about the centre, not the mean, with n - 1
        return np.sqrt(_about(centre, st) / np.maximum(st[0] - 1, 1))

    _iraf_clip(runs, lo, hi, params, spread)


def _reject_avsigclip(runs, lo, hi, params, cols):
    # Per image row, sigma^2 / signal averaged over every pixel with >= 3 values (IRAF), once.
    centre, st = _centre(runs, None, lo, hi, params.mclip, True)
    level = np.maximum(1.0, centre + params.sky)
    use = st[0] >= 3
    ssq = np.where(use, _about(centre, st) / level, 0.0).reshape(-1, cols).sum(axis=-1)
    count = np.where(use, st[0], 0).reshape(-1, cols).sum(axis=-1)
    row_sigma = np.where(count > 1, np.sqrt(ssq / np.maximum(count - 1, 1)), np.nan)

    def spread(centre, st, sigma):
        return sigma * np.sqrt(np.maximum(1.0, centre + params.sky))

    _iraf_clip(runs, lo, hi, params, spread, np.repeat(row_sigma, cols))


def _reject_ccdclip(runs, lo, hi, params, cols):
    def spread(centre, st, _):  # CCD noise in ADU: read noise, Poisson, flat-field error
        g = params.gain
        level = np.abs(centre + params.sky)
        return np.sqrt(params.rdnoise**2 + g * level + (params.snoise * g * level) ** 2) / g

    _iraf_clip(runs, lo, hi, params, spread)


def pclip_offset(pclip: float, n_images: int) -> int:
    """IRAF's percentile clip turns `pclip` into a number of ranks once, from the number of
    images, not each pixel's count (imcombine's t_imcombine.x, IRAF 2.17 as Debian ships it:
    i = int(N / 2); some versions take (N - 1) / 2), a fraction times i, truncated, kept within
    1..i."""
    i = int(n_images / 2)
    p = pclip * i if abs(pclip) < 1 else pclip
    return max(1, min(i, int(abs(p)))) if i >= 1 else 1


def _reject_pclip(runs, lo, hi, params, cols):
    """IRAF's percentile clip (icpclip.gx): the spread is the distance from the median to the
    value `pclip_offset` ranks away from it (below for pclip < 0); one pass, then nkeep."""
    s, k = runs.s, runs.nv.astype(np.int64)
    centre = runs.med
    offset = pclip_offset(params.pclip, s.shape[1])
    mid = (k - 1) // 2 if params.pclip < 0 else k // 2
    rank = np.clip(mid - offset if params.pclip < 0 else mid + offset, 0, np.maximum(k - 1, 0))
    sd = np.abs(centre - _take(s, rank))
    # a value exactly `low` spreads off goes too (IRAF: kept while r < lsigma); the spread is a
    # difference of two values, so integer data meet the limits exactly (0.4% of pydia's pixels)
    low, high = np.nextafter(centre - params.low * sd, np.inf), np.nextafter(centre + params.high * sd, -np.inf)
    lo[:], hi[:] = _clip(s, lo, hi, low, high, (k >= 3) & (sd > 0))
    _add_back(s, lo, hi, runs.nv, params.nkeep, _median_run)


def _settled(new, old):
    """Siril's stop for the winsorized sigma: changed by < 0.05% (np.isclose's rule, inline:
    np.isclose costs more than the pass it ends), or no longer a number."""
    with np.errstate(invalid="ignore"):
        return (np.abs(new - old) <= 1e-8 + 5e-4 * np.abs(old)) | ~np.isfinite(new)


def _winsorized_sigma(s, lo, hi, centre):
    """Siril's winsorized sigma of each pixel's run [lo, hi): values beyond centre +- 1.5
    sigma pulled in to those bounds, 1.134 x the std of the result, until it changes by
    < 0.05% (per pixel, those not yet done). Deviations from the centre in float32, summed
    by _row_sum (4x faster than bottleneck's nanstd of float64 clips, measured)."""
    keep = _keep(s, lo, hi)
    k = (hi - lo).astype(np.float64)
    dev = s - np.where(np.isfinite(centre), centre, 0).astype(np.float32)[:, None]
    dev *= keep  # values outside the run count as 0 deviations: clipped they stay 0
    t = np.empty_like(dev)

    def std(d, kk, bound):
        if bound is not None:  # in place: Siril pulls in the values it pulled in before again
            np.maximum(d, -bound[:, None], out=d)
            np.minimum(d, bound[:, None], out=d)
        s1 = _row_sum(d).astype(np.float64) / kk
        out = t[:len(d)]
        np.multiply(d, d, out=out)
        # the n - 1 standard deviation, as Siril's (GSL's gsl_stats_float_sd)
        return np.sqrt(np.maximum(_row_sum(out).astype(np.float64) / kk - s1 * s1, 0) * kk / np.maximum(kk - 1, 1))

    sd = std(dev, k, None)
    todo = np.arange(len(sd))
    cur, kk, last = dev, k, sd.copy()  # the pixels not done, compacted as they finish
    for _ in range(100):  # Siril iterates until it settles: 26 times for some pydia pixels
        new = 1.134 * std(cur, kk, (1.5 * last).astype(np.float32))
        done = _settled(new, last)
        sd[todo] = new
        going = ~done
        if not going.any():
            break
        todo, cur, kk, last = todo[going], cur[going], kk[going], new[going]
    return sd


def _reject_winsorized(runs, lo, hi, params, cols):
    """Siril's winsorized sigma clipping about the median, repeated until nothing more goes
    or 3 values are left. Siril stops rejecting within a pass once N - r <= 4 (N the values
    at the pass's start, r all those rejected so far, earlier passes' too): at most 2N - N0 - 4
    go in a pass (N0 the pixel's values). Siril takes them in frame order; here the farthest
    from the median go first."""
    n0 = runs.nv.astype(np.int64)

    def step(sub, lo1, hi1, pixels, first):
        centre = runs.stats(pixels, lo1, hi1)[0]
        sd = _winsorized_sigma(sub, lo1, hi1, centre)
        k = (hi1 - lo1).astype(np.int64)
        new_l, new_h = _clip(sub, lo1, hi1, centre - params.low * sd, centre + params.high * sd, k > 3)
        over = (new_l - lo1) + (hi1 - new_h) - np.maximum(2 * k - (n0 if pixels is None else n0[pixels]) - 4, 0)
        while (over > 0).any():  # put back the rejected values nearest the median
            m = over > 0
            below = np.where(m & (new_l > lo1), np.abs(_take(sub, np.maximum(new_l - 1, 0)) - centre), np.inf)
            above = np.where(m & (new_h < hi1), np.abs(_take(sub, np.minimum(new_h, sub.shape[-1] - 1)) - centre), np.inf)
            back_low = m & (below <= above)
            new_l, new_h, over = new_l - back_low, new_h + (m & ~back_low), over - m
        return new_l, new_h

    _iterate(runs.s, lo, hi, step, 10)
    _add_back(runs.s, lo, hi, runs.nv, params.nkeep, _median_run)


@lru_cache(maxsize=8)
def gesd_critical(n_max: int, alpha: float) -> np.ndarray:
    """Rosner's critical values: table[n, i] for n values and the i-th removal,
    lambda_i = (n - i) t / sqrt((n - i - 1 + t^2)(n - i + 1)), t = t_(p, n-i-1),
    p = 1 - alpha / (2 (n - i + 1)); +inf where undefined. The t quantiles from
    scipy.special (scipy.stats costs ~1 s to import). Cached: read-only."""
    from scipy.special import stdtrit

    n, i = np.meshgrid(np.arange(n_max + 1), np.arange(n_max + 1), indexing="ij")
    ok = (n >= 3) & (i >= 1) & (i < n - 1)
    df = np.where(ok, n - i - 1, 1).astype(np.float64)
    tv = stdtrit(df, 1 - alpha / (2 * np.where(ok, n - i + 1, 2)))
    table = np.where(ok, (n - i) * tv / np.sqrt((df + tv * tv) * np.maximum(n - i + 1, 1)), np.inf)
    table.setflags(write=False)
    return table


def _reject_gesd(runs, lo, hi, params, cols):
    """Siril's Generalized Extreme Studentized Deviate test (Rosner 1983): up to
    floor(outliers * n) times, take the value farthest from the mean of what is left,
    R_i = |x - mean| / std (n - 1); the outliers are the first m removed, m the largest i
    with R_i > lambda_i. The mean and M2 are downdated as each value goes (Welford)."""
    s, nv = runs.s, runs.nv
    crit = gesd_critical(s.shape[-1], params.gesd_alpha)
    max_out = np.floor(params.gesd_outliers * nv).astype(np.int32)
    steps, count = [], np.zeros(lo.shape, np.int32)
    cur_lo, cur_hi = lo.copy(), hi.copy()
    _, k, mean, m2 = runs.stats(None, lo, hi)
    for i in range(1, int(max_out.max(initial=0)) + 1):
        active = (max_out >= i) & (k >= 3)
        if not active.any():
            break
        x_low, x_high = _take(s, cur_lo).astype(np.float64), _take(s, cur_hi - 1).astype(np.float64)
        high = (x_high - mean) >= (mean - x_low)
        x = np.where(high, x_high, x_low)
        stat = np.abs(x - mean) / np.sqrt(m2 / (k - 1))
        count = np.where(active & (stat > crit[nv, i]), i, count)
        steps.append((active & ~high, active & high))
        cur_lo = cur_lo + steps[-1][0]
        cur_hi = cur_hi - steps[-1][1]
        k1 = np.where(active, k - 1, k)
        new_mean = np.where(active, mean - (x - mean) / np.maximum(k1, 1), mean)
        m2 = np.where(active, np.maximum(m2 - (x - mean) * (x - new_mean), 0), m2)
        k, mean = k1, new_mean
    for i, (from_low, from_high) in enumerate(steps, start=1):
        take = count >= i
        lo += take & from_low
        hi -= take & from_high
    _add_back(s, lo, hi, nv, params.nkeep, _median_run)


_REJECT = {
    "sigmaclip": _reject_sigmaclip, "sigclip": _reject_sigclip, "avsigclip": _reject_avsigclip,
    "ccdclip": _reject_ccdclip, "pclip": _reject_pclip, "winsorized": _reject_winsorized, "gesd": _reject_gesd,
}


class Cancelled(Exception):
    """Raised from a progress callback to stop a combine."""


def check_weights(weights, n: int, method: str):
    """Weights as float64 summing to 1, or None; ValueError if they cannot be used."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n,) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"weights: need {n} positive numbers, one per frame")
    if method == "median":
        raise ValueError("weights apply to the averaging methods, not to median")
    return weights / weights.sum()


def read_planes(sources, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
    """Rows [y0, y1), columns [x0, x1) of every source as (N, rows, cols) float32 planes, NaN =
    no data, each frame as (value - zero) * scale."""
    x1 = sources[0].shape[1] if x1 is None else x1
    planes = np.empty((len(sources), y1 - y0, x1 - x0), dtype=np.float32)
    for i, src in enumerate(sources):
        plane = planes[i]
        src.read_into(y0, y1, plane, x0, x1)
        if src.zero:
            plane -= np.float32(src.zero)
        if src.scale != 1.0:
            plane *= np.float32(src.scale)
    np.copyto(planes, np.float32(np.nan), where=np.isinf(planes))
    return planes


def read_block(sources, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
    """The same pixels as a (rows, cols, N) block: frames are read into contiguous planes, then
    turned once so each pixel's values are contiguous, 4x faster than writing each frame into
    a strided slot (measured)."""
    return np.ascontiguousarray(read_planes(sources, y0, y1, x0, x1).transpose(1, 2, 0))


def _average_planes(planes: np.ndarray, with_sigma: bool):
    """The plain average straight from the planes: adding whole planes needs no turn of the
    block (measured: 2.2 s -> 1.6 s for 16 frames of 4096^2). A masked value (NaN) makes its
    pixel's sum NaN, so only those pixels are redone without it (no mask of the whole block)."""
    n = len(planes)
    flat = planes.reshape(n, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = planes.sum(axis=0, dtype=np.float64)
        n_valid = np.full(total.shape, n, np.int16)
        bad = np.flatnonzero(np.isnan(total))
        if bad.size:
            vals = flat[:, bad]  # (N, pixels)
            nan = np.isnan(vals)
            vals[nan] = 0
            total.reshape(-1)[bad] = vals.sum(axis=0, dtype=np.float64)
            n_valid.reshape(-1)[bad] = n - nan.sum(axis=0)
        mean = total / n_valid
        sig = None
        if with_sigma:
            m32 = mean.astype(np.float32)
            ssq = np.zeros(planes.shape[1:], np.float64)
            d = np.empty(planes.shape[1:], np.float32)  # one buffer, no temporaries per plane
            for plane in planes:
                np.subtract(plane, m32, out=d)
                np.multiply(d, d, out=d)
                ssq += d
            if bad.size:
                dv = vals - m32.reshape(-1)[bad]
                dv[nan] = 0
                ssq.reshape(-1)[bad] = (dv * dv).sum(axis=0, dtype=np.float64)
            sig = np.sqrt(ssq / n_valid).astype(np.float32)
    return mean.astype(np.float32), n_valid, np.zeros_like(n_valid), sig


@lru_cache(maxsize=None)
def _network(n: int, ranks: tuple) -> tuple:
    """Batcher's odd-even merge sort network for n values, pruned to the comparators that
    decide the outputs at `ranks`: (i, j, kind) with kind "both" (min to i, max to j), "min"
    (only i is used later) or "max". n is padded to a power of two with +inf, whose
    comparators do nothing and are left out."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    need, ops = set(ranks), []
    for i, j in reversed(pairs):
        if i in need or j in need:
            ops.append((i, j, "both" if i in need and j in need else "min" if i in need else "max"))
            need |= {i, j}
    return tuple(reversed(ops))


NETWORK_MAX_N = 128  # above this np.sort wins (measured: equal at ~100 frames)


def select_ranks(planes: np.ndarray, ranks: tuple) -> np.ndarray:
    """The values of rank `ranks` (0 = lowest) of every pixel of (N, ...) planes, as
    (len(ranks), ...) float32, by a sorting network run on whole planes: element-wise
    min/max over pixels need no turn of the block and no per-pixel sort (median of 16 frames:
    10 ms instead of 52 ms for 8 MB, measured). A pixel with a NaN among its values comes out
    NaN (min and max carry NaN), so callers redo those few pixels with a sort.
    The planes are not changed: each chunk of pixels is copied into a cache-sized buffer."""
    n = len(planes)
    flat = planes.reshape(n, -1)
    npx = flat.shape[1]
    ops = _network(n, tuple(ranks))
    chunk = max(4096, (512 * 1024) // n)  # n x chunk float32 = 2 MB: stays in cache
    work = np.empty((n, min(chunk, npx)), np.float32)
    spare = np.empty(work.shape[1], np.float32)
    out = np.empty((len(ranks), npx), np.float32)
    for c0 in range(0, npx, chunk):
        c1 = min(npx, c0 + chunk)
        m = c1 - c0
        np.copyto(work[:, :m], flat[:, c0:c1])
        a = list(work[:, :m])
        tmp = spare[:m]
        for i, j, kind in ops:
            if kind == "both":
                np.minimum(a[i], a[j], out=tmp)
                np.maximum(a[i], a[j], out=a[j])
                a[i], tmp = tmp, a[i]
            elif kind == "min":
                np.minimum(a[i], a[j], out=a[i])
            else:
                np.maximum(a[i], a[j], out=a[j])
        for r, k in enumerate(ranks):
            out[r, c0:c1] = a[k]
    return out.reshape((len(ranks),) + planes.shape[1:])


def _general_pixels(planes: np.ndarray, bad: np.ndarray, params: CombineParams, with_sigma: bool, whole: tuple):
    """Redo the pixels `bad` (flat indices) of a planes result `whole` = (data, n_used,
    n_rejected, sigma) by reduce_block on their values alone. In place."""
    if not bad.size:
        return
    vals = np.ascontiguousarray(planes.reshape(len(planes), -1)[:, bad].T)[None]
    for out, part in zip(whole, reduce_block(vals, params, with_sigma)):
        if out is not None:
            out.reshape(-1)[bad] = part.reshape(-1)


def _median_planes(planes: np.ndarray, with_sigma: bool):
    """The median straight from the planes (select_ranks); pixels with masked values are
    sorted the usual way."""
    n = len(planes)
    if n > NETWORK_MAX_N:
        return reduce_block(np.ascontiguousarray(planes.transpose(1, 2, 0)), CombineParams("median"), with_sigma)
    lo_mid, hi_mid = select_ranks(planes, ((n - 1) // 2, n // 2))
    res = ((lo_mid.astype(np.float64) + hi_mid) / 2).astype(np.float32)
    n_valid = np.full(res.shape, n, np.int16)
    whole = (res, n_valid, np.zeros_like(n_valid), _average_planes(planes, True)[3] if with_sigma else None)
    _general_pixels(planes, np.flatnonzero(np.isnan(res)), CombineParams("median"), with_sigma, whole)
    return whole


def _minmax_planes(planes: np.ndarray, params: CombineParams, with_sigma: bool):
    """minmax straight from the planes: the kept ranks by select_ranks, averaged plane by
    plane. Pixels with masked values (the margins of shifted frames: every block has some,
    which sent whole blocks down the slow general path before) go through reduce_block alone."""
    n = len(planes)
    lo, hi = params.nlow, n - params.nhigh
    kept = select_ranks(planes, tuple(range(lo, hi)))
    bad = np.flatnonzero(np.isnan(kept[0]))  # before _average_planes zeroes the NaN
    res, _, _, sig = _average_planes(kept, with_sigma)
    n_used = np.full(res.shape, hi - lo, np.int16)
    n_rej = np.full(res.shape, n - (hi - lo), np.int16)
    _general_pixels(planes, bad, params, with_sigma, (res, n_used, n_rej, sig))
    return res, n_used, n_rej, sig


def _planes_mean(planes: np.ndarray, med: np.ndarray):
    """(mean, M2) of every pixel's values as _Runs takes them: float32 sums of the deviations
    from the median, plane by plane."""
    n = len(planes)
    c = np.where(np.isfinite(med), med, 0).astype(np.float32)
    s1 = np.zeros(c.shape, np.float32)
    s2 = np.zeros(c.shape, np.float32)
    d = np.empty(c.shape, np.float32)
    for plane in planes:
        np.subtract(plane, c, out=d)
        s1 += d
        np.multiply(d, d, out=d)
        s2 += d
    s1, s2 = s1.astype(np.float64), s2.astype(np.float64)
    return med + s1 / n, np.maximum(s2 - s1 * s1 / n, 0)


def _sigmaclip_planes(planes: np.ndarray, params: CombineParams, with_sigma: bool):
    """sigmaclip's first pass straight from the planes: the median by select_ranks, the
    moments about it plane by plane (float32 sums, as _run_sums), the limits, and whether
    the pixel's lowest or highest value (ranks the same network gives) falls outside. A pixel
    that rejects nothing is done (its next pass would be the same); the few that reject (and
    those with masked values) go through reduce_block alone. 2-3x faster than sorting every
    pixel (measured)."""
    n = len(planes)
    vmin, lo_mid, hi_mid, vmax = select_ranks(planes, (0, (n - 1) // 2, n // 2, n - 1))  # min, max: no extra cost
    med = (lo_mid.astype(np.float64) + hi_mid) / 2
    mean, m2 = _planes_mean(planes, med)
    with np.errstate(invalid="ignore"):
        sd = np.sqrt(m2 / n)
        # pulled in by 1e-5 sd: a value that near the limit is decided by the general path, whose
        # float32 sums (in another order) may put the limit a hair elsewhere
        tol = 1e-5 * sd
        # float32 values against float64 limits, as _clip compares
        out = np.isnan(med) | (vmin < med - params.low * sd + tol) | (vmax > med + params.high * sd - tol)
    return _mean_or_general(planes, mean, m2, out, params, with_sigma)


def _mean_or_general(planes: np.ndarray, mean, m2, out: np.ndarray, params: CombineParams, with_sigma: bool):
    """The planes paths' end: a pixel that rejects nothing is the mean of all its values; those
    marked `out` go the general way."""
    n = len(planes)
    res = mean.astype(np.float32)
    n_used = np.full(res.shape, n, np.int16)
    whole = (res, n_used, np.zeros_like(n_used), np.sqrt(m2 / n).astype(np.float32) if with_sigma else None)
    _general_pixels(planes, np.flatnonzero(out), params, with_sigma, whole)
    return whole


def _winsorized_planes(planes: np.ndarray, params: CombineParams, with_sigma: bool):
    """winsorized's first pass straight from the planes, as _sigmaclip_planes: the median
    and extremes by select_ranks, the winsorized sigma iterated on a cache-sized chunk of
    pixels at a time (deviations from the median clipped plane by plane, float32), and a
    pixel whose extremes stay inside the limits is done: the mean of all its values. Those
    near a limit (within 0.2% of the distance: the sigma's own convergence tolerance), the
    pixels that reject and those with masked values go through reduce_block alone. Siril's
    per-pixel loop, without sorting every pixel (measured in benchmarks/run.py)."""
    n = len(planes)
    vmin, lo_mid, hi_mid, vmax = select_ranks(planes, (0, (n - 1) // 2, n // 2, n - 1))
    med = (lo_mid.astype(np.float64) + hi_mid) / 2
    mean, m2 = _planes_mean(planes, med)
    flat = planes.reshape(n, -1)
    sd = np.sqrt(m2 / n).reshape(-1)
    c32 = np.where(np.isfinite(med), med, 0).astype(np.float32).reshape(-1)
    chunk = max(2048, (256 * 1024) // n)
    dev = np.empty((n, min(chunk, flat.shape[1])), np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        for c0 in range(0, flat.shape[1], chunk):
            c1 = min(flat.shape[1], c0 + chunk)
            d = dev[:, :c1 - c0]
            np.subtract(flat[:, c0:c1], c32[c0:c1], out=d)
            t = np.empty_like(d)
            s = sd[c0:c1]
            todo = np.isfinite(s)
            for _ in range(10):
                b = (1.5 * s).astype(np.float32)
                np.maximum(d, -b, out=t)  # np.clip with array bounds is 3x slower (measured)
                np.minimum(t, b, out=t)
                s1 = np.add.reduce(t, axis=0).astype(np.float64) / n
                np.multiply(t, t, out=t)
                new = 1.134 * np.sqrt(np.maximum(np.add.reduce(t, axis=0) / n - s1 * s1, 0))
                done = _settled(new, s)
                s[todo] = new[todo]
                todo &= ~done
                if not todo.any():
                    break
        sd = sd.reshape(med.shape)
        margin = 2e-3 * np.maximum(params.low, params.high) * sd
        out = (~np.isfinite(med) | ~(vmin >= med - params.low * sd + margin) | ~(vmax <= med + params.high * sd - margin))
    return _mean_or_general(planes, mean, m2, out, params, with_sigma)


def _gesd_planes(planes: np.ndarray, params: CombineParams, with_sigma: bool):
    """gesd straight from the planes: its test needs only the few lowest and highest values
    of each pixel (up to gesd_outliers * n from either end), which a sorting network pruned
    to those ranks gives, then the same removals and Welford downdates as _reject_gesd,
    element-wise. A pixel none of whose statistics comes within 1e-4 of its critical value
    has no outlier: the mean of all its values. The others, and pixels with masked values,
    go through reduce_block alone."""
    n = len(planes)
    m = int(np.floor(params.gesd_outliers * n))
    ends = sorted(set(range(min(m, n))) | set(range(max(0, n - m), n)) | {(n - 1) // 2, n // 2})
    vals = select_ranks(planes, tuple(ends)).reshape(len(ends), -1)
    at = {r: i for i, r in enumerate(ends)}
    med = ((vals[at[(n - 1) // 2]].astype(np.float64) + vals[at[n // 2]]) / 2).reshape(planes.shape[1:])
    mean0, m2_0 = _planes_mean(planes, med)
    crit = gesd_critical(n, params.gesd_alpha)[n]
    mean, m2 = mean0.reshape(-1).copy(), m2_0.reshape(-1).copy()
    k = float(n)
    px = np.arange(vals.shape[1])
    cur_lo = np.zeros(vals.shape[1], np.intp)
    cur_hi = np.full(vals.shape[1], n - 1, np.intp)
    index = np.full(n, -1, np.intp)
    index[ends] = np.arange(len(ends))
    out = ~np.isfinite(mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(1, m + 1):
            if k < 3:
                break
            x_low = vals[index[cur_lo], px].astype(np.float64)
            x_high = vals[index[cur_hi], px].astype(np.float64)
            high = (x_high - mean) >= (mean - x_low)
            x = np.where(high, x_high, x_low)
            stat = np.abs(x - mean) / np.sqrt(m2 / (k - 1))
            out |= stat >= crit[i] * (1 - 1e-4)
            cur_lo += ~high
            cur_hi -= high
            new_mean = mean - (x - mean) / (k - 1)
            m2 = np.maximum(m2 - (x - mean) * (x - new_mean), 0)
            k, mean = k - 1, new_mean
    res = mean0.astype(np.float32)
    n_used = np.full(res.shape, n, np.int16)
    whole = (res, n_used, np.zeros_like(n_used), np.sqrt(m2_0 / n).astype(np.float32) if with_sigma else None)
    _general_pixels(planes, np.flatnonzero(out), params, with_sigma, whole)
    return whole


def combine_rows(sources, params: CombineParams, y0: int, y1: int, maps: bool = True, weights=None,
                 cols: int | None = None):
    """Rows [y0, y1) of the combined image: (data, n_used, n_rejected, sigma). One unit of
    work, the same whichever engine runs it (this machine's threads or a Dask worker).
    `cols`: worked out that many columns at a time (block_shape), the same pixels."""
    w = sources[0].shape[1]
    if not cols or cols >= w:
        return _combine_box(sources, params, y0, y1, 0, None, maps, weights)
    parts = [_combine_box(sources, params, y0, y1, x0, min(w, x0 + cols), maps, weights) for x0 in range(0, w, cols)]
    return tuple(None if part[0] is None else np.concatenate(part, axis=1) for part in zip(*parts))


def _combine_box(sources, params: CombineParams, y0: int, y1: int, x0: int, x1: int | None, maps: bool, weights):
    def planes():
        return read_planes(sources, y0, y1, x0, x1)

    if params.method == "average" and weights is None:
        return _average_planes(planes(), maps)
    if params.method == "median":
        return _median_planes(planes(), maps)
    n = len(sources)
    if params.method == "minmax" and weights is None and 0 <= params.nlow < n - params.nhigh <= n <= NETWORK_MAX_N:
        return _minmax_planes(planes(), params, maps)
    if params.method == "sigmaclip" and weights is None and 2 <= n <= NETWORK_MAX_N:
        return _sigmaclip_planes(planes(), params, maps)
    if params.method == "winsorized" and weights is None and 2 <= n <= NETWORK_MAX_N:
        return _winsorized_planes(planes(), params, maps)
    if params.method == "gesd" and weights is None and 3 <= n <= NETWORK_MAX_N:
        return _gesd_planes(planes(), params, maps)
    return reduce_block(read_block(sources, y0, y1, x0, x1), params, with_sigma=maps, weights=weights)


def combine(
    sources: list,
    params: CombineParams,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    progress: Callable[[int, int], None] | None = None,
    block_rows: int | None = None,
    threads: int = 2,
    maps: bool = True,
    weights=None,
    sink: Callable[[int, tuple], None] | None = None,
) -> CombineResult:
    """Combine `sources` (each: shape, zero, scale, read_into) as (value - zero) * scale.

    Blocks of rows are read and reduced by `threads` threads at once (numpy's sort and
    copies release the GIL); buffers stay within `memory_limit` whatever the frame count.
    With `maps` False the per-pixel counts are not kept (n_used/n_rejected are None).
    `weights` (one per source, > 0) weight the final average of every averaging method.
    With `sink`, each block (y0, (data, n_used, n_rejected, sigma)) goes to sink in row order
    as it is done and only the maps (if asked for) are kept: the image itself is never held.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if not sources:
        raise ValueError("nothing to combine")
    h, w = sources[0].shape
    n = len(sources)
    weights = check_weights(weights, n, params.method)
    rows, cols = block_shape(sources, params.method, memory_limit, threads, weights is not None)
    rows = block_rows or rows
    out = CombineResult.empty((h, w), maps, keep_data=sink is None)
    starts = list(range(0, h, rows))

    def do_block(y0: int):
        return y0, combine_rows(sources, params, y0, min(h, y0 + rows), maps, weights, cols)

    def report(done) -> None:  # called in row order
        y0, block = done
        if sink is not None:
            sink(y0, block)
        out.put(y0, block)
        if progress is not None:
            progress(y0 + len(block[0]), h)

    try:
        if threads > 1 and len(starts) > 1:
            # At most `threads` blocks in flight: memory stays bounded and a cancel (raised by
            # the progress callback) waits for those only.
            with ThreadPoolExecutor(threads) as ex:
                inflight: deque = deque()
                try:
                    for y0 in starts:
                        inflight.append(ex.submit(do_block, y0))
                        if len(inflight) >= threads:
                            report(inflight.popleft().result())
                    while inflight:
                        report(inflight.popleft().result())
                except BaseException:
                    for f in inflight:
                        f.cancel()
                    raise
        else:
            for y0 in starts:
                report(do_block(y0))
    finally:
        for src in sources:
            src.close()
    return out
