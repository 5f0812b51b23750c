"""The combine engine against ccdproc.combine and against direct formulas."""

import numpy as np
import pytest

from tui_stack.core import combine
from tui_stack.core.shifting import shift_frame


def stack(n=9, shape=(37, 23), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 10, size=(n,) + shape).astype(np.float32)
    data[rng.random(data.shape) < 0.02] += 5000  # cosmic rays
    return data


def ccdproc_combine(data, method, scale=None, **kw):
    import warnings

    from astropy.nddata import CCDData
    from ccdproc import combine as cc

    ccds = [CCDData(d, unit="adu") for d in data]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(cc(ccds, method=method, scale=scale, **kw).data)


def ours(data, block_rows=None, scales=None, **kw):
    scales = scales if scales is not None else [1.0] * len(data)
    srcs = [combine.ArraySource(d, scale=s) for d, s in zip(data, scales)]
    return combine.combine(srcs, combine.CombineParams(**kw), block_rows=block_rows)


@pytest.mark.parametrize("block_rows", [None, 1, 5, 7])
def test_average_median_equal_ccdproc(block_rows):
    data = stack()
    for method in ("average", "median"):
        ref = ccdproc_combine(data, method)
        got = ours(data, block_rows, method=method).data
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-4)


@pytest.mark.parametrize("n", [7, 8, 10])
def test_minmax_3_3_equals_ccdproc_clip_extrema(n):
    data = stack(n=n, seed=n)
    ref = ccdproc_combine(data, "average", clip_extrema=True, nlow=3, nhigh=3)
    res = ours(data, 4, method="minmax", nlow=3, nhigh=3)
    np.testing.assert_allclose(res.data, ref, rtol=2e-6, atol=1e-4)
    assert np.all(res.n_used == n - 6) and np.all(res.n_rejected == 6)


def test_sigmaclip_equals_ccdproc_median_centre():
    data = stack(n=12, seed=3)
    ref = ccdproc_combine(
        data, "average", sigma_clip=True, sigma_clip_low_thresh=3, sigma_clip_high_thresh=3,
        sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std,
    )
    res = ours(data, 3, method="sigmaclip", sigma=3.0)
    np.testing.assert_allclose(res.data, ref, rtol=2e-6, atol=1e-4)
    assert res.n_rejected.sum() > 0  # the planted cosmic rays were rejected


def test_scaled_combine_equals_ccdproc_scale():
    data = stack(n=6, seed=4)
    scales = np.array([1.0, 1.2, 0.8, 1.5, 0.9, 1.1])
    ref = ccdproc_combine(data, "median", scale=scales)
    got = ours(data, 6, scales=list(scales), method="median").data
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-4)


def masked_reference(data, masks, method, nlow=0, nhigh=0):
    """Direct per-pixel formula over the unmasked values."""
    n, h, w = data.shape
    out = np.full((h, w), np.nan)
    for y in range(h):
        for x in range(w):
            v = np.sort(data[~masks[:, y, x], y, x].astype(np.float64))
            if v.size == 0:
                continue
            if method == "average":
                out[y, x] = v.mean()
            elif method == "median":
                out[y, x] = np.median(v)
            elif method == "minmax":
                nl = int(nlow * v.size / n + 0.001)
                nh = int(nhigh * v.size / n + 0.001)
                kept = v[nl : v.size - nh]
                out[y, x] = kept.mean() if kept.size else np.nan
    return out


@pytest.mark.parametrize("method", ["average", "median", "minmax"])
def test_masks_honoured_and_blocks_do_not_matter(method):
    data = stack(n=8, shape=(19, 17), seed=9)
    masks = np.random.default_rng(2).random(data.shape) < 0.2
    masks[:, 0, 0] = True  # a pixel with no data at all
    want = masked_reference(data, masks, method, 3, 3)
    for rows in (None, 1, 4, 7):
        srcs = [combine.ArraySource(d, m) for d, m in zip(data, masks)]
        got = combine.combine(srcs, combine.CombineParams(method, nlow=3, nhigh=3), block_rows=rows)
        np.testing.assert_allclose(got.data, want, rtol=2e-6, atol=1e-4, equal_nan=True)
        assert np.isnan(got.data[0, 0])
        assert np.all(got.n_used + got.n_rejected == (~masks).sum(axis=0))
        if method == "average":  # the sigma map is the std of the values that went in
            want_sigma = np.ma.masked_array(data, masks).std(axis=0).filled(np.nan)
            np.testing.assert_allclose(got.sigma, want_sigma, rtol=1e-4, atol=1e-3, equal_nan=True)


def test_nan_input_is_masked_not_propagated():
    data = stack(n=5)
    data[2, 3, 4] = np.nan
    data[1, 3, 4] = np.inf
    got = ours(data, method="average").data
    assert np.isfinite(got).all()
    assert np.isclose(got[3, 4], data[[0, 3, 4], 3, 4].mean(), rtol=1e-6)


