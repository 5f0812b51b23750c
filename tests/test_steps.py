"""Unit tests of the core steps: io, background, shifting, photometry, stats."""

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from tui_stack.core import background, io, photometry, shifting, stats, synthetic
from tui_stack.errors import InputError


def test_integer_shift_equals_lab_order0_shift_with_mask():
    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (30, 40)).astype(np.float32)
    for dx, dy in [(2.4, -3.6), (-5.5, 1.2), (0.0, 0.0)]:
        out, mask = shifting.shift_frame(img, None, dx, dy, "integer")
        lab = ndimage.shift(img, (round(dy), round(dx)), order=0, cval=-1000)
        assert np.array_equal(out[~mask], lab[~mask])
        assert np.all(lab[mask] == -1000)  # exactly the pixels the lab filled with -1000
        assert np.all(out[mask] == 0)


def test_subpixel_shift_moves_a_star_and_masks_edges():
    img = np.zeros((64, 64), np.float32)
    synthetic.add_star(img, 30.0, 32.0, 1e5, 3.5, 3.0)
    out, mask = shifting.shift_frame(img, None, 2.3, -1.7, "subpixel")
    from tui_stack.core.registration import centroid_at

    x, y = centroid_at(out, mask, 32, 30, 13, "2dg")
    assert abs(x - 32.3) < 0.02 and abs(y - 30.3) < 0.02
    assert mask[:, :2].all() and mask[-2:, :].all() and not mask[5:55, 5:55].any()


def test_subpixel_shift_spreads_input_mask():
    img = np.ones((20, 20), np.float32)
    m = np.zeros_like(img, bool)
    m[10, 10] = True
    _, mask = shifting.shift_frame(img, m, 0.5, 0.0, "subpixel")
    assert mask[10, 10] and mask[10, 11]


def test_sky_median_and_sigmaclip():
    rng = np.random.default_rng(1)
    img = rng.normal(500, 10, (200, 200)).astype(np.float32)
    img[::10, ::10] += 5000  # "stars"
    assert abs(background.estimate_sky(img).level - 500) < 2
    assert abs(background.estimate_sky(img, method="sigmaclip").level - 500) < 1
    assert abs(background.estimate_sky(img, method="sigmaclip").noise - 10) < 0.5


def test_photometry_flags_saturated_crowded_and_off_frame():
    img = np.zeros((200, 200), np.float32)
    synthetic.add_star(img, 50, 50, 3e6, 3.5, 3.0)  # saturated once sky is added
    synthetic.add_star(img, 120, 120, 2e5, 3.5, 3.0)
    synthetic.add_star(img, 128, 124, 3e5, 3.5, 3.0)  # brighter neighbour inside r=15
    synthetic.add_star(img, 150, 40, 2e5, 3.5, 3.0)  # isolated
    raw = np.clip(img + 1000, 0, 65535)
    sub = raw - 1000
    fl = photometry.measure_stars(sub, None, [(50, 50), (120, 120), (150, 40), (195, 100)], 15, 1000, 60000)
    assert fl.flags == [["saturated"], ["crowded"], [], ["off_frame"]]
    assert abs(fl.flux[2] / 2e5 - 1) < 0.02


def test_scale_is_median_of_reference_over_frame():
    ref = photometry.StarFluxes(np.array([100.0, 200.0, 300.0, 50.0]), np.zeros(4), [[], [], [], ["crowded"]])
    frame = photometry.StarFluxes(np.array([50.0, 100.0, 140.0, 10.0]), np.zeros(4), [[], [], [], []])
    sc = photometry.frame_scale(ref, frame)
    assert sc.scale == pytest.approx(2.0) and sc.n_used == 3 and np.isnan(sc.ratios[3])


def test_stats_region_and_ratio():
    img = np.zeros((600, 600), np.float32)
    img[400:500, 400:500] = np.tile([1.0, -1.0], 5000).reshape(100, 100)
    st = stats.image_stats(img)
    assert st.region == (400, 500, 400, 500) and st.std == pytest.approx(1.0) and st.median == 0
    ph = stats.compare_photometry([100, 200, 0], [98, 204, 5], [(1, 1), (2, 2), (3, 3)])
    assert ph.ratio_median == pytest.approx(1.0)


