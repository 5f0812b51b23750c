"""FITS input and output: file selection, frame reading with masks, atomic writes."""

from __future__ import annotations

import glob
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tui_stack.errors import InputError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fit.fz")


@dataclass
class Frame:
    """One image plane: float32 data, a mask (True = no data) and its header."""

    path: Path
    data: np.ndarray
    mask: np.ndarray
    header: object
    hdu_index: int = 0
    digest: str = ""  # pixel_digest() of the frame as read, when asked for

    def pixel_digest(self) -> str:
        """Hash of the pixels: the same exposure under two names would count twice."""
        import hashlib

        # A sparse sample is enough: two exposures never share 100k+ pixel values exactly.
        sample = np.ascontiguousarray(self.data[::7, ::13])
        return hashlib.blake2b(sample.view(np.uint8), digest_size=16).hexdigest() + f"{self.data.shape}"

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape


@dataclass
class FrameInfo:
    """Header summary and quick statistics of one file, for the file table."""

    path: Path
    shape: tuple[int, int] | None = None
    hdu_index: int = 0
    date_obs: str = ""
    exptime: float | None = None
    filter: str = ""
    imagetyp: str = ""
    median: float | None = None
    std: float | None = None
    max: float | None = None
    error: str = ""
    header: dict = field(default_factory=dict)
    primary: dict = field(default_factory=dict)  # the primary header, when the image is in an extension

    def selected_by(self, select: dict | None) -> bool:
        return not self.error and header_selected(self.header, self.primary, select)


def _axes(hdr) -> list[int]:
    """NAXIS1, NAXIS2, ... of an image HDU (ZNAXISn of a tile-compressed one)."""
    z = "Z" if "ZNAXIS" in hdr else ""
    return [int(hdr.get(f"{z}NAXIS{k}", 0)) for k in range(1, int(hdr.get(f"{z}NAXIS", 0)) + 1)]


def image_shape(hdu) -> tuple[int, int]:
    """(h, w) of an image HDU: a cube whose further axes are all 1 (NAXIS3 = 1, as many cameras
    write a single frame) is that one 2-D plane."""
    axes = _axes(hdu.header)
    return axes[1], axes[0]


def _image_hdu_index(hdul, path: Path) -> int:
    """The first HDU holding 2-D image data (primary, image extension or compressed)."""
    for i, hdu in enumerate(hdul):
        if not getattr(hdu, "is_image", False):
            continue
        axes = _axes(hdu.header)
        if not axes:
            continue
        if len(axes) < 2 or any(n != 1 for n in axes[2:]):
            raise InputError(f"{path}: image in HDU {i} has {len(axes)} axes "
                             f"({' x '.join(map(str, axes))}); only 2-D frames can be stacked")
        return i
    raise InputError(f"{path}: no image data in any HDU")


def _rows_held(path, have: int, row_bytes: int, n_rows: int) -> str:
    """A truncated image: which of its rows the file holds."""
    rows = max(0, have) // row_bytes
    held = "none of its rows" if rows == 0 else f"rows 0-{rows - 1}"
    return f"{path}: file is truncated: it holds {held} of {n_rows} (image data {max(0, have)} of {n_rows * row_bytes} bytes)"


def check_data(hdul, idx: int, path: Path) -> None:
    """The image's data can be read as its header describes, without reading it: a known
    BITPIX and a file long enough to hold the data (a half-copied frame, a wrong BITPIX or
    NAXIS). Compressed files are checked only by reading them."""
    from astropy.io import fits

    hdu = hdul[idx]
    hdr = hdu.header
    if isinstance(hdu, fits.CompImageHDU):
        return
    if hdr.get("BITPIX") not in _BITPIX_DTYPES:
        raise InputError(f"{path}: image data cannot be read: BITPIX = {hdr.get('BITPIX')!r} is not a FITS "
                         "data type (8, 16, 32, 64, -32, -64)")
    info = hdu.fileinfo()
    if info is None or info.get("file") is None or getattr(info["file"], "compression", None):
        return  # gzip/bzip2: the sizes are those of the uncompressed stream
    h, w = image_shape(hdu)
    row = w * abs(int(hdr["BITPIX"])) // 8
    have = os.stat(info["file"].name).st_size - info["datLoc"]
    if have < h * row:
        raise InputError(_rows_held(path, have, row, h))


