"""Calibration of raw CCD frames before alignment: overscan, bias, dark and flat.

As ccdproc's reduction guide does it, frame by frame:
- overscan: the median (or mean) of each row's overscan pixels taken off that row (or of each
  column's, for an overscan of rows), optionally a polynomial fitted to those values
  (ccdproc.subtract_overscan); then trimmed to the data section (ccdproc.trim_image). The
  sections come from the config (FITS "[x1:x2,y1:y2]", 1-based, inclusive) or from header
  keywords (BIASSEC, TRIMSEC);
- bias: master bias = combine of the overscan-corrected biases, taken off every other frame;
- dark: master dark = combine of the bias-subtracted darks (darks of other exposure times are
  scaled to the longest first), taken off scaled by exposure time (ccdproc.subtract_dark with
  scale=True). Without a bias the dark still holds the bias, so it cannot be scaled: its
  exposure must equal the frames';
- flat: per FILTER, each flat bias- and dark-corrected, scaled by 1/its median and combined,
  the master normalised by its median; frames are divided by it (ccdproc.flat_correct).
Masters are made by the streaming combine engine (core.combine), reading calibrated row blocks
(CalibratedReader), so memory stays within its limit whatever the number of frames.

Hot pixels (the master dark above its median by `hot_sigma` robust sigmas), dead pixels (the
master flat under `dead_below` of its local level, or not positive) and, optionally, cosmic rays in
each light (astroscrappy's L.A.Cosmic) are masked: NaN, no data, never filled.
"""

from __future__ import annotations

import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from tui_stack.core import combine, io
from tui_stack.errors import InputError

Progress = Callable[[str, int, int], None]

KINDS = ("bias", "dark", "flat")
# ccdproc's reduction guide: average with 5-sigma clipping about the median (it uses mad_std
# for the spread; our engine's sigmaclip uses the std)
DEFAULT_PARAMS = combine.CombineParams("sigmaclip", sigma=5.0, maxiters=1)
MAX_DARK_SCALE = 2.0  # lights longer than this many times the dark: its noise and hot pixels grow too much
FLAT_ZERO_FRACTION = 1e-3  # a raw flat with more pixels exactly 0 is blank or clipped
MEDIAN_SAMPLE_PIXELS = 4_000_000  # flats larger than this get their median from a sample of rows


def _noop(stage, done, total):
    pass


# ---------------------------------------------------------------- headers


def classify(header) -> str:
    """'bias', 'dark', 'flat', 'light' or '' from IMAGETYP (or OBSTYPE), as cameras write it:
    'Bias Frame', 'zero', 'Dark Frame', 'Flat Field', 'skyflat', 'Light Frame', 'object', ..."""
    for key in ("IMAGETYP", "OBSTYPE", "FRAMETYP", "FRAME"):
        value = str(header.get(key, "")).strip().lower()
        if not value:
            continue
        if "bias" in value or value.startswith("zero"):
            return "bias"
        if "dark" in value:
            return "dark"
        if "flat" in value:
            return "flat"
        if any(w in value for w in ("light", "object", "science", "sky")):
            return "light"
    return ""


def exposure_of(header, path: Path, key: str = "EXPTIME") -> float:
    for k in (key, "EXPOSURE"):
        v = header.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0:
            return float(v)
    raise InputError(f"{Path(path).name}: no exposure time ({key}) in the header")


def filter_of(header) -> str:
    return str(header.get("FILTER", header.get("FILTERS", header.get("FILTNAME", "")))).strip()


def binning_of(header) -> tuple[int, int]:
    """(x, y) binning from XBINNING/YBINNING, CCDXBIN/CCDYBIN, CCDSUM ('2 2') or BINNING ('2x2')."""
    for kx, ky in (("XBINNING", "YBINNING"), ("CCDXBIN", "CCDYBIN")):
        if kx in header:
            try:
                return int(header[kx]), int(header.get(ky, header[kx]))
            except (TypeError, ValueError):
                pass
    for k in ("CCDSUM", "BINNING"):
        if k in header:
            parts = re.findall(r"\d+", str(header[k]))
            if parts:
                return int(parts[0]), int(parts[-1])
    return 1, 1


@dataclass
class RawInfo:
    """What calibration needs from one frame's header."""

    path: Path
    hdu_index: int
    shape: tuple[int, int]  # raw, before trimming
    exptime: float | None
    filter: str
    binning: tuple[int, int]
    kind: str
    header: object = field(repr=False, default=None)
    gain: float | None = None
    rdnoise: float | None = None


def read_info(path: Path, exposure_key: str = "EXPTIME") -> RawInfo:
    path = Path(path)
    hdul = io.open_fits(path)
    try:
        idx = io._image_hdu_index(hdul, path)
        shape = io.image_shape(hdul[idx])
        hdr = hdul[idx].header.copy()
        if idx > 0:  # keywords written in the primary header count too
            for card in hdul[0].header.cards:
                if card.keyword and card.keyword not in hdr and card.keyword not in ("COMMENT", "HISTORY"):
                    hdr[card.keyword] = card.value
    finally:
        hdul.close()
    try:
        exptime = exposure_of(hdr, path, exposure_key)
    except InputError:
        exptime = None
    num = lambda k: float(hdr[k]) if isinstance(hdr.get(k), (int, float)) else None  # noqa: E731
    return RawInfo(path, idx, shape, exptime, filter_of(hdr), binning_of(hdr), classify(hdr), hdr,
                   num("GAIN"), num("RDNOISE"))


# ---------------------------------------------------------------- overscan and trim


