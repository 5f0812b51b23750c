"""The compiled resampling passes (core/_resample.c) against the numpy passes they replace:
the same float32 pixels and masks through every kind of map, and the switch between them."""

import os
import shutil
import subprocess
import sys
import sysconfig
import threading

import numpy as np
import pytest

from tui_stack.core import combine, shifting

from test_resample import turn

SHAPE = (150, 130)
MAPS = {
    "subpixel shift": shifting.shift_matrix(2.37, -5.81),
    "meridian flip": shifting.shift_matrix(-1.4, 0.62, flipped=True, shape=SHAPE),
    "turn 0.7, scaled": turn(0.7, 1.0003, shape=SHAPE),
    "turn -1": turn(-1.0, shape=SHAPE),
    "turn 30, mirrored": turn(30, mirror=True, shape=SHAPE),
    "turn 89, scaled (three shears)": turn(89, 0.98, shape=SHAPE),
    "turn -170": turn(-170, shape=SHAPE),
    "scale only": [1.013, 0.0, 1.2, 0.0, 0.991, -3.4],
    "affine, x-shear first": [0.2, 1.1, 5.0, -0.9, 0.1, 120.0],
}
compiled = pytest.mark.skipif(shifting.COMPILED is None, reason="compiled passes not built (or TUI_STACK_PURE=1)")


def frame():
    rng = np.random.default_rng(12)
    data = rng.normal(100, 30, SHAPE).astype(np.float32)
    data[40:43, 50:60] = 6e4  # a bright streak: large steps for the kernel
    mask = rng.random(SHAPE) < 0.002
    mask[:, :3] = True  # a masked edge
    return data, mask


def both(fn):
    """fn() through the numpy passes, then through the compiled ones."""
    keep = shifting.COMPILED
    try:
        shifting.COMPILED = None
        want = fn()
    finally:
        shifting.COMPILED = keep
    return want, fn()


@compiled
@pytest.mark.parametrize("kernel", ["poly5", "lanczos4", "linear"])
@pytest.mark.parametrize("name", list(MAPS))
def test_compiled_passes_give_the_numpy_pixels(name, kernel):
    data, mask = frame()
    (want, want_mask), (got, got_mask) = both(lambda: shifting.warp_frame(data, mask, MAPS[name], kernel=kernel, block=37))
    assert 0.02 < got_mask.mean() < 0.98  # the map keeps part of the frame, and masks some
    assert np.array_equal(got_mask, want_mask)
    assert np.array_equal(got, want)  # bit for bit: the same sums in the same order


@compiled
def test_compiled_blocks_from_disk_equal_the_numpy_ones(tmp_path):
    from astropy.io import fits

    data, mask = frame()
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(np.where(mask, np.nan, data)).writeto(path)
    for m in MAPS.values():
        def blocks():
            src = combine.WarpSource(path, 0, SHAPE, m)
            out = np.empty(SHAPE, np.float32)
            for y0 in range(0, SHAPE[0], 11):
                src.read_into(y0, min(SHAPE[0], y0 + 11), out[y0:y0 + 11])
            return out
        want, got = both(blocks)
        assert np.array_equal(got, want, equal_nan=True)


@compiled
def test_two_threads_resample_as_one():
    """The passes run without the GIL on the combine's two threads: each thread's pixels are
    those it gets alone."""
    data, mask = frame()
    maps = [MAPS["turn 0.7, scaled"], MAPS["turn 30, mirrored"]]
    alone = [shifting.warp_frame(data, mask, m, block=7)[0] for m in maps]
    got = [None, None]

    def work(i):
        for _ in range(5):
            got[i] = shifting.warp_frame(data, mask, maps[i], block=7)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(g, a) for g, a in zip(got, alone))


@compiled
def test_bad_arguments_raise_instead_of_reading_outside():
    c = shifting.COMPILED
    src = np.zeros((10, 20), np.float32)
    w = np.full((6, 1), 1 / 6, np.float32)
    with pytest.raises(IndexError, match="along_x"):
        c.along_x(src, np.arange(20, dtype=np.int64), w, np.empty((10, 20), np.float32))  # taps past the row
    with pytest.raises(IndexError, match="shear_cols"):
        c.shear_cols(src, np.full(20, -1, np.int64), w, np.empty((5, 20), np.float32))
    with pytest.raises(ValueError, match="float32"):
        c.along_y(src.astype(np.float64), np.arange(4, dtype=np.int64), w, np.empty((4, 20), np.float32))
    with pytest.raises(ValueError, match="rows must be contiguous"):
        c.along_y(src[:, ::2], np.arange(4, dtype=np.int64), w, np.empty((4, 10), np.float32))
    with pytest.raises(ValueError, match="weights"):
        c.along_x(src, np.arange(10, dtype=np.int64), np.ones((6, 3), np.float32), np.empty((10, 10), np.float32))


def test_the_switch():
    """Built wherever a C compiler and Python's headers are (pip install builds it);
    TUI_STACK_PURE=1 picks the numpy passes."""
    code = "from tui_stack.core import shifting; print(shifting.COMPILED is not None)"
    env = dict(os.environ, TUI_STACK_PURE="1")
    pure = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert pure.stdout.strip() == "False"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if os.environ.get("TUI_STACK_PURE", "0") in ("", "0") and shutil.which(cc) and headers:
        assert shifting.COMPILED is not None, "a C compiler is here but core/_resample.c was not built: pip install -e ."
