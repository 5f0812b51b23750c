"""Resampling inside the combine's blocks (core.shifting.Warp, combine.WarpSource) against
known truth: analytic fields, known maps, scipy, whole-frame results."""

import numpy as np
import pytest
from astropy.io import fits

from tui_stack.core import combine, gaussfit, shifting, synthetic


def smooth(shape, x, y):
    """A band-limited field: any good kernel reproduces it closely."""
    return np.exp(-((x - shape[1] / 2) ** 2 + (y - shape[0] / 2) ** 2) / (2 * 14.0**2)) * 1000 + 5 * np.sin(x / 9 + y / 13)


def turn(deg, scale=1.0, mirror=False, shape=(90, 120), shift=(0.37, -0.61)):
    """The contract's map of a frame turned by `deg` about its centre (mirrored first)."""
    t = np.radians(deg)
    lin = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    if mirror:
        lin = lin @ np.diag([-1.0, 1.0])
    centre = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    c = centre - lin @ centre + shift
    return [lin[0, 0], lin[0, 1], c[0], lin[1, 0], lin[1, 1], c[1]]


MAPS = [turn(0), turn(0.6, 1.0002), turn(-1.0), turn(-4, 0.97), turn(30, mirror=True), turn(90), turn(135, 1.02),
        turn(180), turn(-170), turn(0, mirror=True), [1, 0.01, -2.2, -0.02, 0.99, 1.7]]


@pytest.mark.parametrize("m", MAPS, ids=range(len(MAPS)))
def test_warp_reproduces_a_smooth_field_through_any_map(m, passes):
    shape = (90, 120)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    img = smooth(shape, xx, yy).astype(np.float32)
    out, mask = shifting.warp_frame(img, None, m)
    xf, yf = m[0] * xx + m[1] * yy + m[2], m[3] * xx + m[4] * yy + m[5]
    truth = smooth(shape, xf, yf)
    assert np.abs(out - truth)[~mask].max() < 0.01 * 1000 / 100  # 1e-4 of the peak
    # masked: exactly what maps outside the frame (or too near its edge for the kernel)
    outside = (xf < -0.5) | (xf > shape[1] - 0.5) | (yf < -0.5) | (yf > shape[0] - 0.5)
    assert mask[outside].all()
    deep = (xf > 10) & (xf < shape[1] - 11) & (yf > 10) & (yf < shape[0] - 11)
    assert not mask[deep].any()
    assert np.all(out[mask] == 0)


def test_whole_pixel_maps_are_exact_copies(passes):
    rng = np.random.default_rng(2)
    img = rng.normal(0, 1, (30, 40)).astype(np.float32)
    out, mask = shifting.warp_frame(img, None, shifting.shift_matrix(3, -2))
    want, want_mask = shifting.shift_frame(img, None, 3, -2, "integer")
    assert np.array_equal(mask, want_mask) and np.array_equal(out, want)
    out, mask = shifting.warp_frame(img, None, shifting.shift_matrix(0, 0, flipped=True, shape=img.shape))
    assert not mask.any() and np.array_equal(out, img[::-1, ::-1])