def open_fits(path: Path, memmap: bool = True):
    """Open a FITS file lazily, turning every way it can be broken into an InputError."""
    from astropy.io import fits

    path = Path(path)
    if not path.exists():
        if os.path.lexists(path):
            raise InputError(f"{path}: symbolic link to nothing (dangling or a loop)")
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a FITS file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        hdul = fits.open(path, memmap=memmap, lazy_load_hdus=False)
    except OSError as exc:
        raise InputError(f"{path}: not a readable FITS file ({exc})") from None
    except Exception as exc:  # astropy raises many kinds on garbage input
        raise InputError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    for hdu in hdul:
        sanitize_header(hdu.header)
    return hdul


def read_header(path: Path, hdu_index: int = 0):
    """One HDU's header, cards with control or non-ASCII bytes escaped (sanitize_header)."""
    from astropy.io import fits

    hdr = fits.getheader(path, hdu_index)
    sanitize_header(hdr)
    return hdr


def sanitize_header(hdr) -> int:
    """Cards holding control or non-ASCII bytes (astropy refuses to read their value, and
    they would reach a terminal raw) rewritten with escapes (tui_stack.safetext.header);
    returns how many. Checks the raw card images: ~1 us a card."""
    from tui_stack import safetext

    bad = []
    for i, card in enumerate(getattr(hdr, "_cards", ())):
        img = getattr(card, "_image", None)
        if img is not None and not (img.isascii() and img.isprintable()):
            bad.append((i, card.keyword, img))
    for i, key, img in bad:
        body = img[8:]
        if key in ("HISTORY", "COMMENT", "") or not body.startswith("= "):
            hdr[i] = safetext.header(body.rstrip())
            continue
        value, _, comment = body[2:].partition(" /")
        value = value.strip()
        if value.startswith("'"):
            value = value[1:].rstrip().removesuffix("'").replace("''", "'").rstrip()
        hdr[i] = (safetext.header(value), safetext.header(comment.strip()))
    return len(bad)


def read_frame(path: Path) -> Frame:
    """Read one 2-D frame as float32 with NaN and inf masked."""
    path = Path(path)
    # No memmap: scaled integer data (BZERO) cannot be memory-mapped read-only, and the
    # whole frame is needed anyway.
    hdul = open_fits(path, memmap=False)
    try:
        idx = _image_hdu_index(hdul, path)
        check_data(hdul, idx, path)
        hdu = hdul[idx]
        shape = image_shape(hdu)
        try:
            data = _read_float32(hdu)
            if data is None:
                data = np.asarray(hdu.data, dtype=np.float32).reshape(shape)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: image data cannot be read, file truncated? ({exc})") from None
        header = hdu.header.copy()
        if header.get("NAXIS", 2) > 2:  # a cube of one plane: a 2-D frame from here on
            for k in range(3, header["NAXIS"] + 1):
                header.remove(f"NAXIS{k}", ignore_missing=True)
            header["NAXIS"] = 2
    finally:
        hdul.close()
    mask = ~np.isfinite(data)
    if mask.any():
        data = data.copy()
        data[mask] = 0.0
    return Frame(path=path, data=data, mask=mask, header=header, hdu_index=idx)


_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _map_file(fileno: int):
    import mmap

    return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)


