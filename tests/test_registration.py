import numpy as np
import pytest

from tui_stack import pipeline
from tui_stack.core import registration, synthetic

from conftest import make_config, small_spec


def run_register(truth, tmp_path, **over):
    cfg = make_config(truth, tmp_path, **over)
    state = pipeline.RunState(config=cfg, files=list(truth.files), ref_index=truth.ref_index)
    pipeline.register(state)
    return state, np.array([[f.shift_x, f.shift_y] for f in state.frames])


def test_integer_offsets_recovered_exactly(field_integer, tmp_path):
    state, shifts = run_register(field_integer, tmp_path)
    applied = np.array([[f.applied_shift_x, f.applied_shift_y] for f in state.frames])
    assert np.array_equal(applied, field_integer.shifts.astype(int))
    assert np.abs(shifts - field_integer.shifts).max() < 0.1


def test_subpixel_offsets_under_005_px_rms(field_subpixel, tmp_path):
    state, shifts = run_register(field_subpixel, tmp_path, shift__mode="subpixel")
    err = shifts - field_subpixel.shifts
    rms = np.sqrt(np.mean(np.sum(err**2, axis=1)))
    assert rms < 0.05, err
    applied = np.array([[f.applied_shift_x, f.applied_shift_y] for f in state.frames])
    assert np.allclose(applied, shifts)
    assert all("methods_disagree" not in f.flags for f in state.frames)


def test_xcorr_sign_convention():
    spec = small_spec(n_frames=2, seed=3, cosmic_rays=0)
    stars, _, _ = synthetic.plan_field(spec)
    rng = np.random.default_rng(0)
    ref = synthetic.render_frame(stars, (0, 0), 1.0, spec, rng)
    img = synthetic.render_frame(stars, (7.0, -4.0), 1.0, spec, rng)
    x = registration.XcorrReference(ref, None, 1000.0, 20.0)
    dx, dy, peak = x.offset(x.prepare(img, None, 1000.0, 20.0))
    assert abs(dx - 7.0) < 0.3 and abs(dy + 4.0) < 0.3
    assert peak > 0.5


def test_brighter_neighbour_does_not_capture_the_star(tmp_path):
    """A star 3x brighter 40 px from the reference star: the lab's 100 px box is pulled to it."""
    spec = small_spec(bright_neighbour=40.0, seed=21, max_shift=15.0)
    truth = synthetic.write_field(tmp_path / "frames", spec)
    state, shifts = run_register(truth, tmp_path / "out")
    assert np.abs(shifts - truth.shifts).max() < 0.1
    # The lab's recipe on the same frames: centroid_2dg in a fixed 100 px box.
    from tui_stack.core import io

    ref = io.read_frame(truth.files[0]).data
    x0, y0 = registration.lab_centroid(ref - np.median(ref), *truth.ref_star, box=100)
    lab_errors = []
    for i, path in enumerate(truth.files[1:], 1):
        img = io.read_frame(path).data
        cx, cy = registration.lab_centroid(img - np.median(img), *truth.ref_star, box=100)
        lab_errors.append(np.hypot(x0 - cx - truth.shifts[i, 0], y0 - cy - truth.shifts[i, 1]))
    assert max(lab_errors) > 1.0  # the lab's method is wrong here ...
    assert np.abs(shifts - truth.shifts).max() < 0.1  # ... ours is not


# The quadratic method fits a paraboloid to the 5x5 pixels at the peak: biased by ~0.06 px
# on a Moffat star between pixels, as photutils documents it as the roughest of the four.
@pytest.mark.parametrize("method,tol", [("com", 0.05), ("1dg", 0.05), ("2dg", 0.05), ("quadratic", 0.1)])
def test_centroid_methods_agree_on_isolated_star(method, tol):
    img = np.zeros((41, 41), dtype=np.float32)
    synthetic.add_star(img, 20.3, 19.6, 1e5, 3.5, 3.0)
    x, y = registration.centroid_at(img, None, 20, 20, 13, method)
    assert abs(x - 20.3) < tol and abs(y - 19.6) < tol


def test_star_not_found_in_box_is_none():
    img = np.random.default_rng(1).normal(0, 10, (200, 200)).astype(np.float32)
    assert registration.locate_reference_star(img, None, 100, 100, 50, "2dg", 10.0) is None


