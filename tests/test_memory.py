"""Peak memory of every combine method stays within memory_limit, as ccdproc's own
memory-use test checks its combine: the frames are read block by block from files, so what
the combine holds beyond its output must not grow with the frames.

Measured with tracemalloc, which sees numpy's allocations (numpy reports them to it) and
the bytes of every positioned read, in all threads. The bound per method is

    memory_limit + the output (image, and the maps when asked for) + OVERHEAD

OVERHEAD covers what is not a block: the sources' headers and file handles, the
thread pool, the block bookkeeping (0.5-1.3 MiB above the output measured with one-row
blocks, every method).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from tui_stack import compute
from tui_stack.core import combine

N_FRAMES, SHAPE = 12, (1024, 1024)
MEMORY_LIMIT = 16 * 1024**2
OVERHEAD = 2 * 1024**2
SKY = 1000.0
TRANSPARENCY = [1 - 0.03 * i for i in range(N_FRAMES)]
SHIFTS = [(0, 0), (3, -2), (-5, 4), (7, 1), (-1, -6), (2, 8), (-8, -3), (4, 5), (-3, 2), (6, -7), (1, 3), (-6, 0)]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("memory"))


def write_frames(d):
    """12 float32 frames on disk: a sky level and a transparency each (taken out again by
    the sources' zero and scale), noise as ccdclip's model has it for that sky at gain 1,
    cosmic rays, a block of bad (NaN) pixels in one; combined at integer shifts, so every
    block has masked margins and the rejection methods have work to do."""
    from astropy.io import fits

    rng = np.random.default_rng(3)
    paths = []
    for i in range(N_FRAMES):
        img = rng.normal(0.0, np.sqrt(SKY), SHAPE).astype(np.float32) * np.float32(TRANSPARENCY[i])
        img += np.float32(SKY + 20 * i)
        hits = rng.integers(0, SHAPE[0] * SHAPE[1], 3000)
        img.reshape(-1)[hits] += rng.uniform(200, 20000, hits.size).astype(np.float32)
        if i == 4:
            img[300:340, 500:700] = np.nan
        path = d / f"f{i:02d}.fits"
        fits.PrimaryHDU(img).writeto(path)
        paths.append(path)
    return paths


def sources(paths):
    return [combine.FileSource(p, 0, SHAPE, dx, dy, zero=SKY + 20 * i, scale=1 / TRANSPARENCY[i])
            for i, (p, (dx, dy)) in enumerate(zip(paths, SHIFTS))]


def output_bytes(maps: bool) -> int:
    pixels = SHAPE[0] * SHAPE[1]
    return pixels * (4 + (2 + 2 + 4 if maps else 0))  # float32 image; int16 used, rejected; float32 sigma


def method_params(method: str, **kw) -> combine.CombineParams:
    return combine.CombineParams(method, **{"nlow": 2, "nhigh": 2, "sigma": 3.0, "sky": SKY, **kw})


def peak_of_combine(paths, params: combine.CombineParams, maps: bool = True, **kw) -> tuple[int, combine.CombineResult]:
    """Bytes allocated at the peak of one combine through the pipeline's local engine, above
    what was allocated before it started."""
    srcs = sources(paths)
    engine = compute.LocalCompute()
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = engine.combine(srcs, params, memory_limit=MEMORY_LIMIT, maps=maps, **kw)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak, result


@pytest.fixture(scope="module", autouse=True)
def warm(frames):
    """Imports and one-time caches (bottleneck, scipy.stats, the sorting networks) before
    anything is measured, on the frames' first rows: paid once per process, not per combine."""
    for method in combine.METHODS:
        top = [combine.FileSource(p, 0, SHAPE, out_shape=(8, SHAPE[1])) for p in frames]
        combine.combine(top, method_params(method), threads=1)


@pytest.mark.parametrize("method", combine.METHODS)
def test_peak_within_memory_limit(frames, method):
    peak, result = peak_of_combine(frames, method_params(method))
    bound = MEMORY_LIMIT + output_bytes(True) + OVERHEAD
    print(f"{method}: peak {peak / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB")
    assert peak <= bound, f"{method}: peak {peak / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"
    # the measurement sees the blocks: the peak is above the output by at least the two
    # blocks of values in flight (one per thread)
    rows = combine.rows_per_block(N_FRAMES, SHAPE[1], MEMORY_LIMIT, method)
    assert peak > output_bytes(True) + 2 * N_FRAMES * rows * SHAPE[1] * 4
    # and the combine did its work (no all-NaN image)
    assert np.isfinite(result.data).mean() > 0.999


@pytest.mark.parametrize("params", [method_params("sigclip", sigma=1.0),
                                    method_params("sigmaclip", sigma=1.0, maxiters=5)], ids=["sigclip", "sigmaclip"])
def test_peak_within_memory_limit_when_most_values_reject(frames, params):
    peak, result = peak_of_combine(frames, params)
    print(f"{params.method} sigma=1: peak {peak / 2**20:.1f} MiB, rejected {result.n_rejected.mean():.1f} of 12")
    assert peak <= MEMORY_LIMIT + output_bytes(True) + OVERHEAD


def test_peak_without_maps(frames):
    peak, result = peak_of_combine(frames, method_params("median"), maps=False)
    assert result.n_used is None
    assert peak <= MEMORY_LIMIT + output_bytes(False) + OVERHEAD


def test_bound_catches_unbounded_blocks(frames):
    """The bound can fail: the whole image as one block (12 frames x 4 MiB, with its working
    copies) is far past it."""
    peak, _ = peak_of_combine(frames, method_params("median"), block_rows=SHAPE[0])
    assert peak > MEMORY_LIMIT + output_bytes(True) + OVERHEAD