def _read_float32(hdu) -> np.ndarray | None:
    """An unscaled float32 image converted straight from the mapped file: one pass instead
    of astropy's read plus converting copy (45 -> 23 ms for 4096^2, measured; the map is
    closed at once: its pages count in the RSS only while a frame is converted). None for
    anything else (scaled, integer, compressed, no memory map): astropy reads those."""
    from astropy.io import fits

    hdr = hdu.header
    if (isinstance(hdu, fits.CompImageHDU) or hdr.get("BITPIX") != -32 or hdr.get("BSCALE", 1) != 1
            or hdr.get("BZERO", 0) != 0):
        return None
    info = hdu.fileinfo()
    if info is None or info.get("file") is None or getattr(info["file"], "compression", None):
        return None  # gzip/bzip2: the offsets are in the uncompressed stream; astropy reads it
    shape = image_shape(hdu)
    name, start = info["file"].name, info["datLoc"]
    need = shape[0] * shape[1] * 4
    with open(name, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < start + need:
            raise InputError(_rows_held(name, size - start, shape[1] * 4, shape[0]))
        try:
            mm = _map_file(f.fileno())
        except (OSError, ValueError):
            return None  # a file system without memory maps: astropy reads it
        with mm:
            return np.frombuffer(mm, ">f4", count=need // 4, offset=start).astype(np.float32).reshape(shape)


class RowReader:
    """Reads row blocks of one image HDU without loading the frame.

    Uncompressed images are read with positioned reads (os.pread) of whole rows, BSCALE/BZERO
    applied per block: astropy refuses to memory-map scaled integer data read-only, and a
    memory map would count every page it touched in the process's resident memory (1.3 GB
    for 20 frames of 4k, measured), where reads keep only the block. Compressed images go
    through astropy's section reader.
    """

    def __init__(self, path: Path, hdu_index: int = 0, keep_open: bool = True):
        """`keep_open` False: the file is opened for each read and closed again, so thousands
        of readers hold no descriptor (the open-file limit is 1024 by default)."""
        from astropy.io import fits

        self.path = Path(path)
        self.hdu_index = hdu_index
        self.keep_open = keep_open
        self._hdul = None
        self._fd = None
        self._section = None
        with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
            hdu = hdul[hdu_index]
            hdr = hdu.header
            # tile-compressed, or a gzip/bzip2 file (offsets in the uncompressed stream): astropy's section
            compressed = isinstance(hdu, fits.CompImageHDU) or bool(getattr(hdul._file, "compression", None))
            self.shape = image_shape(hdu)
            if not compressed:
                check_data(hdul, hdu_index, self.path)
                self._offset = hdu.fileinfo()["datLoc"]
        # a cube of one plane (NAXIS3 = 1): the section's leading axes are taken at 0
        self._lead = (0,) * (len(_axes(hdr)) - 2)
        if compressed:
            if keep_open:
                self._hdul = fits.open(self.path)
                self._section = self._hdul[hdu_index].section
            return
        self._dtype = np.dtype(_BITPIX_DTYPES[hdr["BITPIX"]])
        self._bscale = float(hdr.get("BSCALE", 1.0))
        self._bzero = float(hdr.get("BZERO", 0.0))
        self._blank = hdr.get("BLANK") if hdr["BITPIX"] > 0 else None
        if keep_open:
            self._fd = os.open(self.path, os.O_RDONLY)

    @property
    def compressed(self) -> bool:
        return not hasattr(self, "_offset")

    def rows(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """float32 pixels [y0:y1, x0:x1]; BLANK pixels become NaN."""
        x1 = self.shape[1] if x1 is None else x1
        out = np.empty((y1 - y0, x1 - x0), dtype=np.float32)
        self.rows_into(y0, y1, x0, x1, out)
        return out

    def rows_into(self, y0: int, y1: int, x0: int, x1: int, out: np.ndarray) -> None:
        """Pixels [y0:y1, x0:x1] into `out`, converted in one pass (byte order, BZERO, BLANK)."""
        if self.compressed:
            cut = (*self._lead, slice(y0, y1), slice(x0, x1))
            if self._section is not None:
                out[...] = self._section[cut]
                return
            from astropy.io import fits

            with fits.open(self.path) as hdul:
                out[...] = hdul[self.hdu_index].section[cut]
            return
        w = self.shape[1]
        nbytes = (y1 - y0) * w * self._dtype.itemsize
        fd = self._fd if self._fd is not None else os.open(self.path, os.O_RDONLY)
        try:
            buf = os.pread(fd, nbytes, self._offset + y0 * w * self._dtype.itemsize)
        finally:
            if fd != self._fd:
                os.close(fd)
        if len(buf) != nbytes:
            have = os.stat(self.path).st_size - self._offset
            raise InputError(_rows_held(self.path, have, w * self._dtype.itemsize, self.shape[0]))
        raw = np.frombuffer(buf, dtype=self._dtype).reshape(y1 - y0, w)[:, x0:x1]
        np.copyto(out, raw, casting="unsafe")
        if self._bscale != 1.0:
            out *= np.float32(self._bscale)
        if self._bzero != 0.0:
            out += np.float32(self._bzero)
        if self._blank is not None:
            out[raw == self._blank] = np.nan

    def close(self) -> None:
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None
            self._section = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def frame_info(path: Path) -> FrameInfo:
    """Header summary and quick stats; an unreadable file gets `error` set instead of raising."""
    info = FrameInfo(path=Path(path))
    try:
        frame = read_frame(path)
    except InputError as exc:
        info.error = str(exc).split(": ", 1)[-1]
        return info
    hdr = frame.header
    info.hdu_index = frame.hdu_index
    info.shape = frame.shape
    info.header = _header_dict(hdr)
    if frame.hdu_index > 0:
        from astropy.io import fits

        info.primary = _header_dict(fits.getheader(path, 0))
    info.date_obs = str(hdr.get("DATE-OBS", ""))
    exptime = hdr.get("EXPTIME", hdr.get("EXPOSURE"))
    info.exptime = float(exptime) if isinstance(exptime, (int, float)) else None
    info.filter = str(hdr.get("FILTER", hdr.get("FILTERS", "")))
    info.imagetyp = str(hdr.get("IMAGETYP", hdr.get("PICTTYPE", "")))
    good = frame.data[~frame.mask]
    if good.size:
        info.median = float(np.median(good))
        info.std = float(np.std(good))
        info.max = float(np.max(good))
    return info


def _header_dict(hdr) -> dict:
    return {k: hdr[k] for k in hdr if k and k not in ("COMMENT", "HISTORY", "")}


def header_selected(image_header, primary_header, select: dict | None) -> bool:
    """The one selection rule: the image HDU's header matches, or (image in an extension)
    the primary header does, where observatories put keywords such as PICTTYPE."""
    return header_matches(image_header, select) or (bool(primary_header) and header_matches(primary_header, select))


def match_files(directory: Path, pattern: str) -> list[Path]:
    """Files in `directory` matching the glob `pattern`, sorted by name, duplicates removed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: input directory does not exist")
    # the directory is a name, not a pattern: '[' in it would otherwise be a character class
    found = sorted({Path(p).resolve() for p in glob.glob(str(Path(glob.escape(str(directory))) / pattern))
                    if Path(p).is_file()})
    if not found:
        other = fits_pattern(directory)
        hint = f"; it holds {other[1]} {other[0]!r} files: [input] pattern = \"{other[0]}\" takes them" if other else ""
        raise InputError(f"no files match {pattern!r} in {directory}{hint}")
    return found


def fits_pattern(directory: Path) -> tuple[str, int] | None:
    """(a glob, how many files it takes) for the FITS files in `directory` by name (FITS_SUFFIXES,
    any case: `*.fit`, `*.FIT`, `*.fits.fz`): the commonest kind's when they are of several;
    None if it holds none. For a folder the default `*.fits` misses (Siril and many capture
    programs write .fit; archives .fits.fz or .fits.gz)."""
    counts: dict[str, int] = {}
    ends = sorted(FITS_SUFFIXES, key=len, reverse=True)  # .fits.gz before .gz-less .fits
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return None
    for entry in entries:
        lower = entry.name.lower()
        end = next((e for e in ends if lower.endswith(e) and len(lower) > len(e)), None)
        if end is not None and entry.is_file():
            suffix = entry.name[-len(end):]
            counts[suffix] = counts.get(suffix, 0) + 1
    if not counts:
        return None
    suffix = max(counts, key=lambda k: (counts[k], -FITS_SUFFIXES.index(k.lower())))
    return f"*{glob.escape(suffix)}", counts[suffix]


def header_matches(header, select: dict | None) -> bool:
    """True when every `select` keyword is in the header with an equal value.

    Numbers compare as numbers, strings case-insensitively with blanks stripped, as
    ccdproc's ImageFileCollection.files_filtered does. The wizard filters headers it has
    already read with this, so `run` must use the same rule rather than re-read every
    header through ImageFileCollection.
    """
    for key, want in (select or {}).items():
        if key not in header:
            return False
        have = header[key]
        if isinstance(want, bool) or isinstance(have, bool):
            if have != want:
                return False
        elif isinstance(want, (int, float)) and isinstance(have, (int, float)):
            if float(have) != float(want):
                return False
        elif str(have).strip().lower() != str(want).strip().lower():
            return False
    return True


def select_files(directory: Path, pattern: str, select: dict | None = None, skip: set | frozenset = frozenset(),
                 skipped: list | None = None) -> list[Path]:
    """Glob, then keep the files whose header matches every `select` keyword.

    Every matched file is opened first, and its data checked against its header (check_data),
    so a broken file is reported by name rather than failing half-way through a run, unless
    its name is in `skip` (the user excluded it): then it is left out, and (path, reason) is
    appended to `skipped`. A file in `skip` is read whole to know (as the wizard's file table
    read it): an excluded frame is never read again only to fail half-way through a run.
    """
    files = match_files(directory, pattern)
    kept = []
    filters: dict[str, int] = {}
    for path in files:
        try:
            hdul = open_fits(path)
        except InputError as exc:
            if path.name not in skip:
                raise
            _skipped(skipped, path, exc)
            continue
        try:
            idx = _image_hdu_index(hdul, path)
            check_data(hdul, idx, path)
            if path.name in skip:
                read_frame(path)
            if header_selected(hdul[idx].header, hdul[0].header if idx > 0 else None, select):
                kept.append(path)
                band = str(hdul[idx].header.get("FILTER", hdul[0].header.get("FILTER", ""))).strip()
                if band and path.name not in skip:
                    filters[band] = filters.get(band, 0) + 1
        except InputError as exc:
            if path.name not in skip:
                raise
            _skipped(skipped, path, exc)
        finally:
            hdul.close()
    if not kept:
        if not select:  # every file excluded and unreadable
            raise InputError(f"no readable files match {pattern!r} in {directory} besides those [input] exclude names")
        wanted = ", ".join(f"{k}={v!r}" for k, v in select.items())
        raise InputError(f"no files in {directory} matching {pattern!r} have {wanted}")
    if len(filters) > 1:  # star ratios differ with each star's colour: one stack per filter
        counts = ", ".join(f"{k}: {n}" for k, n in sorted(filters.items()))
        raise InputError(f"the frames matching {pattern!r} in {directory} are in {len(filters)} filters ({counts}); "
                         f'stack one at a time, e.g. [input] select = {{ FILTER = "{max(filters, key=filters.get)}" }}')
    return kept


def _skipped(skipped: list | None, path: Path, exc: InputError) -> None:
    if skipped is not None:
        skipped.append((path, str(exc).removeprefix(f"{path}: ")))


def resolved(path: Path) -> Path:
    """path.resolve(), a symbolic link loop being the user's to fix (RuntimeError before 3.13)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):
        raise InputError(f"{path}: a loop of symbolic links") from None


def check_shapes(infos: list[tuple[Path, tuple[int, int]]]) -> tuple[int, int]:
    """All frames must share one shape; name the first that differs."""
    first_path, first_shape = infos[0]
    for path, shape in infos[1:]:
        if tuple(shape) != tuple(first_shape):
            raise InputError(
                f"{path.name}: shape {shape[1]}x{shape[0]} differs from {first_path.name} "
                f"({first_shape[1]}x{first_shape[0]}); frames must all have one shape"
            )
    return tuple(first_shape)


def _read_umask() -> int:
    try:  # Linux: read without setting it (os.umask sets it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new output gets: 0666 less the user's umask, as any program's files."""
    return 0o666 & ~_read_umask()


def _compression_suffix(name: str) -> str:
    """astropy compresses by the name's ending: the temporary name keeps it."""
    return ".gz" if name.endswith(".gz") else ".bz2" if name.endswith(".bz2") else ""


def _atomic_target(path: Path):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + _compression_suffix(path.name),
                               dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600: the group could not read the stacks
    finally:
        os.close(fd)
    return Path(tmp)


class OutputError(InputError):
    """An output could not be written (disk full, permissions): the user has to act."""


def _output_error(path: Path, exc: OSError) -> OutputError:
    """One line naming the output as it will be once in place (not the hidden staging folder
    it is written in, tui_stack.rundir) and the system's reason, said once (astropy wraps the
    OSError in another one, twice over, repeating its text)."""
    import errno

    from tui_stack.rundir import STAGING_PREFIX

    path = Path(path)
    if path.parent.name.startswith(STAGING_PREFIX):
        path = path.parent.parent / path.name
    cause = exc
    while cause.errno is None and isinstance(cause.__cause__ or cause.__context__, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause.errno == errno.ENOSPC:
        return OutputError(f"{path}: no space left on the device; free some or choose another output directory")
    return OutputError(f"{path}: cannot write ({cause.strerror or cause})")


def _atomically(path: Path, write) -> None:
    """write(tmp) to a temporary file beside `path`, fsync, rename: never a half-written output."""
    path = Path(path)
    try:
        tmp = _atomic_target(path)
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _output_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FitsStream:
    """A float32 image written to `path` row block by row block (astropy's StreamingHDU), so
    the whole image is never held in memory: into a temporary file beside `path`, renamed over
    it once complete (`finish`), removed if anything fails (`abort`, or leaving a `with`
    block by an exception)."""

    def __init__(self, path: Path, header, shape: tuple[int, int]):
        from astropy.io import fits

        self.path = Path(path)
        try:
            # plain FITS while streaming (astropy's StreamingHDU does not compress); a .gz or
            # .fz name is honoured by `finish`
            self._tmp = _atomic_target(self.path.with_name(self.path.name.removesuffix(".gz")))
        except OSError as exc:
            raise _output_error(self.path, exc) from None
        hdr = fits.Header([("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 2), ("NAXIS1", shape[1]),
                           ("NAXIS2", shape[0])])
        sanitize_header(header)
        hdr.extend([c for c in header.cards if c.keyword not in hdr], unique=True)
        try:
            self._hdu = fits.StreamingHDU(str(self._tmp), hdr)
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise _output_error(self.path, exc) from None

    def write(self, rows: np.ndarray) -> None:
        try:
            self._hdu.write(np.ascontiguousarray(rows, dtype=">f4"))
        except OSError as exc:
            self.abort()
            raise _output_error(self.path, exc) from None

    def finish(self, extensions=()) -> None:
        """Close, append extension HDUs (maps), fsync and rename into place."""
        from astropy.io import fits

        try:
            self._hdu.close()
            for hdu in extensions:
                fits.append(self._tmp, hdu.data, hdu.header)
            if self.path.name.endswith((".gz", ".fz")):
                self._compress()
            with open(self._tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise _output_error(self.path, exc) from None

    def _compress(self) -> None:
        """The streamed file into what its name promises: gzip (streamed, 1 MB at a time), or a
        lossless tile-compressed image for .fz (astropy holds the image once for that)."""
        import gzip
        import shutil

        from astropy.io import fits

        packed = _atomic_target(self.path)
        try:
            if self.path.name.endswith(".gz"):
                with open(self._tmp, "rb") as src, open(packed, "wb") as raw, \
                        gzip.GzipFile(self.path.name[:-3], "wb", 6, raw) as dst:  # the name gunzip restores
                    shutil.copyfileobj(src, dst, 1 << 20)
            else:
                with fits.open(self._tmp, memmap=True) as hdul:
                    _tile_compressed(hdul).writeto(packed, overwrite=True, output_verify="silentfix")
        except BaseException:
            packed.unlink(missing_ok=True)
            raise
        self._tmp.unlink(missing_ok=True)
        self._tmp = packed

    def abort(self) -> None:
        try:
            self._hdu.close()
        except Exception:
            pass  # closing a stream that is short of data complains; it is going anyway
        self._tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def _tile_compressed(hdul):
    """A `.fz` name promises a tile-compressed image: lossless (GZIP_2, no quantisation)."""
    from astropy.io import fits

    first = hdul[0]
    if isinstance(first, fits.CompImageHDU) or first.data is None:
        return hdul
    hdr = first.header.copy()
    for key in ("SIMPLE", "EXTEND"):
        hdr.remove(key, ignore_missing=True)
    comp = fits.CompImageHDU(first.data, hdr, compression_type="GZIP_2", quantize_level=0)
    return fits.HDUList([fits.PrimaryHDU(), comp, *hdul[1:]])


def write_fits_atomic(path: Path, hdul) -> None:
    from astropy.io import fits

    if isinstance(hdul, fits.HDUList):
        for hdu in hdul:
            sanitize_header(hdu.header)  # a value copied from an input may hold control characters
        if Path(path).name.endswith(".fz"):
            hdul = _tile_compressed(hdul)
    _atomically(path, lambda tmp: hdul.writeto(tmp, overwrite=True, output_verify="silentfix"))


def write_text_atomic(path: Path, text: str) -> None:
    _atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def map_hdus(result) -> list:
    """IRAF-style output maps as named extensions (ds9 opens each): values used per pixel,
    values rejected, and the standard deviation of the values used."""
    from astropy.io import fits

    if result.n_used is None:
        return []
    return [
        fits.ImageHDU(result.n_used, name="NUSED"),
        fits.ImageHDU(result.n_rejected, name="NREJECTED"),
        fits.ImageHDU(result.sigma, name="SIGMA"),
    ]
