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


def masked_reference(data, masks, method, nlow=0, nhigh=0, sigma=False):
    """Direct per-pixel formula over the unmasked values (with `sigma`: also the std of
    what went in)."""
    n, h, w = data.shape
    out = np.full((h, w), np.nan)
    sig = np.full((h, w), np.nan)
    for y in range(h):
        for x in range(w):
            v = np.sort(data[~masks[:, y, x], y, x].astype(np.float64))
            if v.size == 0:
                continue
            sig[y, x] = v.std()
            if method == "average":
                out[y, x] = v.mean()
            elif method == "median":
                out[y, x] = np.median(v)
            elif method == "minmax":
                nl = int(nlow * v.size / n + 0.001)
                nh = int(nhigh * v.size / n + 0.001)
                kept = v[nl : v.size - nh]
                out[y, x] = kept.mean() if kept.size else np.nan
                sig[y, x] = kept.std() if kept.size else np.nan
    return (out, sig) if sigma else out


@pytest.mark.parametrize("method", ["average", "median", "minmax"])
def test_masks_honoured_and_blocks_do_not_matter(method):
    data = stack(n=8, shape=(19, 17), seed=9)
    masks = np.random.default_rng(2).random(data.shape) < 0.2
    masks[:, 0, 0] = True  # a pixel with no data at all
    want, want_sigma = masked_reference(data, masks, method, 3, 3, sigma=True)
    for rows in (None, 1, 4, 7):
        srcs = [combine.ArraySource(d, m) for d, m in zip(data, masks)]
        got = combine.combine(srcs, combine.CombineParams(method, nlow=3, nhigh=3), block_rows=rows)
        np.testing.assert_allclose(got.data, want, rtol=2e-6, atol=1e-4, equal_nan=True)
        assert np.isnan(got.data[0, 0])
        assert np.all(got.n_used + got.n_rejected == (~masks).sum(axis=0))
        # the sigma map is the std of the values that went in
        np.testing.assert_allclose(got.sigma, want_sigma, rtol=1e-4, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("n", list(range(1, 21)) + [31, 32, 33, 64, 100])
def test_sorting_network_equals_np_sort(n):
    rng = np.random.default_rng(n)
    planes = rng.normal(0, 1, (n, 3, 2051)).astype(np.float32)  # odd pixel count: a partial chunk
    planes[:, 0, :200] = np.round(planes[:, 0, :200])  # ties
    planes[:, 1, :50] = 7.0  # all equal
    want = np.sort(planes, axis=0)
    np.testing.assert_array_equal(combine.select_ranks(planes, tuple(range(n))), want)
    mid = ((n - 1) // 2, n // 2)
    np.testing.assert_array_equal(combine.select_ranks(planes, mid), want[list(mid)])
    planes[n // 2, 2, 5] = np.nan  # a NaN anywhere reaches every output of its pixel
    assert np.isnan(combine.select_ranks(planes, mid)[:, 2, 5]).all()


@pytest.mark.parametrize("n", [2, 7, 16, 130])  # 130: past the network, np.sort
@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_median_is_numpys_median_bit_for_bit(n):
    data = stack(n=n, shape=(21, 13), seed=n)
    data[:, 2, 3] = np.nan
    data[: n // 2, 4, 4] = np.nan
    got = combine.combine([combine.ArraySource(d) for d in data], combine.CombineParams("median"), block_rows=5)
    want = np.nanmedian(data.astype(np.float64), axis=0).astype(np.float32)
    np.testing.assert_array_equal(got.data, want)
    assert got.n_used[4, 4] == n - n // 2 and got.n_used[2, 3] == 0 and got.n_used[0, 0] == n


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


def siril_winsorized(v, low=3.0, high=3.0):
    """Siril 1.0's WINSORIZED (src/stacking/rejection_float.c), transcribed: the n - 1 std
    (GSL's), the values pulled in to median +- 1.5 sigma again and again (cumulatively) until
    1.134 x their std settles, reject beyond low / high sigma, and no more in a pass once
    N - r <= 4 (r counting every pass's rejections); again while something went and N > 3.
    Siril takes the rejections in frame order where that floor binds; this, and tui-stack,
    the farthest from the median first."""
    st, n0, r = np.sort(v), len(v), 0
    while True:
        n, med, sigma = len(st), np.median(st), st.std(ddof=1)
        w = st.copy()
        while True:
            w = np.clip(w, med - 1.5 * sigma, med + 1.5 * sigma)
            last, sigma = sigma, 1.134 * w.std(ddof=1)
            if not abs(sigma - last) > last * 5e-4:
                break
        out = np.flatnonzero((med - st > low * sigma) | (st - med > high * sigma))
        out = out[np.argsort(-np.abs(st[out] - med))][:max(n - r - 4, 0)]
        r += len(out)
        st = np.delete(st, out)
        if not (len(out) and len(st) > 3):
            return st


def test_winsorized_equals_sirils_rule():
    data = planted(seed=22)
    want = loop_reference(data, siril_winsorized)
    res = ours(data, 3, method="winsorized", sigma=3.0)
    np.testing.assert_allclose(res.data, want, rtol=1e-5, atol=1e-2, equal_nan=True)


@pytest.mark.parametrize("values,siril", [
    ([871, 889, 900, 905, 916, 991, 1028, 1159, 1579, 1675, 1825, 2857], 957.37),
    ([756, 819, 840, 844, 845, 960, 967, 994, 1454, 1499, 1777, 2716], 878.13),
    ([805, 880, 901, 952, 953, 1022, 1043, 1051, 1528, 1721, 1785, 3235], 950.88),
])
def test_winsorized_matches_siril_pixels(values, siril):
    """Pixels of the 12 pydia frames as Siril 1.0.6 stacked them (rej w 3 3, -nonorm; trial 8).
    Before: 10 sigma passes at most (these need up to 26) and the n std: 24% of the pixels apart
    from Siril, now 0.27% (where Siril's floor picks by frame order)."""
    data = np.stack([np.full((1, 2), x, np.float32) for x in values])
    np.testing.assert_allclose(ours(data, None, method="winsorized", sigma=3.0).data, siril, atol=0.02)


@pytest.mark.parametrize("n", [11, 12])
def test_pclip_equals_irafs_rule(n):
    """IRAF's icpclip.gx: the rank offset is fixed once from the number of images N (t_imcombine.x
    of IRAF 2.17: i = int(N / 2), pclip * i truncated), not from each pixel's count: for 11
    images and pclip -0.5, 2 ranks (ours took nint(0.5 * 11 / 2) = 3: 30% of the pixels apart
    from IRAF, trial 8 #3). A masked value leaves the offset as it is."""
    offset = int(0.5 * int(n / 2))

    def per_pixel(v):
        m = np.median(v)
        sd = abs(m - v[max((len(v) - 1) // 2 - offset, 0)])
        return v[(v > m - 3 * sd) & (v < m + 3 * sd)] if sd > 0 and len(v) >= 3 else v

    data = planted(n=n, seed=23)
    want = loop_reference(data, per_pixel)
    res = ours(data, 5, method="pclip", sigma=3.0, pclip=-0.5)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("values,iraf", [
    ([815, 824, 847, 915, 954, 956, 975, 1465, 1489, 1725, 2874], 929.4),
    ([957, 1001, 1011, 1069, 1091, 1098, 1126, 1458, 1506, 1848, 2829], 1096.0),  # 1011 is 3 spreads off: out
    ([1775, 1891, 1956, 2160, 2201, 2364, 3839, 4992, 5708, 6356, 6382, 6538], 3602.1818),  # 6538 too
])
def test_pclip_matches_iraf_imcombine_pixels(values, iraf):
    """Pixels of the pydia frames (11 and 12) as IRAF 2.17's imcombine gave them (reject=pclip,
    pclip=-0.5, lsigma=hsigma=3, mclip; trial 8). With the whole frames: every pixel equal."""
    rng = np.random.default_rng(0)
    data = np.stack([np.full((2, 3), x, np.float32) for x in rng.permutation(np.array(values, np.float32))])
    res = ours(data, None, method="pclip", sigma=3.0, pclip=-0.5)
    np.testing.assert_allclose(res.data, iraf, rtol=1e-6)


def test_asymmetric_limits():
    data = planted(seed=24)
    sd = lambda v, m: np.std(v)  # noqa: E731
    want = loop_reference(data, clip_loop(sd, 4.0, 2.0, 1))
    res = ours(data, 4, method="sigmaclip", lsigma=4.0, hsigma=2.0)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)


def max_keep(n, nkeep):
    return min(n, nkeep) if nkeep >= 0 else max(0, n + nkeep)


def add_back(v, kept_mask, centre, nkeep):
    """IRAF: the rejected values with the smallest |x - centre| go back until nkeep are kept."""
    want = max_keep(len(v), nkeep)
    order = np.argsort(np.abs(v - centre), kind="stable")
    for j in order:
        if kept_mask.sum() >= want:
            break
        kept_mask[j] = True
    return v[kept_mask]


def iraf_clip_loop(spread, low, high, nkeep=1, mclip=True):
    """imcombine's sigclip/ccdclip/avsigclip as its help page describes them, one pixel."""
    def per_pixel(v):
        keep = np.ones(len(v), bool)
        floor = max(3, max_keep(len(v), nkeep) + 1)
        first = True
        while keep.sum() >= floor:
            k = v[keep]
            c = np.median(k) if mclip else (np.mean(k[1:-1]) if first and len(k) > 2 else np.mean(k))
            s = spread(k, c)
            new = keep & (v >= c - low * s) & (v <= c + high * s)
            first = False
            if new.sum() == keep.sum():
                break
            keep = new
        k = v[keep]
        c = np.median(k) if mclip else np.mean(k)
        return add_back(v, keep, c if len(k) else np.median(v), nkeep)

    return per_pixel


@pytest.mark.parametrize("nkeep", [1, -2, 9])
@pytest.mark.parametrize("mclip", [True, False])
def test_sigclip_equals_irafs_rule(nkeep, mclip):
    data = planted(seed=25)
    data[:, :3] = np.random.default_rng(5).normal(100, 10, size=(12, 3, 11))  # borderline values
    spread = lambda v, c: np.sqrt(np.sum((v - c) ** 2) / (len(v) - 1))  # noqa: E731
    want = loop_reference(data, iraf_clip_loop(spread, 1.3, 1.6, nkeep, mclip))
    res = ours(data, 4, method="sigclip", lsigma=1.3, hsigma=1.6, nkeep=nkeep, mclip=mclip)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)
    assert res.n_rejected.sum() > 0
    if nkeep == -2:
        assert res.n_rejected.max() <= 2
    if nkeep == 9:
        assert res.n_used[np.isfinite(data).all(axis=0)].min() >= 9


def test_avsigclip_equals_irafs_rule():
    data = planted(seed=26) + 1000.0  # a Poisson-like level, as the model assumes
    data[:, :4] = np.random.default_rng(6).normal(1000, 30, size=(12, 4, 11))  # borderline values
    lsig, hsig = 1.5, 2.0
    want = np.full(data.shape[1:], np.nan)
    for y in range(data.shape[1]):
        # the row's sigma^2 per unit signal, from every pixel with >= 3 values, before rejecting
        ssq = count = 0.0
        for x in range(data.shape[2]):
            v = data[:, y, x][np.isfinite(data[:, y, x])].astype(np.float64)
            c = np.median(v)
            ssq += np.sum((v - c) ** 2) / max(1.0, c)
            count += len(v)
        row_sigma = np.sqrt(ssq / (count - 1))
        spread = lambda v, c: row_sigma * np.sqrt(max(1.0, c))  # noqa: E731
        for x in range(data.shape[2]):
            v = np.sort(data[:, y, x][np.isfinite(data[:, y, x])].astype(np.float64))
            want[y, x] = np.mean(iraf_clip_loop(spread, lsig, hsig)(v))
    res = ours(data, 3, method="avsigclip", lsigma=lsig, hsigma=hsig)
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3)
    assert res.n_rejected.sum() > 0


def test_gesd_equals_rosners_test():
    from scipy.stats import t as student

    def per_pixel(v, frac=0.3, alpha=0.05):
        n = len(v)
        x = list(v)
        removed, passed = [], 0
        for i in range(1, int(np.floor(frac * n)) + 1):
            if len(x) < 3:
                break
            m, sd = np.mean(x), np.std(x, ddof=1)
            j = len(x) - 1 if x[-1] - m >= m - x[0] else 0  # x stays sorted: extremes at the ends
            r = abs(x[j] - m) / sd
            p = 1 - alpha / (2 * (n - i + 1))
            tv = student.ppf(p, n - i - 1)
            lam = (n - i) * tv / np.sqrt((n - i - 1 + tv**2) * (n - i + 1))
            removed.append(x.pop(j))
            if r > lam:
                passed = i
        out = list(v)
        for val in removed[:passed]:
            out.remove(val)
        return np.array(out)

    data = planted(n=15, seed=27)
    want = loop_reference(data, per_pixel)
    res = ours(data, 4, method="gesd")
    np.testing.assert_allclose(res.data, want, rtol=2e-6, atol=1e-3, equal_nan=True)
    assert res.n_rejected.sum() > 0


def test_weights_make_a_weighted_average_of_what_is_kept():
    data = planted(n=8, seed=28)
    weights = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 0.25, 1.5])
    srcs = [combine.ArraySource(d) for d in data]
    got = combine.combine(srcs, combine.CombineParams("average"), weights=weights, block_rows=3)
    masked = np.ma.masked_invalid(data)
    want = np.ma.average(masked, axis=0, weights=weights)
    np.testing.assert_allclose(got.data, want.filled(np.nan), rtol=2e-6, atol=1e-4)
    mean = want[None]
    var = np.ma.average((masked - mean) ** 2, axis=0, weights=weights)
    np.testing.assert_allclose(got.sigma, np.sqrt(var).filled(np.nan), rtol=1e-4, atol=1e-3)
    # minmax: the rejection is by value; each kept value keeps its own frame's weight
    srcs = [combine.ArraySource(d) for d in data]
    got = combine.combine(srcs, combine.CombineParams("minmax", nlow=1, nhigh=2), weights=weights, block_rows=5)
    want = np.full(data.shape[1:], np.nan)
    for y, x in np.ndindex(*data.shape[1:]):
        v = data[:, y, x].astype(np.float64)
        ok = np.flatnonzero(np.isfinite(v))
        order = ok[np.argsort(v[ok], kind="stable")]
        nl, nh = int(1 * len(ok) / 8 + 0.001), int(2 * len(ok) / 8 + 0.001)
        keep = order[nl:len(order) - nh]
        want[y, x] = np.average(v[keep], weights=weights[keep])
    np.testing.assert_allclose(got.data, want, rtol=2e-6)
    with pytest.raises(ValueError, match="not to median"):
        combine.combine([combine.ArraySource(d) for d in data], combine.CombineParams("median"), weights=weights)
    with pytest.raises(ValueError, match="positive"):
        combine.combine([combine.ArraySource(d) for d in data], combine.CombineParams("average"), weights=weights[:3])


@pytest.mark.parametrize("method", combine.METHODS)
def test_maps_add_up_for_every_method(method):
    data = planted(n=10, seed=29)
    masks = np.random.default_rng(3).random(data.shape) < 0.15
    srcs = [combine.ArraySource(d, m) for d, m in zip(data, masks)]
    res = combine.combine(srcs, combine.CombineParams(method, nlow=2, nhigh=2), block_rows=4)
    covering = (~masks & np.isfinite(data)).sum(axis=0)
    assert np.all(res.n_used + res.n_rejected == covering)
    assert np.all(np.isnan(res.data) == (res.n_used == 0))


@pytest.mark.parametrize("method", ["winsorized", "gesd", "sigmaclip"])
def test_plane_paths_equal_the_sorted_path(method):
    """winsorized and gesd (and sigmaclip) decide most pixels straight from the planes; the
    pixels they keep whole must be exactly those the per-pixel sorted path keeps whole."""
    rng = np.random.default_rng(len(method))
    data = rng.normal(1000, 30, (16, 40, 500)).astype(np.float32)
    data[:, ::7, ::9] *= rng.uniform(0.8, 1.2, (16, 1, 1)).astype(np.float32) * 4  # stars through clouds
    data[rng.random(data.shape) < 0.003] += 20000  # cosmic rays
    data[rng.random(data.shape) < 0.002] -= 700
    params = combine.CombineParams(method)
    fast = combine.combine_rows([combine.ArraySource(d) for d in data], params, 0, 40, True)
    slow = combine.reduce_block(np.ascontiguousarray(data.transpose(1, 2, 0)), params, True)
    assert 0.01 < np.mean(slow[2] > 0) < 0.5  # a real mix of pixels that reject and that do not
    assert np.array_equal(fast[1], slow[1]) and np.array_equal(fast[2], slow[2])
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-6)
    np.testing.assert_allclose(fast[3], slow[3], rtol=1e-5)