@pytest.mark.parametrize("dx, dy", [(0.5, 0.5), (0.13, -0.71), (2.81, 1.27), (-3.42, 0.0)])
def test_shifted_stars_land_where_the_shift_puts_them(dx, dy, passes):
    """Alignment of the written pixels: no systematic offset above 0.01 px, flux kept."""
    rng = np.random.default_rng(int(100 * abs(dx)))
    shape = (160, 200)
    gx, gy = np.meshgrid(np.arange(30, 180, 30), np.arange(30, 140, 27))  # isolated: no blend pulls a centroid
    xs0, ys0 = gx.ravel() + rng.uniform(-5, 5, gx.size), gy.ravel() + rng.uniform(-5, 5, gx.size)
    stars = [(x, y, f) for x, y, f in zip(xs0, ys0, rng.uniform(3e4, 2e5, gx.size))]
    img = np.zeros(shape)
    for x, y, f in stars:
        synthetic.add_star(img, x, y, f, rng.choice([2.2, 3.0]), 3.0)
    out, mask = shifting.shift_frame(img.astype(np.float32), None, dx, dy, "subpixel")
    xs, ys = np.array([(x + dx, y + dy) for x, y, _ in stars]).T
    before = np.asarray(gaussfit.centroids_2dg(img.astype(np.float32), None, xs - dx, ys - dy, 11))
    after = np.asarray(gaussfit.centroids_2dg(out, mask, xs, ys, 11))
    moved = after - before
    assert abs(np.mean(moved[:, 0]) - dx) < 0.01 and abs(np.mean(moved[:, 1]) - dy) < 0.01
    assert np.abs(moved - [dx, dy]).max() < 0.05
    inner = (slice(8, -8), slice(8, -8))
    assert abs(out[inner].sum(dtype=np.float64) / img[8 - round(dy):-8 - round(dy) or None,
                                                     8 - round(dx):-8 - round(dx) or None].sum() - 1) < 1e-3


def test_poly5_reproduces_polynomials_of_degree_5(passes):
    x = np.arange(40, dtype=np.float64)
    row = (0.001 * (x - 20) ** 5 - 0.02 * (x - 20) ** 3 + x).astype(np.float64)
    img = np.tile(row.astype(np.float32), (12, 1))
    out, mask = shifting.warp_frame(img, None, shifting.shift_matrix(-0.3, 0), kernel="poly5")
    xs = x + 0.3
    want = 0.001 * (xs - 20) ** 5 - 0.02 * (xs - 20) ** 3 + xs
    np.testing.assert_allclose(out[6, ~mask[6]], want[~mask[6]], rtol=2e-5, atol=2e-3)


def test_kernel_weights_sum_to_one_and_interpolate():
    phase = np.linspace(0, 0.999, 50)
    for k in shifting.KERNELS:
        w = shifting.kernel_weights(k, phase)
        np.testing.assert_allclose(w.sum(axis=1), 1, atol=1e-12)
        r = w.shape[1] // 2
        np.testing.assert_allclose(w[0], np.eye(2 * r)[r - 1], atol=1e-12)  # phase 0: the pixel itself


def write(path, data, **header):
    hdr = fits.Header()
    for k, v in header.items():
        hdr[k] = v
    fits.PrimaryHDU(data, hdr).writeto(path)
    return path


@pytest.mark.parametrize("m", [shifting.shift_matrix(2.3, -1.6), turn(0.8, 1.0001, shape=(70, 50)),
                               turn(-170, shape=(70, 50)), turn(25, mirror=True, shape=(70, 50))], ids=range(4))
@pytest.mark.parametrize("rows", [1, 6, 70])
def test_warp_source_blocks_equal_the_whole_frame(tmp_path, m, rows, passes):
    """Block by block from disk (BLANK pixels masked) = the whole frame in memory: same pixels."""
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 3000, (70, 50)).astype(np.int16)
    raw[30, 20] = -32768  # BLANK: no data
    path = write(tmp_path / "f.fits", raw, BLANK=-32768, BZERO=100.0)
    frame = fits.getdata(path).astype(np.float32)  # BZERO applied, BLANK as NaN
    mask = np.isnan(frame)
    assert mask[30, 20] and mask.sum() == 1
    want, want_mask = shifting.warp_frame(frame, mask, m)
    src = combine.WarpSource(path, 0, raw.shape, m)
    got = np.empty(raw.shape, np.float32)
    for y0 in range(0, 70, rows):
        src.read_into(y0, min(70, y0 + rows), got[y0:y0 + rows])
    got_mask = np.isnan(got)
    assert np.array_equal(got_mask, want_mask)
    assert np.array_equal(got[~got_mask], want[~want_mask])
    assert got_mask[30, 20] or m[0] != 1  # a masked input pixel masks what it touched
    mem = combine.WarpSource.of_array(frame, mask, m)
    got2 = np.empty_like(got)
    mem.read_into(0, 70, got2)
    assert np.array_equal(got2, got, equal_nan=True)