def test_batch_gaussian_fit_equals_photutils_centroid_2dg(tmp_path):
    """core.gaussfit solves centroid_2dg's problem for many stars at once: same centres."""
    from astropy.io import fits

    from tui_stack.core import gaussfit, quality, registration, synthetic

    truth = synthetic.write_field(tmp_path, synthetic.FieldSpec(shape=(512, 512), n_stars=200, n_frames=1, seed=3))
    img = fits.getdata(truth.files[0]).astype(np.float32)
    img -= np.median(img)
    noise = float(np.std(img[img < np.percentile(img, 50)])) * 1.6
    stars = quality.find_stars(img, None, noise)
    ok = (stars.x > 12) & (stars.x < 500) & (stars.y > 12) & (stars.y < 500) & (stars.peak < 8000)
    xs, ys = stars.x[ok], stars.y[ok]
    assert len(xs) > 40
    ours = gaussfit.centroids_2dg(img, None, xs, ys, 7)
    cuts = list(_cuts(img, xs, ys, 7))
    theirs = np.array([registration._centroid_func("2dg")(c, mask=None) for c in cuts])
    theirs += np.stack([np.rint(xs) - 3, np.rint(ys) - 3], axis=1)
    diff = np.hypot(*(ours - theirs).T)
    assert np.mean(diff < 1e-4) > 0.95, np.sort(diff)[-5:]
    # Where the two optimisers stop at different points, ours has the lower squared residual.
    for i in np.flatnonzero(diff >= 1e-4):
        cut = cuts[i][None]
        _, p_ours, cost_ours = gaussfit.fit_gaussians(cut, np.zeros(cut.shape, bool), params=True)
        assert cost_ours[0] <= _photutils_cost(cuts[i]), i


def _photutils_cost(cut):
    """The residual of centroid_2dg's own fit (photutils' start, astropy's TRF fitter)."""
    from astropy.modeling.fitting import TRFLSQFitter
    from astropy.modeling.models import Gaussian2D
    from photutils.centroids._utils import _gaussian2d_moments

    y, x = np.indices(cut.shape)
    fit = TRFLSQFitter()(Gaussian2D(*_gaussian2d_moments(cut - cut.min())), x, y, cut)
    return float(np.sum((fit(x, y) - cut) ** 2))


def _cuts(img, xs, ys, box):
    half = box // 2
    for x, y in zip(np.rint(xs).astype(int), np.rint(ys).astype(int)):
        c = img[y - half:y + half + 1, x - half:x + half + 1].astype(np.float64)
        edge = np.concatenate([c[0], c[-1], c[1:-1, 0], c[1:-1, -1]])
        yield c - np.median(edge)


def test_find_stars_near_equals_find_star_one_by_one():
    """The stacked search gives find_star's answer for every position: inside the frame,
    cut by an edge, masked, with two peaks at equal distance, and with nothing there."""
    rng = np.random.default_rng(3)
    img = rng.normal(0, 5, (200, 240)).astype(np.float32)
    yy, xx = np.mgrid[:200, :240]
    stars = [(30.3, 40.8), (120.0, 100.0), (124.0, 100.0), (2.0, 60.0), (237.5, 198.0), (80.0, 150.0)]
    for x, y in stars:
        img += 400 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2)).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[145:155, 78:82] = True  # over the last star
    img[mask] = 0
    pos = np.array([[31, 41], [122, 100], [3, 61], [236, 197], [80, 150], [200, 20], [0.4, 0.6], [119.6, 99.5]])
    for search in (7, 13, 10):
        got = registration.find_stars_near(img, mask, pos, search, 5.0, nsigma=5.0)
        for (x, y), g in zip(pos, got):
            want = registration.find_star(img, mask, x, y, search, 5.0, nsigma=5.0)
            if want is None:
                assert np.isnan(g).all()
            else:
                assert tuple(g) == pytest.approx(want, abs=0)
    found = registration.find_stars_near(img, mask, pos, 13, 5.0, nsigma=5.0)
    assert np.isfinite(found[:3, 0]).all() and np.isnan(found[5, 0])  # stars found, empty sky not
