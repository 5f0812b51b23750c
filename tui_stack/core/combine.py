"""Combine aligned frames pixel by pixel, block of rows by block of rows, honouring masks.

Frames are read as row blocks from their sources (memory-mapped FITS with the shift
applied as a slice offset, or arrays), so peak memory is bounded by `memory_limit`
whatever the number of frames. Inside a block a masked pixel is NaN, and every
reduction ignores NaN; a pixel with no data at all comes out NaN.

Methods (x = the unmasked values of one pixel, n of them, N frames in all):
- average: mean(x)
- median: median(x); the mean of the middle two for even n, as numpy and ccdproc
- minmax: mean after dropping the nlow lowest and nhigh highest values. With masked
  pixels the counts shrink in proportion, as IRAF's imcombine: int(nlow * n / N + 0.001)
- sigmaclip: reject x < c - sigma*s or x > c + sigma*s, c = median(x), s = std(x),
  `maxiters` times (1 = ccdproc's combine with sigma_clip_func=median), then mean
"""

from __future__ import annotations

from dataclasses import dataclass
import warnings
from typing import Callable, Protocol

import numpy as np

METHODS = ("average", "median", "minmax", "sigmaclip", "pclip", "winsorized", "ccdclip")
DEFAULT_MEMORY_LIMIT = 256 * 1024**2


@dataclass
class CombineParams:
    method: str = "median"
    nlow: int = 3
    nhigh: int = 3
    sigma: float = 3.0
    maxiters: int = 1
    lsigma: float | None = None  # low / high clipping limits; default: sigma
    hsigma: float | None = None
    pclip: float = -0.5  # pclip: rank offset of the sigma estimate, as a fraction of n/2
    gain: float = 1.0  # ccdclip: e-/ADU
    rdnoise: float = 0.0  # ccdclip: e-
    snoise: float = 0.0  # ccdclip: fractional "sensitivity" noise
    sky: float = 0.0  # ccdclip: sky taken out of the values (ADU), still in their noise

    @property
    def low(self) -> float:
        return self.sigma if self.lsigma is None else self.lsigma

    @property
    def high(self) -> float:
        return self.sigma if self.hsigma is None else self.hsigma

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown combine method {self.method!r}; use one of {', '.join(METHODS)}")


@dataclass
class CombineResult:
    data: np.ndarray  # float32, NaN where no frame has data
    n_used: np.ndarray | None  # int16: values that went into each pixel
    n_rejected: np.ndarray | None  # int16: values rejected by the method
    sigma: np.ndarray | None = None  # float32: std of the values that went in (IRAF's sigma image)


class Source(Protocol):
    shape: tuple[int, int]
    zero: float
    scale: float

    def read_into(self, y0: int, y1: int, out: np.ndarray) -> None: ...  # NaN = no data

    def close(self) -> None: ...


class ArraySource:
    """An in-memory frame; `mask` True = no data."""

    def __init__(self, data, mask=None, zero: float = 0.0, scale: float = 1.0):
        self.data, self.mask = data, mask
        self.shape = data.shape
        self.zero, self.scale = zero, scale

    def read_into(self, y0, y1, out):
        out[...] = self.data[y0:y1]
        if self.mask is not None:
            out[self.mask[y0:y1]] = np.nan

    def close(self):
        pass