def test_combine_of_warp_sources_equals_combine_of_resampled_frames(passes):
    rng = np.random.default_rng(9)
    frames = rng.normal(100, 5, (7, 60, 48)).astype(np.float32)
    maps = [turn(a, 1 + 1e-4 * a, shape=(60, 48), shift=(0.3 * a, -0.2 * a)) for a in np.linspace(-1, 1, 7)]
    for method in ("median", "sigclip", "winsorized"):
        params = combine.CombineParams(method)
        direct = combine.combine([combine.WarpSource.of_array(f, None, m, zero=100, scale=1.1)
                                  for f, m in zip(frames, maps)], params, block_rows=9)
        whole = [shifting.warp_frame(f, None, m) for f, m in zip(frames, maps)]
        want = combine.combine([combine.ArraySource(d, k, zero=100, scale=1.1) for d, k in whole], params)
        assert np.array_equal(direct.data, want.data, equal_nan=True)
        assert np.array_equal(direct.n_used, want.n_used)


def test_memory_limit_counts_the_resampling():
    src = combine.WarpSource.of_array(np.zeros((4096, 4096), np.float32), None, turn(1.0, shape=(4096, 4096)))
    plain = combine.rows_per_block(16, 4096, 256 << 20, "median")
    rows = combine.rows_for([src] * 16, "median", 256 << 20)
    assert rows < plain
    assert rows * combine._row_bytes(16, 4096, "median", 2, False) + 2 * src.work_bytes(rows) <= 256 << 20


def test_large_turns_are_combined_in_tiles_that_read_about_their_own_size(passes):
    """A block of whole rows of a frame turned by 20-40 degrees reads the band of frame rows its
    width maps into (at 30 degrees on 2048^2 x 8 frames the combine took 273 s, against 6.5 s in
    tiles). In square tiles each frame's reads are about 3x the pixels made here (the kernel's
    halo around small tiles; whole rows: 7.7x), the pixels are those of whole rows, and small
    turns and avsigclip keep whole rows."""
    rng = np.random.default_rng(3)
    shape = (300, 320)
    frames = rng.normal(100, 5, (5, *shape)).astype(np.float32)
    maps = [turn(a, shape=shape) for a in (0, 20, 27, 33, 40)]
    read = [0]

    def sources(ms=maps):
        out = [combine.WarpSource.of_array(f, None, m) for f, m in zip(frames, ms)]
        for s in out:
            inner = s._read_box

            def counted(r0, r1, c0, c1, inner=inner):
                read[0] += (r1 - r0) * (c1 - c0)
                return inner(r0, r1, c0, c1)

            s._read_box = counted
        return out

    limit = 2 << 20
    params = combine.CombineParams("median")
    rows, cols = combine.block_shape(sources(), "median", limit)
    assert cols is not None and rows == cols < 200
    whole_rows = combine.rows_for(sources(maps[:1] * 5), "median", limit)
    assert sources()[1].box_rows(whole_rows) > 4 * whole_rows  # what tiles avoid
    tiled = combine.combine(sources(), params, memory_limit=limit)
    pixels = 5 * shape[0] * shape[1]
    tiles_read, read[0] = read[0], 0
    srcs = sources()
    for y0 in range(0, shape[0], whole_rows):
        combine.combine_rows(srcs, params, y0, min(shape[0], y0 + whole_rows))
    assert tiles_read < 3.5 * pixels and read[0] > 2 * tiles_read  # measured 3.2 and 7.7 x pixels
    want = combine.combine_rows(sources(), params, 0, shape[0])  # one block: the whole frame
    assert np.array_equal(tiled.data, want[0], equal_nan=True) and np.array_equal(tiled.n_used, want[1])
    assert np.isfinite(tiled.data).mean() > 0.9
    assert combine.block_shape(sources(), "avsigclip", limit)[1] is None
    assert combine.block_shape(sources([turn(a, shape=shape) for a in (0, 0.3, 0.6, 0.9, 1.0)]), "median", limit)[1] is None


