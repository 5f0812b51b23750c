"""Step 5, shift: each frame sky-subtracted and moved onto the reference grid (slice offsets in
integer mode, resampled in subpixel mode), and the s<name> frames written with their headers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from tui_stack import __version__, safetext
from tui_stack.core import io, shifting
from tui_stack.pipeline import calibration
from tui_stack.pipeline.state import FrameResult, Progress, RunState, measurable, noop


def _transform(fr: FrameResult):
    """The frame's transform, or None (a resumed wizard session keeps NaN for "none")."""
    t = fr.transform
    return list(t) if isinstance(t, (list, tuple)) and len(t) in (4, 6) else None


def frame_matrix(state: RunState, fr: FrameResult) -> list[float]:
    """Where each reference pixel lies in the frame as read from disk: the transform
    contract's [a, b, c, d, e, f] (notes/TRANSFORM_CONTRACT.md). A contract transform is used
    as it is; a similarity's 4 numbers were fitted on the frame turned by 180 degrees if it
    was flipped, so the turn is composed with it; no transform: the shift (and the turn)."""
    t = _transform(fr)
    if t is not None and len(t) == 6:
        return [float(v) for v in t]
    if t is None:
        return shifting.shift_matrix(fr.applied_shift_x, fr.applied_shift_y, fr.flipped, state.shape)
    a, b, c, d, e, f = shifting.as_matrix(t)
    if not fr.flipped:
        return [a, b, c, d, e, f]
    h, w = state.shape
    return [-a, -b, w - 1 - c, -d, -e, h - 1 - f]


def resampled(state: RunState, fr: FrameResult) -> bool:
    """The frame goes onto the reference grid through the resampler: in subpixel mode unless
    it is a whole-pixel shift (a slice copy, in either mode); in integer mode only a
    transform of whole numbers (a quarter turn or mirror and a whole-pixel shift), which the
    resampler copies exactly, pixel for pixel."""
    subpixel = state.config.shift.mode == "subpixel"
    t = _transform(fr)
    if t is None:
        return subpixel and any(abs(v - round(v)) > 1e-9 for v in (fr.applied_shift_x, fr.applied_shift_y))
    return subpixel or (len(t) == 6 and all(abs(v - round(v)) < 1e-9 for v in t))


def _sky_subtracted(state: RunState, fr: FrameResult):
    frame = calibration.read_frame(fr.path, state.config)
    frame.data -= np.float32(fr.sky)
    return frame


