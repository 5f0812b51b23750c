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
from typing import Callable, Protocol

import numpy as np

METHODS = ("average", "median", "minmax", "sigmaclip")
DEFAULT_MEMORY_LIMIT = 256 * 1024**2


@dataclass
class CombineParams:
    method: str = "median"
    nlow: int = 3
    nhigh: int = 3
    sigma: float = 3.0
    maxiters: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown combine method {self.method!r}; use one of {', '.join(METHODS)}")


@dataclass
class CombineResult:
    data: np.ndarray  # float32, NaN where no frame has data
    n_used: np.ndarray  # int16: values that went into each pixel
    n_rejected: np.ndarray  # int16: values rejected by the method


class Source(Protocol):
    shape: tuple[int, int]
    zero: float
    scale: float

    def read_rows(self, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray | None]: ...

    def close(self) -> None: ...


class ArraySource:
    """An in-memory frame; `mask` True = no data."""

    def __init__(self, data, mask=None, zero: float = 0.0, scale: float = 1.0):
        self.data, self.mask = data, mask
        self.shape = data.shape
        self.zero, self.scale = zero, scale

    def read_rows(self, y0, y1):
        return self.data[y0:y1], None if self.mask is None else self.mask[y0:y1]

    def close(self):
        pass


class FileSource:
    """A FITS frame on disk placed at integer (dx, dy) on the output grid as a slice offset:
    out[y, x] = in[y - dy, x - dx], read block by block, never the whole frame.

    `out_shape` defaults to the frame's own shape (a shift); a larger one holds IRAF-style offsets.
    """

    def __init__(self, path, hdu_index: int, shape, dx: int = 0, dy: int = 0, zero: float = 0.0,
                 scale: float = 1.0, out_shape=None):
        self.path, self.hdu_index, self.in_shape = path, hdu_index, tuple(shape)
        self.shape = tuple(out_shape) if out_shape is not None else self.in_shape
        self.dx, self.dy = int(dx), int(dy)
        self.zero, self.scale = zero, scale
        self._reader = None

    def read_rows(self, y0, y1):
        h, w = self.in_shape
        ow = self.shape[1]
        out = np.zeros((y1 - y0, ow), dtype=np.float32)
        mask = np.ones((y1 - y0, ow), dtype=bool)
        iy0, iy1 = max(0, y0 - self.dy), min(h, y1 - self.dy)
        ix0, ix1 = max(0, -self.dx), min(w, ow - self.dx)
        if iy1 > iy0 and ix1 > ix0:
            if self._reader is None:
                from tui_stack.core.io import RowReader

                self._reader = RowReader(self.path, self.hdu_index)
            rows = self._reader.rows(iy0, iy1, ix0, ix1)
            oy0, ox0 = iy0 + self.dy - y0, ix0 + self.dx
            out[oy0 : oy0 + rows.shape[0], ox0 : ox0 + rows.shape[1]] = rows
            mask[oy0 : oy0 + rows.shape[0], ox0 : ox0 + rows.shape[1]] = ~np.isfinite(rows)
        return out, mask

    def close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def rows_per_block(n_frames: int, width: int, memory_limit: int) -> int:
    # The stack (float32), a sorted copy and a few per-pixel temporaries: ~3 copies.
    per_row = max(1, n_frames * width * 4 * 3)
    return max(1, int(memory_limit // per_row))


def reduce_stack(stack: np.ndarray, params: CombineParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine a (N, rows, cols) float32 stack with NaN = masked. Returns (result, n_used, n_rejected)."""
    import bottleneck as bn

    valid = ~np.isnan(stack)
    n_valid = valid.sum(axis=0, dtype=np.int16)
    method = params.method
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "average":
            return bn.nanmean(stack, axis=0).astype(np.float32), n_valid, np.zeros_like(n_valid)
        if method == "median":
            return bn.nanmedian(stack, axis=0).astype(np.float32), n_valid, np.zeros_like(n_valid)
        if method == "minmax":
            return _minmax(stack, n_valid, params.nlow, params.nhigh)
        if method == "sigmaclip":
            return _sigmaclip(stack, n_valid, params.sigma, params.sigma, params.maxiters)
    raise ValueError(method)


def _minmax(stack, n_valid, nlow: int, nhigh: int):
    n_total = stack.shape[0]
    s = np.sort(stack, axis=0)  # NaN sorts last
    nl = np.floor(nlow * n_valid / n_total + 0.001).astype(np.int64)
    nh = np.floor(nhigh * n_valid / n_total + 0.001).astype(np.int64)
    cs = np.cumsum(np.nan_to_num(s, nan=0.0), axis=0, dtype=np.float64)
    cs = np.concatenate([np.zeros((1,) + cs.shape[1:]), cs], axis=0)
    hi = np.maximum(n_valid - nh, nl)
    total = np.take_along_axis(cs, hi[None], 0)[0] - np.take_along_axis(cs, nl[None], 0)[0]
    n_used = (hi - nl).astype(np.int16)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(n_used > 0, total / n_used, np.nan).astype(np.float32)
    return result, n_used, (n_valid - n_used).astype(np.int16)


def _sigmaclip(stack, n_valid, lsigma: float, hsigma: float, maxiters: int):
    import bottleneck as bn

    work = stack.copy()
    for _ in range(max(1, maxiters)):
        centre = bn.nanmedian(work, axis=0)
        std = bn.nanstd(work, axis=0)
        with np.errstate(invalid="ignore"):
            reject = (work < centre - lsigma * std) | (work > centre + hsigma * std)
        if not reject.any():
            break
        work[reject] = np.nan
    n_used = (~np.isnan(work)).sum(axis=0, dtype=np.int16)
    return bn.nanmean(work, axis=0).astype(np.float32), n_used, (n_valid - n_used).astype(np.int16)


class Cancelled(Exception):
    """Raised from a progress callback to stop a combine."""


def combine(
    sources: list,
    params: CombineParams,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    progress: Callable[[int, int], None] | None = None,
    block_rows: int | None = None,
) -> CombineResult:
    """Combine `sources` (each: shape, zero, scale, read_rows) as (value - zero) * scale."""
    if not sources:
        raise ValueError("nothing to combine")
    h, w = sources[0].shape
    n = len(sources)
    rows = block_rows or rows_per_block(n, w, memory_limit)
    out = np.empty((h, w), dtype=np.float32)
    n_used = np.empty((h, w), dtype=np.int16)
    n_rej = np.empty((h, w), dtype=np.int16)
    stack = np.empty((n, min(rows, h), w), dtype=np.float32)
    try:
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            block = stack[:, : y1 - y0]
            for i, src in enumerate(sources):
                data, mask = src.read_rows(y0, y1)
                np.subtract(data, np.float32(src.zero), out=block[i], dtype=np.float32)
                if src.scale != 1.0:
                    block[i] *= np.float32(src.scale)
                if mask is not None:
                    block[i][mask] = np.nan
            block[~np.isfinite(block)] = np.nan
            out[y0:y1], n_used[y0:y1], n_rej[y0:y1] = reduce_stack(block, params)
            if progress is not None:
                progress(y1, h)
    finally:
        for src in sources:
            src.close()
    return CombineResult(out, n_used, n_rej)