class FileSource:
    """A FITS frame on disk placed at integer (dx, dy) on the output grid as a slice offset:
    out[y, x] = in[y - dy, x - dx], read block by block, never the whole frame.

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

            self._reader = RowReader(self.path, self.hdu_index)
        return self._reader

    def read_into(self, y0, y1, out):
        """Rows [y0, y1) of the output grid into `out` (float32), NaN where the frame has no data."""
        h, w = self.in_shape
        ow = self.shape[1]
        iy0, iy1 = max(0, y0 - self.dy), min(h, y1 - self.dy)
        ix0, ix1 = max(0, -self.dx), min(w, ow - self.dx)
        if iy1 <= iy0 or ix1 <= ix0:
            out[...] = np.nan
            return
        oy0, ox0 = iy0 + self.dy - y0, ix0 + self.dx
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


# Working copies of the block each method needs (the block itself, its sorted copy, float64
# temporaries): sets how many rows fit in the memory limit.
_COPIES = {"average": 3, "median": 4, "minmax": 5, "sigmaclip": 6}


def rows_per_block(n_frames: int, width: int, memory_limit: int, method: str = "minmax", threads: int = 2) -> int:
    per_row = max(1, n_frames * width * 4 * _COPIES.get(method, 5) * threads)
    return max(1, int(memory_limit // per_row))


def reduce_block(block: np.ndarray, params: CombineParams, with_sigma: bool = False):
    """Combine a (rows, cols, N) float32 block, NaN = masked, along its last (contiguous) axis.

    Sorting the N values of each pixel (NaN last) gives median and min/max rejection at
    once; numpy's sort on a short contiguous axis is faster than bottleneck's median and
    releases the GIL, so two threads use both cores (measured in benchmarks/run.py).
    Returns (result float32, n_used int16, n_rejected int16, sigma float32 or None): sigma is
    the standard deviation of the values that went in, as IRAF's sigma image.
    """
    import bottleneck as bn

    n = block.shape[-1]
    nan = np.isnan(block)
    any_nan = bool(nan.any())
    n_valid = (n - nan.sum(axis=-1)).astype(np.int16) if any_nan else np.full(block.shape[:-1], n, np.int16)
    method = params.method
    zeros = np.zeros_like(n_valid)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "average":
            if any_nan:
                res = np.where(nan, 0, block).sum(axis=-1, dtype=np.float64) / n_valid
            else:
                res = block.mean(axis=-1, dtype=np.float64)
            sig = bn.nanstd(block, axis=-1) if with_sigma else None
            return res.astype(np.float32), n_valid, zeros, sig
        s = np.sort(block, axis=-1)
        if method == "median":
            sig = bn.nanstd(block, axis=-1) if with_sigma else None
            return _median_sorted(s, n_valid, any_nan), n_valid, zeros, sig
        if method == "minmax":
            return _minmax_sorted(s, n_valid, any_nan, params.nlow, params.nhigh, with_sigma)
        if method == "sigmaclip":
            return _sigmaclip_sorted(s, n_valid, params.low, params.high, params.maxiters, with_sigma)
        if method == "pclip":
            return _pclip_sorted(s, n_valid, params.low, params.high, params.pclip, with_sigma)
        if method == "winsorized":
            return _clip_iterate(s, n_valid, _winsorized_spread, params.low, params.high, 10, with_sigma)
        if method == "ccdclip":
            def model(w, centre):  # CCD noise: read noise, Poisson, flat-field error, in ADU
                g = params.gain
                level = np.abs(centre + params.sky)
                return np.sqrt(params.rdnoise**2 + g * level + (params.snoise * g * level) ** 2) / g

            return _clip_iterate(s, n_valid, model, params.low, params.high, max(1, params.maxiters), with_sigma)
    raise ValueError(method)


def _median_sorted(s, n_valid, any_nan):
    n = s.shape[-1]
    if not any_nan:
        return ((s[..., (n - 1) // 2].astype(np.float64) + s[..., n // 2]) / 2).astype(np.float32)
    k = n_valid.astype(np.int64)
    lo = np.take_along_axis(s, np.maximum(k - 1, 0)[..., None] // 2, -1)[..., 0]
    hi = np.take_along_axis(s, (k // 2)[..., None], -1)[..., 0]
    res = (lo.astype(np.float64) + hi) / 2
    return np.where(k > 0, res, np.nan).astype(np.float32)


def _minmax_sorted(s, n_valid, any_nan, nlow, nhigh, with_sigma=False):
    import bottleneck as bn

    n = s.shape[-1]
    if not any_nan:
        kept = s[..., nlow : max(nlow, n - nhigh)]
        n_used = np.full(n_valid.shape, kept.shape[-1], np.int16)
        res = kept.mean(axis=-1, dtype=np.float64) if kept.shape[-1] else np.full(n_valid.shape, np.nan)
        sig = kept.std(axis=-1, dtype=np.float64).astype(np.float32) if with_sigma and kept.shape[-1] else None
        return res.astype(np.float32), n_used, (n_valid - n_used).astype(np.int16), sig
    # With masked values the counts shrink in proportion (IRAF imcombine).
    nl = np.floor(nlow * n_valid / n + 0.001).astype(np.int64)
    nh = np.floor(nhigh * n_valid / n + 0.001).astype(np.int64)
    hi = np.maximum(n_valid - nh, nl)
    idx = np.arange(n)
    keep = (idx >= nl[..., None]) & (idx < hi[..., None])
    n_used = (hi - nl).astype(np.int16)
    total = np.where(keep, s, 0).sum(axis=-1, dtype=np.float64)
    res = np.where(n_used > 0, total / np.maximum(n_used, 1), np.nan)
    sig = bn.nanstd(np.where(keep, s, np.float32(np.nan)), axis=-1) if with_sigma else None
    return res.astype(np.float32), n_used, (n_valid - n_used).astype(np.int16), sig


def _sigmaclip_sorted(s, n_valid, lsigma, hsigma, maxiters, with_sigma=False):
    import bottleneck as bn

    w = s  # sorted, NaN last
    cur = n_valid
    for _ in range(max(1, maxiters)):
        centre = _median_sorted(w, cur, True)
        std = bn.nanstd(w, axis=-1)
        reject = (w < (centre - lsigma * std)[..., None]) | (w > (centre + hsigma * std)[..., None])
        if not reject.any():
            break
        w = np.where(reject, np.float32(np.nan), w)
        w.sort(axis=-1)  # NaN last again, for the next median
        cur = (~np.isnan(w)).sum(axis=-1).astype(np.int16)
    n_used = (~np.isnan(w)).sum(axis=-1).astype(np.int16)
    res = bn.nanmean(w, axis=-1)
    sig = bn.nanstd(w, axis=-1) if with_sigma else None
    return np.where(n_used > 0, res, np.nan).astype(np.float32), n_used, (n_valid - n_used).astype(np.int16), sig


def _finish(w, n_valid, with_sigma):
    import bottleneck as bn

    n_used = (~np.isnan(w)).sum(axis=-1).astype(np.int16)
    res = np.where(n_used > 0, bn.nanmean(w, axis=-1), np.nan).astype(np.float32)
    sig = bn.nanstd(w, axis=-1) if with_sigma else None
    return res, n_used, (n_valid - n_used).astype(np.int16), sig


def _clip_iterate(s, n_valid, spread, low, high, maxiters, with_sigma):
    """Reject x < m - low*spread or x > m + high*spread about the median m, repeating until
    nothing more is rejected (at most maxiters times), then average what is left."""
    w = s
    cur = n_valid
    for _ in range(max(1, maxiters)):
        centre = _median_sorted(w, cur, True)
        sd = spread(w, centre)
        reject = (w < (centre - low * sd)[..., None]) | (w > (centre + high * sd)[..., None])
        if not reject.any():
            break
        w = np.where(reject, np.float32(np.nan), w)
        w.sort(axis=-1)
        cur = (~np.isnan(w)).sum(axis=-1).astype(np.int16)
    return _finish(w, n_valid, with_sigma)


def _winsorized_spread(w, centre):
    """Siril's winsorized sigma: values beyond median +- 1.5 sigma are pulled in to those bounds,
    and 1.134 x the std of the result is the spread (robust to the outliers it must reject)."""
    import bottleneck as bn

    sd = bn.nanstd(w, axis=-1)
    for _ in range(10):
        lo, hi = (centre - 1.5 * sd)[..., None], (centre + 1.5 * sd)[..., None]
        new = 1.134 * bn.nanstd(np.clip(w, lo, hi), axis=-1)
        if np.allclose(new, sd, rtol=5e-4, equal_nan=True):
            return new
        sd = new
    return sd


def _pclip_sorted(s, n_valid, low, high, pclip, with_sigma):
    """IRAF's percentile clip: the spread is the distance from the median to the value
    nint(pclip * n / 2) ranks away from it (below for pclip < 0); one pass, then average."""
    k = n_valid.astype(np.int64)
    centre = _median_sorted(s, n_valid, True)
    offset = np.rint(abs(pclip) * k / 2).astype(np.int64)
    mid = (k - 1) // 2 if pclip < 0 else k // 2
    rank = np.clip(mid - offset if pclip < 0 else mid + offset, 0, np.maximum(k - 1, 0))
    other = np.take_along_axis(s, rank[..., None], -1)[..., 0]
    sd = np.abs(centre - other)
    reject = (s < (centre - low * sd)[..., None]) | (s > (centre + high * sd)[..., None])
    return _finish(np.where(reject, np.float32(np.nan), s), n_valid, with_sigma)


class Cancelled(Exception):
    """Raised from a progress callback to stop a combine."""


def combine(
    sources: list,
    params: CombineParams,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    progress: Callable[[int, int], None] | None = None,
    block_rows: int | None = None,
    threads: int = 2,
    maps: bool = True,
) -> CombineResult:
    """Combine `sources` (each: shape, zero, scale, read_into) as (value - zero) * scale.

    Blocks of rows are read and reduced by `threads` threads at once (numpy's sort and
    copies release the GIL); buffers stay within `memory_limit` whatever the frame count.
    With `maps` False the per-pixel counts are not kept (n_used/n_rejected are None).
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    if not sources:
        raise ValueError("nothing to combine")
    h, w = sources[0].shape
    n = len(sources)
    rows = block_rows or rows_per_block(n, w, memory_limit, params.method, threads)
    out = np.empty((h, w), dtype=np.float32)
    n_used = np.empty((h, w), dtype=np.int16) if maps else None
    n_rej = np.empty((h, w), dtype=np.int16) if maps else None
    sigma = np.empty((h, w), dtype=np.float32) if maps else None
    starts = list(range(0, h, rows))

    def do_block(y0: int) -> int:
        y1 = min(h, y0 + rows)
        # Frames are read into contiguous planes, then turned once so each pixel's values
        # are contiguous: 4x faster than writing each frame into a strided slot (measured).
        planes = np.empty((n, y1 - y0, w), dtype=np.float32)
        for i, src in enumerate(sources):
            plane = planes[i]
            src.read_into(y0, y1, plane)
            if src.zero:
                plane -= np.float32(src.zero)
            if src.scale != 1.0:
                plane *= np.float32(src.scale)
        np.copyto(planes, np.float32(np.nan), where=np.isinf(planes))
        block = np.ascontiguousarray(planes.transpose(1, 2, 0))
        del planes
        res, used, rej, sig = reduce_block(block, params, with_sigma=maps)
        out[y0:y1] = res
        if maps:
            n_used[y0:y1], n_rej[y0:y1], sigma[y0:y1] = used, rej, sig
        return y1

    def report(y1: int) -> None:
        if progress is not None:
            progress(y1, h)

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
    return CombineResult(out, n_used, n_rej, sigma)