@dataclass(frozen=True)
class Section:
    """Python slice bounds [y0:y1, x0:x1] of a FITS section."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def fits(self) -> str:
        return f"[{self.x0 + 1}:{self.x1},{self.y0 + 1}:{self.y1}]"


def parse_section(text: str, shape: tuple[int, int], what: str = "section") -> Section:
    """'[x1:x2,y1:y2]' (FITS: 1-based, inclusive, x first; '*' = the whole axis) as slice bounds.
    A reversed range (x2 < x1) is read in increasing order."""
    m = re.fullmatch(r"\s*\[\s*([^,\]]+)\s*,\s*([^,\]]+)\s*\]\s*", str(text))
    if not m:
        raise InputError(f"{what} {text!r}: not a FITS section like [1:2048,1:4096]")
    bounds = []
    for part, n in zip(m.groups(), (shape[1], shape[0])):
        part = part.strip()
        if part == "*":
            bounds.append((0, n))
            continue
        r = re.fullmatch(r"(\d+)\s*:\s*(\d+)", part)
        if not r:
            raise InputError(f"{what} {text!r}: {part!r} is not a range like 1:2048")
        a, b = sorted((int(r.group(1)), int(r.group(2))))
        if a < 1 or b > n:
            raise InputError(f"{what} {text!r}: {a}:{b} is outside the frame's 1:{n}")
        bounds.append((a - 1, b))
    (x0, x1), (y0, y1) = bounds
    return Section(y0, y1, x0, x1)


@dataclass(frozen=True)
class Geometry:
    """Where a raw frame's overscan and data are. axis 1: the overscan is columns, one value per
    row (ccdproc's overscan_axis=1); axis 0: rows, one value per column."""

    overscan: Section | None = None
    trim: Section | None = None
    axis: int = 1
    stat: str = "median"  # per line of overscan: "median" | "mean"
    order: int | None = None  # polynomial fitted along the overscan; None: each line's own value

    def out_shape(self, raw_shape) -> tuple[int, int]:
        return self.trim.shape if self.trim is not None else tuple(raw_shape)

    def describe(self) -> dict:
        return {"overscan": self.overscan.fits() if self.overscan else None,
                "trim": self.trim.fits() if self.trim else None,
                "overscan_axis": self.axis if self.overscan else None,
                "overscan_stat": self.stat if self.overscan else None,
                "overscan_order": self.order if self.overscan else None}


def resolve_geometry(info: RawInfo, overscan: str | None, trim: str | None, stat: str = "median",
                     order: int | None = None) -> Geometry:
    """The frame's Geometry from the config: a section, or the name of the header keyword holding
    it (BIASSEC, TRIMSEC), or None. An overscan without a trim keeps the side of the frame
    beyond the overscan."""

    def section(value, what):
        if not value:
            return None
        if not str(value).lstrip().startswith("["):
            key = str(value).strip().upper()
            if key not in info.header:
                raise InputError(f"{info.path.name}: no {key} keyword in the header ([calibrate] {what})")
            return parse_section(info.header[key], info.shape, f"{info.path.name}: {key}")
        return parse_section(value, info.shape, f"[calibrate] {what}")

    os_sec, tr_sec = section(overscan, "overscan"), section(trim, "trim")
    if os_sec is None:
        return Geometry(None, tr_sec)
    h, w = info.shape
    axis = 1 if os_sec.shape[0] == h or os_sec.shape[1] < os_sec.shape[0] else 0
    if tr_sec is None:
        if axis == 1:
            tr_sec = Section(0, h, 0, os_sec.x0) if os_sec.x0 >= w - os_sec.x1 else Section(0, h, os_sec.x1, w)
        else:
            tr_sec = Section(0, os_sec.y0, 0, w) if os_sec.y0 >= h - os_sec.y1 else Section(os_sec.y1, h, 0, w)
    if 0 in tr_sec.shape:
        raise InputError(f"{info.path.name}: the data section {tr_sec.fits()} is empty")
    if os_sec.x0 < tr_sec.x1 and tr_sec.x0 < os_sec.x1 and os_sec.y0 < tr_sec.y1 and tr_sec.y0 < os_sec.y1:
        # the sky and stars would be taken off as bias level
        raise InputError(f"{info.path.name}: the overscan {os_sec.fits()} overlaps the data section {tr_sec.fits()} "
                         "([calibrate] overscan and trim): the overscan must be the unexposed strip beside it")
    return Geometry(os_sec, tr_sec, axis, stat, order)


def overscan_line_values(raw: np.ndarray, geo: Geometry) -> np.ndarray:
    """One value per row (axis 1) or column (axis 0) of `raw`'s overscan pixels."""
    s = geo.overscan
    if geo.axis == 1:
        region = raw[:, s.x0:s.x1]
    else:
        region = raw[s.y0:s.y1, :]
    return (np.median if geo.stat == "median" else np.mean)(region, axis=geo.axis).astype(np.float32)


def fit_overscan(values: np.ndarray, order: int) -> np.ndarray:
    """A polynomial of `order` through the line values (as ccdproc's model=Polynomial1D)."""
    x = np.arange(values.size, dtype=np.float64)
    return np.polynomial.polynomial.polyval(x, np.polynomial.polynomial.polyfit(x, values.astype(np.float64), order)
                                            ).astype(np.float32)


# ---------------------------------------------------------------- corrections


@dataclass
class Correction:
    """What is taken off and divided out of one frame, on the trimmed grid:
    out = (raw - offset - dark_scale * dark) / flat, NaN where masked. The arrays are the
    masters' own (no copies), or for a run one merged offset and a flat with the mask as NaN."""

    offset: np.ndarray | None = None  # the master bias (or bias + scaled dark, merged)
    flat: np.ndarray | None = None  # normalised master flat
    mask: np.ndarray | None = None  # True = masked
    dark: np.ndarray | None = None  # the master dark, taken off times dark_scale
    dark_scale: float = 0.0

    def apply(self, rows: np.ndarray, y0: int, x0: int = 0) -> None:
        """In place on rows [y0, y0 + len) and columns [x0, x0 + width) of the trimmed frame."""
        y1, x1 = y0 + rows.shape[0], x0 + rows.shape[1]
        if self.offset is not None:
            rows -= self.offset[y0:y1, x0:x1]
        if self.dark is not None and self.dark_scale:
            rows -= self.dark[y0:y1, x0:x1] * np.float32(self.dark_scale)
        if self.flat is not None:
            rows /= self.flat[y0:y1, x0:x1]
        if self.mask is not None:
            rows[self.mask[y0:y1, x0:x1]] = np.nan


def mask_rows(rows: np.ndarray, indices: np.ndarray | None, width: int, y0: int, x0: int = 0) -> None:
    """NaN at `indices` (sorted flat indices into a frame `width` wide) inside the block."""
    if indices is None or not indices.size:
        return
    a, b = np.searchsorted(indices, [y0 * width, (y0 + rows.shape[0]) * width])
    if a == b:
        return
    r, c = np.divmod(indices[a:b], width)
    c = c - x0
    keep = (c >= 0) & (c < rows.shape[1])
    rows[r[keep] - y0, c[keep]] = np.nan


class CalibratedReader:
    """io.RowReader's interface (shape, rows, rows_into, close) over a raw frame overscan-corrected,
    trimmed and calibrated: combine sources read calibrated row blocks straight from the raw
    file, no calibrated copy on disk."""

    def __init__(self, path: Path, hdu_index: int, raw_shape, geometry: Geometry, correction: Correction | None,
                 masked: Callable[[], np.ndarray | None] | None = None):
        self.path, self.hdu_index, self.geometry, self.correction = Path(path), hdu_index, geometry, correction
        self.raw_shape = tuple(raw_shape)
        self.shape = geometry.out_shape(raw_shape)
        self._masked = masked  # sorted flat indices of masked pixels (cosmic rays), made on demand
        self._reader = io.RowReader(self.path, hdu_index)
        if self._reader.shape != self.raw_shape:
            raise InputError(f"{self.path.name}: shape changed while reading")
        self._lines = None  # per-column overscan values (axis 0) or fitted per-row values
        self._lock = threading.Lock()

    def _line_values(self) -> np.ndarray:
        with self._lock:
            if self._lines is None:
                geo = self.geometry
                if geo.axis == 0:
                    vals = overscan_line_values(self._reader.rows(geo.overscan.y0, geo.overscan.y1), geo)
                else:  # a fit needs every row's value first
                    h = self.raw_shape[0]
                    vals = np.concatenate([overscan_line_values(self._reader.rows(a, min(h, a + 256)), geo)
                                           for a in range(0, h, 256)])
                self._lines = fit_overscan(vals, geo.order) if geo.order is not None else vals
            return self._lines

    def rows_into(self, y0: int, y1: int, x0: int, x1: int, out: np.ndarray) -> None:
        geo = self.geometry
        ty0, tx0 = (geo.trim.y0, geo.trim.x0) if geo.trim is not None else (0, 0)
        if geo.overscan is None:
            self._reader.rows_into(ty0 + y0, ty0 + y1, tx0 + x0, tx0 + x1, out)
        else:
            raw = self._reader.rows(ty0 + y0, ty0 + y1)
            if geo.axis == 1:
                vals = (self._line_values()[ty0 + y0:ty0 + y1] if geo.order is not None
                        else overscan_line_values(raw, geo))
                np.subtract(raw[:, tx0 + x0:tx0 + x1], vals[:, None], out=out)
            else:
                np.subtract(raw[:, tx0 + x0:tx0 + x1], self._line_values()[None, tx0 + x0:tx0 + x1], out=out)
        if self.correction is not None:
            self.correction.apply(out, y0, x0)
        if self._masked is not None:
            mask_rows(out, self._masked(), self.shape[1], y0, x0)

    def rows(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        x1 = self.shape[1] if x1 is None else x1
        out = np.empty((y1 - y0, x1 - x0), np.float32)
        self.rows_into(y0, y1, x0, x1, out)
        return out

    def close(self) -> None:
        self._reader.close()


class CalibratedSource(combine.FileSource):
    """combine.FileSource (shift as a slice offset, meridian flip) reading calibrated rows."""

    def __init__(self, make_reader: Callable[[], CalibratedReader], shape, *args, **kw):
        super().__init__(None, 0, shape, *args, **kw)
        self._make_reader = make_reader

    def _reader_(self):
        if self._reader is None:
            self._reader = self._make_reader()
        return self._reader


def calibrate_array(raw: np.ndarray, geo: Geometry, correction: Correction | None, inplace: bool = False) -> np.ndarray:
    """The whole frame at once (for registration): overscan, trim, correction. NaN = masked.
    With `inplace` a float32 `raw` is worked on (and returned when nothing is trimmed): no
    second 64 MB frame per 4k frame in flight."""
    if geo.overscan is not None:
        vals = overscan_line_values(raw, geo)
        if geo.order is not None:
            vals = fit_overscan(vals, geo.order)
        vals = vals[:, None] if geo.axis == 1 else vals[None, :]
        if inplace and raw.dtype == np.float32:
            raw -= vals
        else:
            raw = raw - vals
            inplace = True
    if geo.trim is not None:
        t = geo.trim
        raw = raw[t.y0:t.y1, t.x0:t.x1]
    if inplace and raw.dtype == np.float32:
        out = np.ascontiguousarray(raw)
    else:
        out = np.array(raw, dtype=np.float32, copy=True)
    if correction is not None:
        correction.apply(out, 0, 0)
    return out


# ---------------------------------------------------------------- masters


@dataclass
class Master:
    kind: str  # "bias" | "dark" | "flat"
    data: np.ndarray  # float32 on the trimmed grid; the flat normalised to median 1
    files: list[Path]
    params: combine.CombineParams
    exptime: float | None = None  # dark: the exposure it stands for
    filter: str = ""
    level: float = float("nan")  # median (a flat: before normalising)
    noise: float = float("nan")  # robust std (1.4826 MAD) of the master
    mask: np.ndarray | None = None  # hot (dark) or dead (flat) pixels; True = masked
    bias_subtracted: bool = False  # dark: the bias taken off before combining
    dark_subtracted: bool = False  # flat
    scales: list[float] = field(default_factory=list)  # flat: 1/median of each frame

    _summary: dict | None = field(default=None, repr=False)

    @property
    def n_masked(self) -> int:
        if self._summary is not None:
            return self._summary.get("hot_pixels", self._summary.get("dead_pixels", 0))
        return 0 if self.mask is None else int(self.mask.sum())

    def release(self) -> None:
        """Drop the pixels (64 MB a 4k master) once written and folded into the lights'
        corrections; the summary stays."""
        self.summary()
        self.data = self.mask = None

    @property
    def file_name(self) -> str:
        return f"master_flat_{safe_filter(self.filter)}.fits" if self.kind == "flat" else f"master_{self.kind}.fits"

    def summary(self) -> dict:
        if self._summary is not None:
            return dict(self._summary)
        d = {"file": self.file_name, "frames": [p.name for p in self.files], "n_frames": len(self.files),
             "method": self.params.method, "parameters": {name: v for _, name, v, _ in combine.method_parameters(self.params)},
             "level": _finite(self.level), "noise": _finite(self.noise)}
        if self.kind == "dark":
            d.update(exptime=self.exptime, bias_subtracted=self.bias_subtracted, hot_pixels=self.n_masked)
        if self.kind == "flat":
            d.update(filter=self.filter, dark_subtracted=self.dark_subtracted, dead_pixels=self.n_masked,
                     min=_finite(float(np.nanmin(self.data))), max=_finite(float(np.nanmax(self.data))))
        self._summary = d
        return dict(d)


def _finite(v):
    return float(v) if v is not None and np.isfinite(v) else None


def safe_filter(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.strip()) or "none"


def robust_stats(data: np.ndarray, max_pixels: int = 1_000_000) -> tuple[float, float]:
    """(median, 1.4826 MAD) from an even sample of the finite pixels."""
    flat = data.reshape(-1)
    sample = flat[:: max(1, flat.size // max_pixels)]
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return float("nan"), float("nan")
    med = float(np.median(sample))
    return med, float(1.4826 * np.median(np.abs(sample - med)))


def min_frames(params: combine.CombineParams) -> int:
    """Fewest frames a method can work with: a rejection needs 3 values to judge one."""
    if params.method == "average":
        return 1
    if params.method == "minmax":
        return params.nlow + params.nhigh + 1
    return 3


def too_few(what: str, names: list[str], params: combine.CombineParams) -> str | None:
    """Why `names` (a set of frames) cannot be combined with `params`, or None if they can."""
    n, need = len(names), min_frames(params)
    if not names or n >= need:
        return None
    return (f"{what}: {n} frame{'s' * (n != 1)} ({names[0]}{'...' if n > 1 else ''}) {'is' if n == 1 else 'are'} "
            f"too few for {params.method}, which needs at least {need}")


@dataclass
class Options:
    overscan: str | None = None  # FITS section or header keyword (BIASSEC); None: no overscan
    trim: str | None = None  # FITS section or header keyword (TRIMSEC)
    overscan_stat: str = "median"
    overscan_order: int | None = None
    bias_params: combine.CombineParams = field(default_factory=lambda: combine.CombineParams(**vars(DEFAULT_PARAMS)))
    dark_params: combine.CombineParams = field(default_factory=lambda: combine.CombineParams(**vars(DEFAULT_PARAMS)))
    flat_params: combine.CombineParams = field(default_factory=lambda: combine.CombineParams(**vars(DEFAULT_PARAMS)))
    hot_sigma: float = 8.0  # master dark above its median by this many robust sigmas: hot
    dead_below: float = 0.5  # master flat under this fraction of its local level: dead
    max_dark_scale: float = MAX_DARK_SCALE
    cosmics: bool = False  # astroscrappy on each light
    cosmic_sigma: float = 4.5  # astroscrappy sigclip
    cosmic_objlim: float = 5.0
    exposure_key: str = "EXPTIME"
    memory_limit: int = combine.DEFAULT_MEMORY_LIMIT


# ---------------------------------------------------------------- the calibration


class Calibration:
    """Masters built from raw calibration frames, and their application to the lights.

    `read_frame` gives a light calibrated as an io.Frame (the registration's input),
    `reader`/`source` its calibrated row blocks (the combine's); both apply the same
    Correction, cached per (exposure, filter) so each group of lights shares two arrays."""

    def __init__(self, options: Options, geometry: Geometry, raw_shape, bias: Master | None = None,
                 dark: Master | None = None, flats: dict | None = None, ignored_flats: list | None = None):
        self.options, self.geometry, self.raw_shape = options, geometry, tuple(raw_shape)
        self.bias, self.dark, self.flats = bias, dark, dict(flats or {})
        self.ignored_flats = list(ignored_flats or [])
        self._corrections: dict = {}
        self._cosmics: dict = {}
        self._infos: dict = {}
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.out_shape(self.raw_shape)

    @property
    def masters(self) -> list[Master]:
        return [m for m in (self.bias, self.dark, *self.flats.values()) if m is not None]

    def info(self, path: Path) -> RawInfo:
        path = Path(path)
        with self._lock:
            if path not in self._infos:
                self._infos[path] = read_info(path, self.options.exposure_key)
            return self._infos[path]

    def dark_scale(self, exptime: float | None, name: str) -> float:
        """The dark's multiplier for a frame of `exptime` (ccdproc.subtract_dark, scale=True)."""
        d = self.dark
        if d is None:
            return 0.0
        if exptime is None or d.exptime is None:
            raise InputError(f"{name}: no exposure time ({self.options.exposure_key}) to scale the dark by")
        if not d.bias_subtracted:
            if abs(exptime - d.exptime) > 0.01 * max(d.exptime, 1e-9):
                raise InputError(f"{name}: exposure {exptime:g} s, the darks {d.exptime:g} s; without bias frames a "
                                 "dark (which still holds the bias) cannot be scaled: add [calibrate] bias or matching darks")
            return 1.0
        if d.exptime <= 0 or exptime > self.options.max_dark_scale * d.exptime:
            raise InputError(f"{name}: exposure {exptime:g} s is more than {self.options.max_dark_scale:g}x the darks' "
                             f"{d.exptime:g} s ({d.files[0].name}...): take darks at least as long as the lights")
        return exptime / d.exptime

    def correction(self, exptime: float | None, filt: str, name: str) -> Correction:
        flat = self._flat_for(filt, name)
        k = self.dark_scale(exptime, name)
        key = (round(k, 9), flat.filter if flat is not None else None)
        with self._lock:
            c = self._corrections.get(key)
            if c is None:
                c = self._corrections[key] = self._make_correction(k, flat)
            return c

    def _flat_for(self, filt: str, name: str) -> Master | None:
        if not self.flats:
            return None
        if filt in self.flats:
            return self.flats[filt]
        if list(self.flats) == [""]:  # flats without a FILTER keyword serve any light
            return self.flats[""]
        have = ", ".join(repr(f) for f in self.flats)
        raise InputError(f"{name}: no flat for filter {filt!r} (the flats are {have})")

    def _make_correction(self, k: float, flat: Master | None, consume: bool = False) -> Correction:
        """One offset (bias + scaled dark) and the flat with the masked pixels as NaN: new arrays,
        or with `consume` (one group of lights, the masters about to be let go) the masters'
        own, changed in place. The same arithmetic either way, so the wizard and `run` agree
        to the bit."""
        if any(m.data is None for m in self.masters):
            raise RuntimeError("the masters were released; corrections are made before (prepare)")
        mask = None
        for m in (self.dark, flat):
            if m is not None and m.mask is not None and m.mask.any():
                mask = m.mask if mask is None else (mask | m.mask)
        own = (lambda a: a) if consume else (lambda a: a.copy())  # noqa: E731
        offset = own(self.bias.data) if self.bias is not None else None
        if self.dark is not None and k:
            dark = own(self.dark.data)
            if k != 1:
                dark *= np.float32(k)
            offset = dark if offset is None else np.add(offset, dark, out=offset)
        fl = own(flat.data) if flat is not None else None
        if mask is not None and (fl is not None or offset is not None):
            np.copyto(fl if fl is not None else offset, np.float32(np.nan), where=mask)
            mask = None
        return Correction(offset, fl, mask)

    def prepare(self, lights) -> None:
        """Check every light and make the corrections they need now, then let the masters go
        (written already): with one group of lights (one exposure, one filter), the usual
        case, the masters' arrays become its correction in place."""
        keys = {}
        for p in lights:
            info = self.info(p)
            self.check_frame(info, "light")
            flat = self._flat_for(info.filter, info.path.name)
            k = self.dark_scale(info.exptime, info.path.name)
            keys[(round(k, 9), flat.filter if flat is not None else None)] = (k, flat)
        self._masked_count = self._count_masked()
        for m in self.masters:
            m.summary()
        with self._lock:
            self._corrections.clear()
            if len(keys) == 1:
                (key, (k, flat)), = keys.items()
                self._corrections[key] = self._make_correction(k, flat, consume=True)
            else:
                for key, (k, flat) in keys.items():
                    self._corrections[key] = self._make_correction(k, flat)
        for m in self.masters:
            m.release()

    def light_correction(self, path: Path) -> Correction:
        info = self.info(path)
        self.check_frame(info, "light")
        return self.correction(info.exptime, info.filter, info.path.name)

    def check_frame(self, info: RawInfo, kind: str) -> None:
        if tuple(info.shape) != self.raw_shape:
            raise InputError(f"{info.path.name}: {kind} frame is {info.shape[1]}x{info.shape[0]}, the calibration "
                             f"frames {self.raw_shape[1]}x{self.raw_shape[0]}; they must have one shape")
        ref = self.masters[0].files[0] if self.masters else None
        if ref is not None:
            rb = self.info(ref).binning
            if info.binning != rb:
                raise InputError(f"{info.path.name}: binned {info.binning[0]}x{info.binning[1]}, but {ref.name} "
                                 f"{rb[0]}x{rb[1]}; calibration frames must have the lights' binning")

    # -- lights

    def read_frame(self, path: Path) -> io.Frame:
        """A light calibrated: what io.read_frame gives for a frame already calibrated."""
        frame = io.read_frame(path)
        corr = self.light_correction(path)
        raw = frame.data
        if frame.mask.any():
            raw[frame.mask] = np.nan
        data = calibrate_array(raw, self.geometry, corr, inplace=True)
        if self.options.cosmics:
            idx = self._cosmic_indices(path, data)
            data.reshape(-1)[idx] = np.nan
        mask = ~np.isfinite(data)
        data[mask] = 0.0
        return io.Frame(path=frame.path, data=data, mask=mask, header=self.calibrated_header(frame.header),
                        hdu_index=frame.hdu_index)

    def calibrated_header(self, header):
        """The raw header with the WCS moved by the trim and what was done noted."""
        hdr = header.copy()
        t = self.geometry.trim
        if t is not None:
            for k, off in (("CRPIX1", t.x0), ("CRPIX2", t.y0)):
                if isinstance(hdr.get(k), (int, float)):
                    hdr[k] = hdr[k] - off
            hdr["NAXIS1"], hdr["NAXIS2"] = t.shape[1], t.shape[0]
        hdr["TSCALIB"] = (self.steps(), "tui-stack calibration")
        # the raw frame's layout, no longer this frame's: kept under another name, so that no
        # tool cuts the calibrated frame again
        for key in ("BIASSEC", "TRIMSEC", "DATASEC"):
            if key in hdr and (self.geometry.trim is not None or self.geometry.overscan is not None):
                hdr.rename_keyword(key, key[:7] + "0")
        return hdr

    def steps(self) -> str:
        """What calibrating a light does, in order: "overscan,bias,dark,flat" or part of it."""
        return ",".join(["overscan"] * (self.geometry.overscan is not None) + [m.kind for m in self.masters])

    def _cosmic_indices(self, path: Path, data: np.ndarray | None = None) -> np.ndarray:
        path = Path(path)
        with self._lock:
            if path in self._cosmics:
                return self._cosmics[path]
        if data is None:
            raw = io.read_frame(path)
            raw.data[raw.mask] = np.nan
            data = calibrate_array(raw.data, self.geometry, self.light_correction(path))
        info = self.info(path)
        idx = detect_cosmics(data, info.gain or 1.0, info.rdnoise or 0.0, self.options.cosmic_sigma,
                             self.options.cosmic_objlim, info.header.get("SATURATE"))
        with self._lock:
            self._cosmics[path] = idx
        return idx

    def n_cosmics(self) -> dict:
        return {p.name: int(v.size) for p, v in self._cosmics.items()}

    def reader(self, path: Path, hdu_index: int | None = None) -> CalibratedReader:
        info = self.info(path)
        corr = self.light_correction(path)
        masked = (lambda: self._cosmic_indices(path)) if self.options.cosmics else None
        return CalibratedReader(path, info.hdu_index if hdu_index is None else hdu_index, info.shape,
                                self.geometry, corr, masked)

    def source(self, path: Path, dx: int = 0, dy: int = 0, zero: float = 0.0, scale: float = 1.0, out_shape=None,
               flip: bool = False) -> CalibratedSource:
        """A combine source of a light, calibrated while its rows are read."""
        self.light_correction(path)  # checks now, not inside the combine's threads
        return CalibratedSource(lambda: self.reader(path), self.shape, dx, dy, zero, scale, out_shape=out_shape,
                                flip=flip)

    def _count_masked(self) -> int:
        """Pixels masked in every light: hot (dark) or dead (any flat)."""
        masked = None
        for m in (self.dark, *self.flats.values()):
            if m is not None and m.mask is not None:
                masked = m.mask.copy() if masked is None else masked | m.mask
        return 0 if masked is None else int(masked.sum())

    def report(self) -> dict:
        d = {"geometry": self.geometry.describe(), "masters": {}}
        for m in self.masters:
            key = m.kind if m.kind != "flat" else f"flat_{safe_filter(m.filter)}"
            d["masters"][key] = m.summary()
        d["masked_pixels"] = getattr(self, "_masked_count", None)
        if d["masked_pixels"] is None:
            d["masked_pixels"] = self._count_masked()
        if self.ignored_flats:
            d["ignored_flats"] = [p.name for p in self.ignored_flats]
        if self.options.cosmics:
            d["cosmic_rays"] = self.n_cosmics()
        return d


def detect_cosmics(data: np.ndarray, gain: float, rdnoise: float, sigclip: float, objlim: float,
                   satlevel=None) -> np.ndarray:
    """Sorted flat indices of the pixels L.A.Cosmic (astroscrappy) takes for cosmic rays."""
    import astroscrappy

    bad = ~np.isfinite(data)
    clean = np.where(bad, np.float32(np.nanmedian(data)), data).astype(np.float32)
    sat = float(satlevel) if isinstance(satlevel, (int, float)) else float(np.inf)
    crmask, _ = astroscrappy.detect_cosmics(clean, inmask=bad, sigclip=sigclip, objlim=objlim, gain=gain,
                                            readnoise=rdnoise, satlevel=sat, cleantype="meanmask")
    return np.flatnonzero(crmask & ~bad)


# ---------------------------------------------------------------- building the masters


def _check_set(infos: list[RawInfo], kind: str, shape, binning, ref_name: str) -> None:
    for info in infos:
        if tuple(info.shape) != tuple(shape):
            raise InputError(f"{info.path.name}: {kind} frame is {info.shape[1]}x{info.shape[0]}, but {ref_name} is "
                             f"{shape[1]}x{shape[0]}; calibration frames must have the lights' shape")
        if info.binning != binning:
            raise InputError(f"{info.path.name}: {kind} frame binned {info.binning[0]}x{info.binning[1]}, but "
                             f"{ref_name} {binning[0]}x{binning[1]}; calibration frames must have the lights' binning")
        if info.kind and info.kind != kind and info.kind != "light":
            raise InputError(f"{info.path.name}: IMAGETYP says {info.kind}, but it is listed as a {kind} frame")


def _combine_master(kind: str, infos: list[RawInfo], params: combine.CombineParams, geo: Geometry,
                    correction: Correction | None, scales, opts: Options, progress: Progress, label: str) -> np.ndarray:
    why = too_few(kind, [i.path.name for i in infos], params)
    if why:
        raise InputError(why)
    shape = geo.out_shape(infos[0].shape)
    sources = []
    for info, s in zip(infos, scales):
        def make(info=info):
            return CalibratedReader(info.path, info.hdu_index, info.shape, geo, correction)
        sources.append(CalibratedSource(make, shape, scale=float(s)))
    res = combine.combine(sources, params, memory_limit=opts.memory_limit, maps=False,
                          progress=lambda d, t: progress(label, d, t))
    return res.data


def build_bias(infos, geo, opts, progress=_noop) -> Master:
    data = _combine_master("bias", infos, opts.bias_params, geo, None, [1.0] * len(infos), opts, progress,
                           "master bias")
    level, noise = robust_stats(data)
    return Master("bias", data, [i.path for i in infos], opts.bias_params, level=level, noise=noise)


def build_dark(infos, geo, opts, bias: Master | None, progress=_noop) -> Master:
    times = [i.exptime for i in infos]
    if any(t is None for t in times):
        bad = next(i for i in infos if i.exptime is None)
        raise InputError(f"{bad.path.name}: dark frame has no exposure time ({opts.exposure_key})")
    t_max = max(times)
    if bias is None and (max(times) - min(times)) > 0.01 * t_max:
        raise InputError(f"dark: exposures from {min(times):g} to {t_max:g} s; without bias frames darks of "
                         "different exposures cannot be scaled to one: add [calibrate] bias or use one exposure")
    if t_max <= 0:
        raise InputError(f"{infos[0].path.name}: dark exposure time is 0")
    # bias-subtracted darks scale with time: each brought to the longest exposure
    scales = [t_max / t if t > 0 else 0.0 for t in times] if bias is not None else [1.0] * len(infos)
    if bias is not None and min(times) <= 0:
        raise InputError(f"{infos[times.index(min(times))].path.name}: dark exposure time is 0")
    corr = Correction(offset=bias.data) if bias is not None else None
    data = _combine_master("dark", infos, opts.dark_params, geo, corr, scales, opts, progress, "master dark")
    level, noise = robust_stats(data)
    hot = data > level + opts.hot_sigma * max(noise, 1e-6) if np.isfinite(noise) else None
    return Master("dark", data, [i.path for i in infos], opts.dark_params, exptime=t_max, level=level, noise=noise,
                  mask=hot, bias_subtracted=bias is not None)


def frame_median(reader: CalibratedReader, zero_check: bool, name: str) -> float:
    """Median of a calibrated frame; frames larger than MEDIAN_SAMPLE_PIXELS from one row
    block in every few (the scale of a flat needs 1e-4, not the exact pixel). With
    `zero_check` a raw flat with too many pixels at exactly 0 is refused."""
    h, w = reader.shape
    step = max(1, int(np.ceil(h * w / MEDIAN_SAMPLE_PIXELS)))
    block = 16
    parts, zeros, n = [], 0, 0
    for y0 in range(0, h, block * step):
        y1 = min(h, y0 + block)
        rows = reader.rows(y0, y1)
        if zero_check:
            raw = reader._reader.rows(y0 + (reader.geometry.trim.y0 if reader.geometry.trim else 0),
                                      y1 + (reader.geometry.trim.y0 if reader.geometry.trim else 0))
            zeros += int(np.count_nonzero(raw == 0))
            n += raw.size
        parts.append(rows[np.isfinite(rows)])
    if zero_check and zeros > FLAT_ZERO_FRACTION * n:
        raise InputError(f"{name}: {100 * zeros / n:.1f}% of its pixels are exactly 0; a flat must be lit everywhere "
                         "(a blank, clipped or corrupt frame?)")
    vals = np.concatenate(parts) if parts else np.empty(0, np.float32)
    return float(np.median(vals)) if vals.size else float("nan")


DEAD_BOX = 32  # px: the flat's local level is the median of boxes this size, interpolated


def _interp_weights(n: int, box: int, nb: int):
    """For pixel positions 0..n-1: the two box centres around each and the weight of the second."""
    centres = (np.arange(nb) + 0.5) * box - 0.5
    pos = np.clip(np.arange(n, dtype=np.float64), centres[0], centres[-1])
    i0 = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, max(nb - 2, 0))
    i1 = np.minimum(i0 + 1, nb - 1)
    t = np.where(i1 > i0, (pos - centres[i0]) / box, 0.0)
    return i0, i1, t


def dead_pixels(flat: np.ndarray, below: float, box: int = DEAD_BOX) -> np.ndarray:
    """Pixels of a normalised flat under `below` x its local level (or not positive, or NaN).
    The local level is the median of box x box blocks, interpolated bilinearly between block
    centres, so vignetting and dust are not dead pixels however deep (an absolute threshold
    would mask a vignetted corner). Worked a band of blocks at a time: no full-size temporaries."""
    h, w = flat.shape
    ny, nx = -(-h // box), -(-w // box)
    med = np.empty((ny, nx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block: filled below
        for by in range(ny):
            band = flat[by * box:(by + 1) * box]
            r = band.shape[0]
            pad = np.full((r, nx * box), np.nan, np.float32)
            pad[:, :w] = band
            blocks = pad.reshape(r, nx, box).transpose(1, 0, 2).reshape(nx, -1)
            holes = np.isnan(blocks).any(axis=1)  # nanmedian is 10x slower: only where needed
            med[by] = np.median(blocks, axis=1)
            if holes.any():
                med[by, holes] = np.nanmedian(blocks[holes], axis=1)
    med = np.where(np.isfinite(med), med, np.nanmedian(med))
    yi0, yi1, yt = _interp_weights(h, box, ny)
    xi0, xi1, xt = _interp_weights(w, box, nx)
    dead = np.empty((h, w), bool)
    with np.errstate(invalid="ignore"):
        for y0 in range(0, h, box):
            y1 = min(h, y0 + box)
            col = med[yi0[y0:y1]] * (1 - yt[y0:y1, None]) + med[yi1[y0:y1]] * yt[y0:y1, None]  # (rows, nx)
            level = col[:, xi0] * (1 - xt) + col[:, xi1] * xt
            rows = flat[y0:y1]
            dead[y0:y1] = ~(rows >= below * level) | ~(rows > 0)
    return dead


def build_flat(infos, geo, opts, bias: Master | None, dark: Master | None, filt: str, progress=_noop) -> Master:
    # each flat: bias and dark off (the dark scaled to the flat's exposure where it can be)
    k = None
    if dark is not None:
        times = {i.exptime for i in infos}
        if len(times) == 1 and None not in times:
            t = times.pop()
            if dark.bias_subtracted and t <= opts.max_dark_scale * dark.exptime:
                k = t / dark.exptime
            elif not dark.bias_subtracted and abs(t - dark.exptime) <= 0.01 * dark.exptime:
                k = 1.0
    corr = None
    if bias is not None or k:
        corr = Correction(offset=bias.data if bias is not None else None, dark=dark.data if k else None,
                          dark_scale=k or 0.0)
    meds = []
    for j, info in enumerate(infos):
        progress(f"flat {filt} levels", j, len(infos))
        r = CalibratedReader(info.path, info.hdu_index, info.shape, geo, corr)
        try:
            med = frame_median(r, True, info.path.name)
        finally:
            r.close()
        if not med > 0:
            raise InputError(f"{info.path.name}: flat's median after bias and dark is {med:g}; a flat must be lit")
        meds.append(med)
    scales = [1.0 / m for m in meds]
    data = _combine_master("flat", infos, opts.flat_params, geo, corr, scales, opts, progress, f"master flat {filt}")
    level = float(np.nanmedian(data))
    if not level > 0:
        raise InputError(f"flat {filt}: the combined flat's median is {level:g}")
    data /= np.float32(level)
    dead = dead_pixels(data, opts.dead_below)
    _, noise = robust_stats(data)
    return Master("flat", data, [i.path for i in infos], opts.flat_params, filter=filt, level=float(np.median(meds)),
                  noise=noise, mask=dead, dark_subtracted=bool(k), scales=scales,
                  exptime=infos[0].exptime)


def build(bias: list, dark: list, flat: list, lights: list, opts: Options = Options(),
          progress: Progress = _noop) -> Calibration:
    """Masters from the raw calibration frames (lists of paths, each may be empty) for these lights.

    Checks first (shapes, binning, filters, exposures, frame counts) so a bad set fails in
    seconds, before any combine."""
    if not lights:
        raise InputError("calibration: no light frames")
    linfos = [read_info(p, opts.exposure_key) for p in lights]
    for info in linfos:
        if info.kind in KINDS:
            raise InputError(f"{info.path.name}: IMAGETYP says {info.kind}, but it is selected as a light; narrow "
                             '[input] pattern or select (e.g. select = { IMAGETYP = "Light Frame" })')
    ref = linfos[0]
    _check_set(linfos[1:], "light", ref.shape, ref.binning, ref.path.name)
    sets = {}
    for kind, paths in (("bias", bias), ("dark", dark), ("flat", flat)):
        infos = [read_info(p, opts.exposure_key) for p in paths]
        _check_set(infos, kind, ref.shape, ref.binning, ref.path.name)
        sets[kind] = infos
    geo = resolve_geometry(ref, opts.overscan, opts.trim, opts.overscan_stat, opts.overscan_order)
    for info in [*linfos, *sets["bias"], *sets["dark"], *sets["flat"]]:
        other = resolve_geometry(info, opts.overscan, opts.trim, opts.overscan_stat, opts.overscan_order)
        if other != geo:
            raise InputError(f"{info.path.name}: its overscan/trim sections differ from {ref.path.name}'s")
    # flats per filter the lights use
    light_filters = sorted({i.filter for i in linfos})
    flat_groups: dict = {}
    for info in sets["flat"]:
        flat_groups.setdefault(info.filter, []).append(info)
    ignored = []
    if flat_groups:
        if list(flat_groups) != [""]:
            for f in light_filters:
                if f not in flat_groups:
                    have = ", ".join(repr(k) for k in flat_groups)
                    first = next(i for i in linfos if i.filter == f)
                    raise InputError(f"{first.path.name}: lights in filter {f!r} but no flat for it (the flats are {have})")
            for f in list(flat_groups):
                if f not in light_filters:
                    ignored += [i.path for i in flat_groups.pop(f)]
    counts = [("bias", sets["bias"], opts.bias_params), ("dark", sets["dark"], opts.dark_params)]
    for what, infos, p in counts + [(f"flat {f}", infos, opts.flat_params) for f, infos in flat_groups.items()]:
        why = too_few(what, [i.path.name for i in infos], p)
        if why:
            raise InputError(why)
    calib = Calibration(opts, geo, ref.shape, ignored_flats=ignored)
    for info in [*linfos, *sets["bias"], *sets["dark"], *sets["flat"]]:
        calib._infos[info.path] = info
    mb = build_bias(sets["bias"], geo, opts, progress) if sets["bias"] else None
    calib.bias = mb
    md = build_dark(sets["dark"], geo, opts, mb, progress) if sets["dark"] else None
    calib.dark = md
    # the lights' exposures against the dark, before the flats are built
    for info in linfos:
        calib.dark_scale(info.exptime, info.path.name)
    for f, infos in flat_groups.items():
        calib.flats[f] = build_flat(infos, geo, opts, mb, md, f, progress)
    return calib


def master_hdul(master: Master, version: str, geometry: Geometry | None = None):
    """The master as FITS with provenance; its mask (hot or dead pixels) as a uint8 extension."""
    from astropy.io import fits

    hdr = fits.Header()
    hdr["IMAGETYP"] = (f"master {master.kind}", "made by tui-stack")
    hdr["NCOMBINE"] = (len(master.files), "frames combined")
    for card, _, value, comment in combine.method_parameters(master.params):
        hdr[card] = (value, comment)
    if master.exptime is not None:
        hdr["EXPTIME"] = (master.exptime, "s; dark: the exposure it stands for")
    if master.kind == "flat":
        hdr["FILTER"] = master.filter
        hdr["FLATLVL"] = (master.level, "median level of the flats before normalising")
    if master.kind == "dark":
        hdr["BIASSUB"] = (master.bias_subtracted, "master bias taken off before combining")
    if geometry is not None and geometry.overscan is not None:
        hdr["OVERSCAN"] = (geometry.overscan.fits(), "overscan section subtracted")
    if geometry is not None and geometry.trim is not None:
        hdr["TRIMSEC0"] = (geometry.trim.fits(), "data section kept")
    hdr["TSVERS"] = (version, "tui-stack version")
    for p in master.files:
        hdr.add_history(f"input {p.name}")
    hdus = [fits.PrimaryHDU(master.data.astype(np.float32), hdr)]
    if master.mask is not None:
        name = "HOTPIX" if master.kind == "dark" else "DEADPIX"
        hdus.append(fits.ImageHDU(master.mask.astype(np.uint8), name=name))
    return fits.HDUList(hdus)


# ---------------------------------------------------------------- sorting a directory


@dataclass
class Proposal:
    """Frames of a directory sorted by type: the lights to stack and the sets that calibrate them."""

    lights: list[Path] = field(default_factory=list)
    bias: list[Path] = field(default_factory=list)
    dark: list[Path] = field(default_factory=list)
    flat: list[Path] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)  # every (type, filter, exposure) with its files
    overscan: str | None = None  # "BIASSEC" when every frame's header has it
    trim: str | None = None  # "TRIMSEC" likewise
    notes: list[str] = field(default_factory=list)

    @property
    def any_calibration(self) -> bool:
        return bool(self.bias or self.dark or self.flat)


def propose(frames, params: combine.CombineParams | None = None) -> Proposal:
    """Group (path, header, exptime, filter) frames by IMAGETYP and filter and propose the sets:
    the largest group of lights (one filter: frames of two filters are not stacked together),
    every bias, the darks (those of the lights' exposure, if there are any, else all), and the
    flats of the lights' filter. Frames of no known type count as lights. Overscan and trim from
    BIASSEC/TRIMSEC when every frame has them. With `params` (how the masters are combined), a
    set too small for them (min_frames) is not proposed and a note says so."""
    groups: dict = {}
    frames = list(frames)
    for path, header, exptime, filt in frames:
        kind = classify(header) or "light"
        key = (kind, filt if kind in ("light", "flat") else "", exptime if kind != "bias" else None)
        groups.setdefault(key, []).append(Path(path))
    p = Proposal()
    if frames and all("BIASSEC" in h for _, h, _, _ in frames):
        p.overscan = "BIASSEC"
    if frames and all("TRIMSEC" in h for _, h, _, _ in frames):
        p.trim = "TRIMSEC"
    order = {"light": 0, "bias": 1, "dark": 2, "flat": 3}
    for (kind, filt, exp), files in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1], kv[0][2] or 0)):
        p.groups.append({"type": kind, "filter": filt, "exptime": exp, "files": sorted(files)})
    by_filter: dict = {}
    for g in p.groups:
        if g["type"] == "light":
            by_filter.setdefault(g["filter"], []).extend(g["files"])
    if by_filter:
        filt = max(by_filter, key=lambda f: len(by_filter[f]))
        p.lights = sorted(by_filter[filt])
        if len(by_filter) > 1:
            p.notes.append(f"lights in {len(by_filter)} filters; proposing the {len(p.lights)} in {filt or 'no filter'!r}")
        light_exp = {e for (k, f, e) in groups if k == "light" and f == filt}
    else:
        filt, light_exp = "", set()
    p.bias = sorted(f for g in p.groups if g["type"] == "bias" for f in g["files"])
    darks = [g for g in p.groups if g["type"] == "dark"]
    same = [g for g in darks if g["exptime"] in light_exp]
    p.dark = sorted(f for g in (same or darks) for f in g["files"])
    flats = [g for g in p.groups if g["type"] == "flat"]
    p.flat = sorted(f for g in flats if g["filter"] == filt or not g["filter"] for f in g["files"])
    if flats and not p.flat:
        p.notes.append(f"no flat in the lights' filter {filt!r} (flats: {', '.join(sorted({g['filter'] for g in flats}))})")
    if darks and not p.bias and not same:
        p.notes.append("darks of another exposure than the lights and no bias: they cannot be scaled")
    for kind in KINDS if params is not None else ():
        files = getattr(p, kind)
        if too_few(kind, [f.name for f in files], params):
            setattr(p, kind, [])
            n = len(files)
            p.notes.append(f"{kind}: {n} frame{'s' * (n != 1)}, too few for {params.method} "
                           f"(at least {min_frames(params)}): not proposed")
    return p