def own_pixels(state: RunState, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame i sky-subtracted as read, turned back where a meridian flip turned it (exact):
    the pixels its photometry is measured on, never resampled ones (data, mask)."""
    fr = state.frames[i]
    frame = _sky_subtracted(state, fr)
    if fr.flipped and fr.transform is None:
        return frame.data[::-1, ::-1], frame.mask[::-1, ::-1]
    return frame.data, frame.mask


def prepared_frame(state: RunState, i: int) -> tuple[np.ndarray, np.ndarray, object]:
    """Frame i sky-subtracted and moved onto the reference grid: (data, mask, header). In
    subpixel mode by the resampler the combine uses inside its blocks (the same pixels)."""
    fr = state.frames[i]
    frame = _sky_subtracted(state, fr)
    data = frame.data
    if resampled(state, fr):
        data, mask = shifting.warp_frame(data, frame.mask, frame_matrix(state, fr), state.shape)
        return data, mask, frame.header
    if fr.flipped:
        data, frame.mask = data[::-1, ::-1], frame.mask[::-1, ::-1]
    data, mask = shifting.shift_frame(data, frame.mask, round(fr.applied_shift_x), round(fr.applied_shift_y), "integer")
    return data, mask, frame.header

def _shifted_header(header, fr: FrameResult, state: RunState):
    hdr = header.copy()
    for key in ("BZERO", "BSCALE", "BLANK"):
        hdr.remove(key, ignore_missing=True)
    if fr.transform is not None:
        # resampled (or turned) onto the reference grid: the reference's WCS is now this frame's
        import warnings

        from astropy.wcs import WCS

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for key in WCS(hdr).to_header():
                    hdr.remove(key, ignore_missing=True)
        except Exception:
            pass  # no usable WCS to replace
        hdr.extend([c for c in reference_header(state).cards if c.keyword not in hdr or c.keyword.startswith(
            ("CRPIX", "CRVAL", "CD", "PC", "CDELT", "CTYPE", "CUNIT", "WCS", "LON", "LAT", "RADESYS", "EQUINOX"))],
            update=True)
        hdr["TSXFORM"] = (" ".join(f"{v:.9g}" for v in fr.transform), "ref->frame a b c d e f")
    elif "CRPIX1" in hdr and "CRPIX2" in hdr:
        if fr.flipped:
            _turn_wcs(hdr, state.shape)
        hdr["CRPIX1"] = hdr["CRPIX1"] + fr.applied_shift_x
        hdr["CRPIX2"] = hdr["CRPIX2"] + fr.applied_shift_y
    hdr["TSVERS"] = (__version__, "tui-stack version")
    hdr["TSREF"] = (safetext.header(state.files[state.ref_index].name), "reference frame")
    hdr["TSSKY"] = (float(fr.sky), "sky level subtracted (ADU)")
    hdr["TSDX"] = (float(fr.applied_shift_x), "x shift applied (px)")
    hdr["TSDY"] = (float(fr.applied_shift_y), "y shift applied (px)")
    hdr["TSMODE"] = (state.config.shift.mode, "shift mode")
    hdr.add_history(f"tui-stack {__version__}: sky-subtracted and shifted from {safetext.header(fr.name)}; "
                    "NaN = no data")
    return hdr

def _turn_wcs(hdr, shape) -> None:
    """The WCS of a frame turned by 180 degrees: pixel p (1-based) is now N+1-p on both axes,
    so CRPIX -> N+1-CRPIX and the linear part (CD, or CDELT with PC) changes sign."""
    h, w = shape
    hdr["CRPIX1"], hdr["CRPIX2"] = w + 1 - hdr["CRPIX1"], h + 1 - hdr["CRPIX2"]
    cd = [k for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2") if k in hdr]
    if cd:
        keys = cd
    elif "CDELT1" in hdr or "CDELT2" in hdr:
        for k in ("CDELT1", "CDELT2"):
            hdr.setdefault(k, 1.0)
        keys = ["CDELT1", "CDELT2"]
    else:
        keys = ["PC1_1", "PC1_2", "PC2_1", "PC2_2"]
        for k in keys:
            hdr.setdefault(k, 1.0 if k in ("PC1_1", "PC2_2") else 0.0)
    for k in keys:
        hdr[k] = -hdr[k]

def write_shifted(state: RunState, i: int, data, mask, header, path: Path) -> None:
    from astropy.io import fits

    out = np.where(mask, np.float32(np.nan), data).astype(np.float32)
    io.write_fits_atomic(path, fits.HDUList([fits.PrimaryHDU(out, _shifted_header(header, state.frames[i], state))]))

def write_shifted_frames(state: RunState, directory: Path, progress: Progress = noop) -> None:
    """s<name> for every frame that has a shift (a pass over the frames)."""
    todo = [i for i, fr in enumerate(state.frames) if measurable(fr)]
    for k, i in enumerate(todo):
        progress("write shifted", k, len(todo))
        data, mask, header = prepared_frame(state, i)
        write_shifted(state, i, data, mask, header, directory / f"s{state.frames[i].name}")
    progress("write shifted", len(todo), len(todo))

def reference_header(state: RunState):
    """The reference frame's descriptive keywords and WCS (the combined image and every
    resampled frame are on its grid). Read once per file version, not once per frame."""
    path = state.files[state.ref_index]
    hdr = frame_header(path, state.frames[state.ref_index].hdu_index)
    calib = calibration.active(state.config)
    if calib is not None and calib.geometry.trim is not None:  # the WCS of the trimmed frame
        for key, off in (("CRPIX1", calib.geometry.trim.x0), ("CRPIX2", calib.geometry.trim.y0)):
            if key in hdr:
                hdr[key] = hdr[key] - off
    return hdr


def frame_header(path: Path, hdu_index: int, offset: tuple[int, int] = (0, 0)):
    """A frame's descriptive keywords and celestial WCS (a copy), its reference pixel moved by
    `offset` (x, y) where the frame sits that far into a larger output grid."""
    hdr = _reference_header_of(path, hdu_index, path.stat().st_mtime_ns).copy()
    for key, off in (("CRPIX1", offset[0]), ("CRPIX2", offset[1])):
        if off and key in hdr:
            hdr[key] = hdr[key] + off
    return hdr


@lru_cache(maxsize=4)
def _reference_header_of(path: Path, hdu_index: int, mtime_ns: int):
    from astropy.io import fits

    with io.open_fits(path, memmap=False) as hdul:  # header cards made readable (control characters)
        src = hdul[hdu_index].header
        keep = fits.Header()
        for key in ("OBJECT", "TELESCOP", "INSTRUME", "FILTER", "DATE-OBS", "EXPTIME", "GAIN", "RDNOISE"):
            if key in src:
                keep[key] = (src[key], src.comments[key])
        if not any(str(k).startswith("CTYPE") for k in src):
            return keep  # no WCS to carry (and astropy.wcs costs 0.2-0.4 s to import)
        try:
            import warnings

            from astropy.wcs import WCS

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # astropy's notes on fixing DATE-OBS etc.
                wcs = WCS(src)
            if wcs.has_celestial:
                keep.extend(wcs.to_header(), unique=True)
        except Exception:
            pass  # a broken WCS in the input is not worth failing the run for
    return keep