def test_thousands_of_frames_within_the_open_file_limit(tmp_path):
    """Frames are opened for each block and closed again: 1100 frames under a soft limit of
    256 open files combine (the default limit is 1024)."""
    resource = pytest.importorskip("resource")
    rng = np.random.default_rng(0)
    data = rng.normal(10, 1, (1100, 6, 5)).astype(np.float32)
    paths = [write(tmp_path / f"f{i:04d}.fits", d) for i, d in enumerate(data)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        srcs = [combine.FileSource(p, 0, (6, 5)) for p in paths[:550]]
        srcs += [combine.WarpSource(p, 0, (6, 5), shifting.shift_matrix(0.5, 0)) for p in paths[550:]]
        got = combine.combine(srcs, combine.CombineParams("average"), block_rows=2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    shifted = np.array([shifting.shift_frame(d, None, 0.5, 0, "subpixel") for d in data[550:]])
    vals = np.concatenate([data[:550], np.where(shifted[:, 1], np.nan, shifted[:, 0])])
    np.testing.assert_allclose(got.data, np.nanmean(vals.astype(np.float64), axis=0), rtol=1e-5)


def test_subpixel_run_writes_no_temporary_frames_and_combines_the_written_pixels(field_subpixel, tmp_path, monkeypatch):
    """The stack step resamples inside its blocks: a subpixel run without write_shifted
    writes no frame (no scratch folder, no s<name> anywhere), and its combined image equals
    a combine of the s<name> frames a run with write_shifted writes (the same resampler)."""
    from tui_stack import pipeline, rundir
    from tui_stack.pipeline import scale

    from conftest import make_config

    def refuse(*a, **k):
        raise AssertionError("a frame was written or a scratch folder made")

    monkeypatch.setattr(rundir.OutputDir, "scratch", refuse)
    monkeypatch.setattr(scale, "write_shifted", refuse)
    plain = pipeline.run(make_config(field_subpixel, tmp_path / "plain", shift__mode="subpixel",
                                     combine__method="median", output__write_shifted=False))
    assert sorted(p.name for p in (tmp_path / "plain").iterdir() if not p.name.startswith(".")) == [
        "combined_median.fits", "report.json"]
    monkeypatch.undo()
    written = pipeline.run(make_config(field_subpixel, tmp_path / "written", shift__mode="subpixel",
                                       combine__method="median", output__write_shifted=True))
    assert any(abs(f.applied_shift_x % 1) > 0.05 for f in written.frames)  # really subpixel
    srcs = [combine.ArraySource(np.nan_to_num(d), np.isnan(d), scale=f.scale)
            for f in written.frames if f.used
            for d in [fits.getdata(tmp_path / "written" / f"s{f.name}").astype(np.float32)]]
    want = combine.combine(srcs, combine.CombineParams("median")).data
    got = plain.combined[0].data
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3 * np.nanstd(want))


@pytest.mark.parametrize("method, step", [("median", 0.09), ("winsorized", 0.09), ("gesd", 0.09), ("sigclip", 0.09),
                                          ("median", 6.0)])
def test_resampling_combine_peak_within_memory_limit(tmp_path, method, step):
    """Frames resampled inside the blocks (subpixel shifts, and turns of up to 1 degree, or of
    up to 40 degrees, combined in tiles) stay within memory_limit as frames read by slices do
    (test_memory's frames and bound)."""
    import gc
    import tracemalloc

    import test_memory as tm

    paths = tm.write_frames(tmp_path)
    h, w = tm.SHAPE
    maps = []
    for i, (dx, dy) in enumerate(tm.SHIFTS):
        m = turn(step * i, 1 + 1e-5 * i, shape=tm.SHAPE, shift=(dx + 0.37, dy - 0.21))
        maps.append(m if i % 2 else shifting.shift_matrix(dx + 0.37, dy - 0.21))

    def srcs():
        return [combine.WarpSource(p, 0, tm.SHAPE, m, zero=tm.SKY + 20 * i, scale=1 / tm.TRANSPARENCY[i])
                for i, (p, m) in enumerate(zip(paths, maps))]

    params = tm.method_params(method)
    top = [combine.WarpSource(p, 0, tm.SHAPE, m, out_shape=(8, w)) for p, m in zip(paths, maps)]
    combine.combine(top, params, threads=1)  # imports and one-time caches, not measured
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = combine.combine(srcs(), params, memory_limit=tm.MEMORY_LIMIT)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    bound = tm.MEMORY_LIMIT + tm.output_bytes(True) + tm.OVERHEAD
    assert peak <= bound, f"{method}: peak {peak / 2**20:.1f} MiB > {bound / 2**20:.1f} MiB"
    assert peak > tm.output_bytes(True) + tm.MEMORY_LIMIT // 4
    assert np.isfinite(result.data).mean() > (0.99 if step < 1 else 0.6)


def test_quarter_turn_and_mirror_are_exact_copies_from_disk(tmp_path, passes):
    """Whole-number maps (a quarter turn, a mirror, a whole-pixel shift): the resampling
    source copies pixels exactly, as integer mode needs."""
    rng = np.random.default_rng(6)
    data = rng.normal(0, 1, (30, 30)).astype(np.float32)
    path = write(tmp_path / "f.fits", data)
    h, w = data.shape
    for m, want in [([0, -1, w - 1 + 2, 1, 0, -1], None), ([-1, 0, w - 1, 0, 1, 0], data[:, ::-1]),
                    ([-1, 0, w - 1, 0, -1, h - 1], data[::-1, ::-1])]:
        src = combine.WarpSource(path, 0, data.shape, m)
        got = np.empty_like(data)
        for y0 in range(0, h, 7):
            src.read_into(y0, min(h, y0 + 7), got[y0:y0 + 7])
        yy, xx = np.mgrid[0:h, 0:w]
        xf, yf = m[0] * xx + m[1] * yy + m[2], m[3] * xx + m[4] * yy + m[5]
        inside = (xf >= 0) & (xf < w) & (yf >= 0) & (yf < h)
        expect = np.full(data.shape, np.nan, np.float32)
        expect[inside] = data[yf[inside].astype(int), xf[inside].astype(int)]
        assert np.array_equal(got, expect, equal_nan=True)
        if want is not None:
            assert np.array_equal(got, want)


def test_calibrated_subpixel_run_resamples_calibrated_rows(tmp_path):
    """With [calibrate], the frames resampled inside the blocks are the calibrated ones
    (bias, dark, flat, overscan, trim applied as their rows are read): the combined image
    equals a combine of the calibrated s<name> frames the same run writes."""
    from tui_stack import pipeline
    from tui_stack.core import synthetic_calib as sc

    import test_calibrate as tc

    raw = sc.write_raw_set(tmp_path / "raw", tc.SPEC)
    cfg = tc._run_config(raw, tmp_path / "out", tc._calibrate_keys(raw))
    cfg.shift.mode = "subpixel"
    cfg.output.write_shifted = True
    state = pipeline.run(cfg)
    used = [f for f in state.frames if f.used]
    assert any(abs(f.applied_shift_x % 1) > 0.05 for f in used)
    srcs = [combine.ArraySource(np.nan_to_num(d), np.isnan(d), scale=f.scale)
            for f in used for d in [fits.getdata(tmp_path / "out" / f"s{f.name}").astype(np.float32)]]
    want = combine.combine(srcs, combine.CombineParams("average")).data
    got = state.combined[0].data
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3 * np.nanstd(want))