def test_read_frame_uses_extension_and_scales_int16(tmp_path):
    data = (np.arange(100, dtype=np.float32).reshape(10, 10) * 600)
    hdu = fits.ImageHDU(data.astype(np.float64))
    hdu.scale("int16", bzero=32768)
    p = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(p)
    fr = io.read_frame(p)
    assert fr.hdu_index == 1 and np.allclose(fr.data, data)
    reader = io.RowReader(p, 1)
    assert np.allclose(reader.rows(3, 6), data[3:6])


def test_read_frame_masks_nan_and_inf(tmp_path):
    data = np.ones((5, 5), np.float32)
    data[1, 1], data[2, 2] = np.nan, np.inf
    p = tmp_path / "n.fits"
    fits.PrimaryHDU(data).writeto(p)
    fr = io.read_frame(p)
    assert fr.mask.sum() == 2 and np.isfinite(fr.data).all()


@pytest.mark.parametrize("mapped", [True, False])
def test_float32_frames_read_as_astropy_reads_them(tmp_path, monkeypatch, mapped):
    """The direct float32 path (memory map, one conversion) and its fallback give astropy's pixels."""
    data = np.random.default_rng(5).normal(1000, 30, (37, 53)).astype(np.float32)
    p = tmp_path / "f.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, fits.Header({"OBJECT": "x"}))]).writeto(p)
    if not mapped:
        def no_map(*a, **kw):
            raise OSError("no memory maps here")

        monkeypatch.setattr(io, "_map_file", no_map)
    fr = io.read_frame(p)
    assert fr.hdu_index == 1 and fr.data.dtype == np.float32 and fr.data.flags.writeable
    np.testing.assert_array_equal(fr.data, fits.getdata(p, 1))


@pytest.mark.parametrize("content,words", [
    (b"", "empty"),
    (b"SIMPLE = nonsense" * 100, "not a readable FITS"),
])
def test_read_frame_errors(tmp_path, content, words):
    p = tmp_path / "bad.fits"
    p.write_bytes(content)
    with pytest.raises(InputError, match=words):
        io.read_frame(p)


def test_cube_is_refused(tmp_path):
    p = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 4, 5), np.float32)).writeto(p)
    with pytest.raises(InputError, match="3 axes"):
        io.read_frame(p)


def test_select_files_filters_on_header(tmp_path):
    for i, t in enumerate([1, 1, 2]):
        fits.PrimaryHDU(np.zeros((4, 4), np.float32), fits.Header({"PICTTYPE": t})).writeto(tmp_path / f"f{i}.fits")
    kept = io.select_files(tmp_path, "f*.fits", {"PICTTYPE": 1})
    assert [p.name for p in kept] == ["f0.fits", "f1.fits"]
    with pytest.raises(InputError, match="PICTTYPE=3"):
        io.select_files(tmp_path, "f*.fits", {"PICTTYPE": 3})


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    class Boom:
        def writeto(self, path, **kw):
            open(path, "wb").write(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(io.OutputError, match="no space left"):
        io.write_fits_atomic(tmp_path / "x.fits", Boom())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("border", [8, 2])  # neighbours all inside (flat offsets), or checked
def test_local_peaks_equals_photutils_find_peaks(border):
    from photutils.detection import find_peaks

    from tui_stack.core.quality import local_peaks

    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, (300, 280)).astype(np.float32)
    for _ in range(60):
        synthetic.add_star(img, rng.uniform(0, 280), rng.uniform(0, 300), rng.uniform(50, 5000), 3.0, 3.0)
    xs, ys, vals = local_peaks(img, None, 5.0, box=7, border=border)
    tbl = find_peaks(img, 5.0, box_size=7, border_width=border)
    assert len(xs) == len(tbl) > 30
    assert set(zip(xs.tolist(), ys.tolist())) == set(zip(tbl["x_peak"].tolist(), tbl["y_peak"].tolist()))
    assert np.all(np.diff(vals) <= 0)


