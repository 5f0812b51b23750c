"""Sizes checked before anything is allocated or written, each refused with the number that is
too big: `[scale] radius = 1e9` once took 24 GB and the OOM killer, offsets of 10^7 px in
`combine --offsets` started writing a 41 GB file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from tui_stack.errors import InputError

DISK_MARGIN = 16 * 2**20  # left free besides the outputs: the report, headers, the file system's own


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1024 or unit == "TB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TB"


def photometry_bytes(radius: float, r_out: float | None, n_stars: int) -> int:
    """Peak memory of core.photometry for n stars: (k, s, s) stamps of s = 2 ceil(r) + 3, about
    twelve 8-byte arrays at once for the exact-area aperture, five for the annulus median
    (tracemalloc: 45 MB for 30 stars, radius 60 / annulus 100; this gives 50 MB)."""
    def stamps(r, arrays):
        s = 2 * int(np.ceil(r)) + 3
        return int(n_stars) * s * s * 8 * arrays

    return max(stamps(radius, 12), stamps(r_out, 5) if r_out else 0) + 8 * 2**20


def check_photometry(radius: float, annulus: tuple[float, float] | None, shape: tuple[int, int],
                     n_stars: int, memory_limit: int) -> None:
    """The aperture must fit on the frame (else every star is off it) and the stamps of the
    aperture and annulus within the memory limit."""
    h, w = shape
    if not 0 < radius < min(h, w) / 2:
        raise InputError(f"[scale] radius = {radius:g} px: an aperture must fit on the {w}x{h} frame "
                         f"(radius under {min(h, w) / 2:g} px)")
    r_out = None
    if annulus is not None:
        r_in, r_out = annulus
        if not r_out < max(h, w):
            raise InputError(f"[scale] annulus = [{r_in:g}, {r_out:g}]: outer radius {r_out:g} px is larger "
                             f"than the {w}x{h} frame")
    need = photometry_bytes(radius, r_out, max(1, n_stars))
    if need > memory_limit:
        reach = max(radius, r_out or 0)
        raise InputError(f"[scale] radius/annulus out to {reach:g} px for {n_stars} stars needs {human(need)} "
                         f"of memory, over the memory limit of {human(memory_limit)}; use smaller apertures, "
                         "fewer stars or a larger --memory-limit")


def check_offsets(offsets: np.ndarray, frame_shape: tuple[int, int]) -> tuple[int, int]:
    """Integer offsets (dx, dy per frame) against the frames: the output grows to hold every
    frame at its offset, and a spread wider than all frames side by side leaves a gap no frame
    covers - nearly always offsets in the wrong unit. Returns the output shape (h, w)."""
    offsets = np.asarray(offsets)
    n = len(offsets)
    h, w = frame_shape
    for axis, size, name in ((0, w, "x"), (1, h, "y")):
        spread = int(offsets[:, axis].max() - offsets[:, axis].min()) if n else 0
        if spread >= n * size:
            raise InputError(f"--offsets: the frames spread over {spread} px in {name}, more than {n} frames of "
                             f"{size} px can cover; offsets are in pixels")
    return (h + int(np.ptp(offsets[:, 1])), w + int(np.ptp(offsets[:, 0])))


def combine_row_bytes(n_frames: int, width: int, method: str, threads: int = 2, weighted: bool = False) -> int:
    """Memory the streaming combine needs for one output row (its smallest block)."""
    from tui_stack.core import combine

    copies = getattr(combine, "_COPIES", {}).get(method, 6) + (3 if weighted else 0)
    return n_frames * width * 4 * copies * threads


def check_combine_memory(n_frames: int, width: int, method: str, memory_limit: int, weighted: bool = False) -> None:
    need = combine_row_bytes(n_frames, width, method, weighted=weighted)
    if need > memory_limit:
        raise InputError(f"one output row of {width} px over {n_frames} frames needs {human(need)} to combine, "
                         f"over the memory limit of {human(memory_limit)}; raise --memory-limit")


def image_bytes(shape: tuple[int, int], maps: bool = False) -> int:
    """A float32 FITS image on disk, with NUSED/NREJECTED (int16) and SIGMA (float32) maps."""
    h, w = shape
    return h * w * (4 + (8 if maps else 0)) + 4 * 2880


def check_disk(directory: Path, nbytes: int, what: str = "the outputs") -> None:
    """Exit 2 before writing if `nbytes` will not fit on the directory's file system."""
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # cannot tell: the write itself reports a full disk
    if nbytes + DISK_MARGIN > free:
        raise InputError(f"{directory}: {what} need {human(nbytes)} of free space and {human(DISK_MARGIN)} more kept "
                         f"free for the file system, but only {human(free)} are free there")


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux MemAvailable), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


DEMO_DRAW_BYTES = 40  # per pixel, peak of drawing one demo frame (tracemalloc, 512^2 to 2048^2)


def check_demo(size: int, n_frames: int, directory: Path, headless: bool) -> None:
    """`tui-stack demo --size/--frames` before a frame is drawn: one frame must fit in memory
    while it is drawn, and every frame (and with --headless the outputs) on the disk."""
    free = available_memory()
    draw = DEMO_DRAW_BYTES * size * size
    if free is not None and draw > free:
        raise InputError(f"--size {size}: drawing a {size}x{size} px frame needs {human(draw)} of memory, "
                         f"more than the {human(free)} available")
    frame = image_bytes((size, size))
    need = (n_frames + 1) * frame  # the frames and a flat
    if headless:
        need += (n_frames + 1) * frame  # the shifted frames and the stack
    check_disk(directory, need, f"--frames {n_frames} of --size {size} px" + (" and their outputs" if headless else ""))


def frame_shape(path: Path) -> tuple[int, int]:
    """(h, w) of a frame from its header alone."""
    from tui_stack.core import io

    hdul = io.open_fits(path)
    try:
        return io.image_shape(hdul[io._image_hdu_index(hdul, Path(path))])
    finally:
        hdul.close()


AUTO_STARS = 30  # at most this many comparison stars with stars = "auto"


def check_scale(cfg, shape: tuple[int, int], n_stars: int | None = None) -> None:
    """[scale] radius and annulus of a config against frames of `shape` (the wizard's steps call
    this as well as `run`: a radius typed there must not take the machine's memory either)."""
    from tui_stack.config import FIXED_RADIUS

    stars = cfg.scale.stars
    if n_stars is None:
        n_stars = (2 if cfg.scale.method == "growth" else 1) * AUTO_STARS if isinstance(stars, str) else len(stars)
    # radius "auto" with method "growth": twice each frame's FWHM, checked as the lab's 20 px
    radius = cfg.scale.aperture() or FIXED_RADIUS
    annulus = cfg.scale.annulus_radii()
    if annulus == "auto":
        annulus = (radius + 5.0, radius + 15.0)
    check_photometry(radius, annulus, shape, n_stars, int(cfg.combine.memory_limit))


def check_run(cfg, files: list[Path], ref_path: Path) -> int:
    """A run's sizes before it reads a pixel: apertures against the frame and the memory limit.
    Returns the bytes its outputs will take (for check_disk)."""
    shape = frame_shape(ref_path)
    check_scale(cfg, shape)
    need = image_bytes(shape, bool(cfg.combine.maps))
    if cfg.output.write_shifted:
        need += len(files) * image_bytes(shape)
    return need