def test_file_source_offsets_equal_shift_frame(tmp_path):
    """Integer shifts as slice offsets read from disk equal the in-memory shift, masks included."""
    from astropy.io import fits

    data = stack(n=1, shape=(40, 30))[0]
    path = tmp_path / "f.fits"
    fits.PrimaryHDU((data).astype(np.int16) + 0, fits.Header()).writeto(path)
    on_disk = fits.getdata(path).astype(np.float32)
    for dx, dy in [(3, -5), (-7, 2), (0, 0), (29, 0), (-40, 3)]:
        src = combine.FileSource(path, 0, data.shape, dx, dy)
        parts = [src.read_rows(y0, min(40, y0 + 7)) for y0 in range(0, 40, 7)]
        got = np.vstack([p[0] for p in parts])
        got_mask = np.vstack([p[1] for p in parts])
        want, want_mask = shift_frame(on_disk, None, dx, dy, "integer")
        assert np.array_equal(got_mask, want_mask)
        assert np.array_equal(got[~got_mask], want[~want_mask])


def test_file_source_flip_equals_turned_then_shifted(tmp_path):
    from astropy.io import fits

    data = stack(n=1, shape=(40, 30), seed=5)[0]
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data).writeto(path)
    for dx, dy in [(3, -5), (-7, 2), (0, 0)]:
        src = combine.FileSource(path, 0, data.shape, dx, dy, flip=True)
        got = np.vstack([src.read_rows(y0, min(40, y0 + 7))[0] for y0 in range(0, 40, 7)])
        want, mask = shift_frame(data[::-1, ::-1].copy(), None, dx, dy, "integer")
        assert np.array_equal(got[~mask], want[~mask])


def test_memory_limit_bounds_block_rows():
    assert combine.rows_per_block(20, 4096, 256 * 1024**2) < 300
    assert combine.rows_per_block(1000, 4096, 16 * 1024**2) == 1


@pytest.mark.parametrize("maxiters", [1, 3])
def test_sigmaclip_iterations_equal_astropy_sigma_clip(maxiters):
    from astropy.stats import sigma_clip

    data = stack(n=15, seed=12)
    data[:4, 5, 5] += 300  # a cluster that needs more than one pass
    clipped = sigma_clip(data, sigma=2.5, maxiters=maxiters, cenfunc="median", stdfunc="std", axis=0)
    want = clipped.mean(axis=0).filled(np.nan)
    res = ours(data, 5, method="sigmaclip", sigma=2.5, maxiters=maxiters)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-4)
    assert np.array_equal(res.n_rejected, clipped.mask.sum(axis=0))


# ---- IRAF's and Siril's rejections, each against a plain per-pixel loop of its formula


def planted(n=12, seed=21):
    data = stack(n=n, shape=(9, 11), seed=seed).astype(np.float64).astype(np.float32)
    rng = np.random.default_rng(seed)
    data[rng.random(data.shape) < 0.06] -= 900  # cold outliers too
    data[3, 2, 2] = np.nan
    return data


def loop_reference(data, per_pixel):
    out = np.full(data.shape[1:], np.nan)
    for y in range(data.shape[1]):
        for x in range(data.shape[2]):
            v = data[:, y, x].astype(np.float64)
            kept = per_pixel(np.sort(v[np.isfinite(v)]))
            out[y, x] = np.mean(kept) if len(kept) else np.nan
    return out


def clip_loop(spread, low, high, maxiters):
    def per_pixel(v):
        for _ in range(maxiters):
            m = np.median(v)
            sd = spread(v, m)
            keep = (v >= m - low * sd) & (v <= m + high * sd)
            if keep.all():
                break
            v = v[keep]
        return v

    return per_pixel


def test_ccdclip_equals_its_noise_model():
    data = planted()
    gain, rdn, sky = 2.0, 8.0, 0.0
    model = lambda v, m: np.sqrt(rdn**2 + gain * abs(m) + 0.0) / gain  # noqa: E731
    want = loop_reference(data, clip_loop(model, 3.0, 3.0, 5))
    res = ours(data, 4, method="ccdclip", sigma=3.0, maxiters=5, gain=gain, rdnoise=rdn, sky=sky)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)
    assert res.n_rejected.sum() > 0


def test_winsorized_sigma_equals_sirils_rule():
    def wins(v, m):
        sd = np.std(v)
        for _ in range(10):
            new = 1.134 * np.std(np.clip(v, m - 1.5 * sd, m + 1.5 * sd))
            if np.isclose(new, sd, rtol=5e-4):
                return new
            sd = new
        return sd

    data = planted(seed=22)
    want = loop_reference(data, clip_loop(wins, 3.0, 3.0, 10))
    res = ours(data, 3, method="winsorized", sigma=3.0)
    np.testing.assert_allclose(res.data, want, rtol=1e-5, atol=1e-2, equal_nan=True)


def test_pclip_equals_irafs_rule():
    def per_pixel(v):
        k = len(v)
        m = np.median(v)
        rank = (k - 1) // 2 - int(np.rint(0.5 * k / 2))
        sd = abs(m - v[max(rank, 0)])
        return v[(v >= m - 3 * sd) & (v <= m + 3 * sd)]

    data = planted(seed=23)
    want = loop_reference(data, per_pixel)
    res = ours(data, 5, method="pclip", sigma=3.0, pclip=-0.5)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)


def test_asymmetric_limits():
    data = planted(seed=24)
    sd = lambda v, m: np.std(v)  # noqa: E731
    want = loop_reference(data, clip_loop(sd, 4.0, 2.0, 1))
    res = ours(data, 4, method="sigmaclip", lsigma=4.0, hsigma=2.0)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)