@pytest.mark.parametrize("kind", ["cd", "cdelt"])
def test_turned_frame_keeps_its_sky(kind):
    from astropy.wcs import WCS

    from tui_stack.pipeline.shift import _turn_wcs

    hdr = fits.Header({"NAXIS": 2, "NAXIS1": 200, "NAXIS2": 150, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                       "CRVAL1": 100.0, "CRVAL2": -20.0, "CRPIX1": 80.5, "CRPIX2": 60.0})
    if kind == "cd":
        hdr.update({"CD1_1": -1e-4, "CD1_2": 2e-5, "CD2_1": 3e-5, "CD2_2": 1e-4})
    else:
        hdr.update({"CDELT1": -1e-4, "CDELT2": 1e-4})
    before = WCS(hdr)
    turned = hdr.copy()
    _turn_wcs(turned, (150, 200))
    after = WCS(turned)
    for x, y in [(0, 0), (10.5, 140.2), (199, 149)]:
        a = before.pixel_to_world_values(x, y)
        b = after.pixel_to_world_values(199 - x, 149 - y)  # the same pixel, turned
        assert np.allclose(a, b, atol=1e-9)


def test_aperture_sums_and_annulus_medians_and_means_equal_photutils():
    """core.photometry's own exact apertures and centre-sampled annulus medians against
    photutils (kept for the import time): off-frame, masked, grid-aligned and tiny apertures."""
    import warnings

    from photutils.aperture import ApertureStats, CircularAnnulus, CircularAperture, aperture_photometry

    rng = np.random.default_rng(1)
    data = rng.normal(0, 10, (120, 150)).astype(np.float32)
    mask = rng.random(data.shape) < 0.05
    data[mask] = 0
    pos = np.column_stack([rng.uniform(-3, 153, 200), rng.uniform(-3, 123, 200)])
    pos[:5] = [[50, 50], [60.5, 40.5], [0, 0], [149, 119], [75.25, 60.75]]
    for r, (r_in, r_out) in [(5, (8, 12)), (3.3, (5.5, 9.1)), (0.4, (1, 2)), (20, (22, 30)), (7, (7, 10))]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = aperture_photometry(data, CircularAperture(pos, r=r), mask=mask, method="exact")["aperture_sum"]
            ring = ApertureStats(data, CircularAnnulus(pos, r_in=r_in, r_out=r_out), mask=mask, sum_method="center")
            want_med, want_mean = ring.median, ring.mean
        np.testing.assert_allclose(photometry.aperture_sums(data, mask, pos, r), np.asarray(want, float),
                                   rtol=1e-10, atol=1e-8)
        np.testing.assert_array_equal(photometry.annulus_medians(data, mask, pos, r_in, r_out),
                                      np.asarray(want_med, float))
        np.testing.assert_allclose(photometry.annulus_means(data, mask, pos, r_in, r_out), np.asarray(want_mean, float),
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["noise", "ties", "nan_and_inf", "odd", "constant", "skewed"])
def test_image_median_is_numpys_nanmedian_exactly(case):
    rng = np.random.default_rng(7)
    d = rng.normal(0, 30, 1_200_000 + (case == "odd")).astype(np.float32)
    if case == "ties":
        d = np.round(d / 10).astype(np.float32)
    elif case == "nan_and_inf":
        d[:300_000] = np.nan
        d[300_000:300_100] = np.inf
    elif case == "constant":
        d[:] = 5.0
    elif case == "skewed":  # half the pixels one value, the rest a long tail: the bracket is narrow
        d[: d.size // 2] = 0.0
        d = np.abs(d)
    assert stats.nanmedian(d.reshape(1000, -1) if case != "odd" else d) == float(np.nanmedian(d))


def test_synthetic_frames_past_the_half_hour_have_real_times(tmp_path):
    """Trial 8 #14: frame 31 of a demo was written at '02:60:00', frame 40 at '02:78:00'."""
    from astropy.time import Time

    from tui_stack.core import synthetic

    truth = synthetic.write_field(tmp_path, synthetic.FieldSpec(n_frames=40, shape=(48, 48), n_stars=5, cosmic_rays=0))
    times = Time([fits.getheader(p)["DATE-OBS"] for p in truth.files], format="isot")
    assert np.allclose(np.diff(times.mjd) * 1440, 2.0)
