"""Turned, flipped, mirrored and rescaled frames (#17): the star-pattern first guess, the
many-star fit from it, the WCS guess, and the lossless quarter turns and mirrors."""

import numpy as np
import pytest
from astropy.io import fits

from tui_stack.core import background, io, patterns, quality, registration, synthetic
from tui_stack.core.registration import Affine

G = synthetic.FrameGeometry


def _lists(rng, n=250, size=1024.0, c=1 + 0j, mirror=False, shift=0j, lose=0.2, jitter=0.3, shuffle=0.05):
    """A reference star list and the same stars seen through frame = c * ref (+ mirror) + shift:
    positions jittered, a fraction lost, brightness order shuffled a little (as two frames' are)."""
    ref = rng.uniform(0, size, (n, 2))
    z = ref @ [1, 1j]
    z = c * (np.conj(z) if mirror else z) + shift
    frame = np.column_stack([z.real, z.imag]) + rng.normal(0, jitter, (n, 2))
    order = np.argsort(np.arange(n) + rng.normal(0, shuffle * n, n))
    keep = rng.random(n) > lose
    return ref, frame[order][keep[order]]


@pytest.mark.parametrize("angle, scale, mirror", [(37.0, 1.0, False), (-179.3, 1.0, True), (90.0, 0.5, False),
                                                  (-12.0, 2.0, False), (3.0, 1.07, True), (0.0, 1.0, True)])
def test_pattern_match_finds_any_turn_parity_and_scale(angle, scale, mirror):
    rng = np.random.default_rng(int(abs(angle) * 10) + int(10 * scale))
    c = scale * np.exp(1j * np.radians(angle))
    ref, frame = _lists(rng, c=c, mirror=mirror, shift=complex(300, -120))
    m = patterns.match_patterns(ref, frame)
    assert m is not None
    t = m.transform
    assert t.mirrored == mirror
    assert abs((t.rotation - angle + 180) % 360 - 180) < 0.02
    assert abs(t.scale / scale - 1) < 2e-4
    assert m.n_matched > 0.6 * len(frame[: patterns.N_VERIFY])
    truth = Affine.similarity(complex(c), complex(300, -120), mirror)
    assert np.abs(t.apply(ref) - truth.apply(ref)).max() < 1.0


@pytest.mark.parametrize("size, n", [(1024, 250), (512, 150), (256, 150), (256, 40)])
def test_pattern_match_refuses_another_field_at_any_density(size, n):
    """Random lists (another field) are refused, sparse or 4x denser than a crowded field;
    before the vote and fraction rules, 7% of 40-star lists in 256^2 matched by chance."""
    rng = np.random.default_rng(size + n)
    for _ in range(25):
        a, b = rng.uniform(0, size, (n, 2)), rng.uniform(0, size, (n, 2))
        assert patterns.match_patterns(a, b) is None


def test_pattern_match_finds_a_frame_half_on_the_field():
    """Half of the frame shows the reference's field (turned 61 degrees), half another sky whose
    stars fall anywhere in the brightness order."""
    rng = np.random.default_rng(8)
    ref = rng.uniform(0, 1024, (250, 2))  # brightest first
    c = np.exp(1j * np.radians(61.0))
    z = c * (ref @ [1, 1j]) + (700 - 200j)
    seen = np.column_stack([z.real, z.imag])
    rank = np.arange(len(ref), dtype=float)
    keep = (seen[:, 0] > 0) & (seen[:, 0] < 512) & (seen[:, 1] > 0) & (seen[:, 1] < 1024)
    seen, rank = seen[keep] + rng.normal(0, 0.3, (int(keep.sum()), 2)), rank[keep]
    other = rng.uniform([512, 0], [1024, 1024], (len(seen), 2))
    order = np.argsort(np.concatenate([rank, rng.uniform(0, len(ref), len(other))]))
    frame = np.concatenate([seen, other])[order]
    m = patterns.match_patterns(ref, frame)
    assert m is not None and abs(m.transform.rotation - 61.0) < 0.05 and not m.transform.mirrored


def test_pattern_match_refuses_a_parity_it_may_not_use():
    rng = np.random.default_rng(3)
    ref, frame = _lists(rng, c=np.exp(1j * 0.5), mirror=True)
    assert patterns.match_patterns(ref, frame, mirror=False) is None
    assert patterns.match_patterns(ref, frame) is not None
    assert patterns.match_patterns(ref[:4], frame) is None  # too few stars to say


def test_triangle_invariants_ignore_turn_mirror_and_scale_and_orientation_flips_with_mirror():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (8, 2))
    z = xy @ [1, 1j]
    w = 1.7 * np.exp(1j * 1.1) * np.conj(z) + (5 - 3j)
    tri_a, inv_a, ori_a = patterns.triangles(xy, 0.0)
    tri_b, inv_b, ori_b = patterns.triangles(np.column_stack([w.real, w.imag]), 0.0)
    assert np.array_equal(tri_a, tri_b)
    assert np.allclose(inv_a, inv_b)
    assert np.array_equal(ori_a, -ori_b)


@pytest.fixture(scope="module")
def turned_set(tmp_path_factory):
    """1024^2 frames (on 512^2 the stars' noise alone leaves 0.003 deg): turns of any angle, a meridian flip with a turn, mirrors, plate scales
    0.9 and 1.1, a 2x2-binned frame, and a frame of another field."""
    geos = [G(), G(rotation=33.3, shift=(5, -7)), G(rotation=182.9, shift=(-3.3, 2.1)),
            G(rotation=-0.7, mirror=True, shift=(4.4, 1.2)), G(rotation=90.0, scale=1.1, shift=(1.7, -2.2)),
            G(rotation=7.0, scale=0.9), G(rotation=-1.5, binning=2, shift=(6.0, 3.0)),
            G(field_offset=(4000.0, 3000.0))]
    spec = synthetic.FieldSpec(shape=(1024, 1024), n_stars=400, seed=11)
    truth = synthetic.write_geometry_field(tmp_path_factory.mktemp("geo"), spec, geos)
    return geos, truth


def _measure(path):
    frame = io.read_frame(path)
    sky = background.estimate_sky(frame.data, frame.mask, "median")
    sub = frame.data - np.float32(sky.level)
    return frame, sky, sub, quality.find_stars(sub, frame.mask, sky.noise)


def test_pattern_guess_then_many_star_fit_recovers_each_geometry(turned_set):
    geos, truth = turned_set
    rf, rsky, rsub, rst = _measure(truth.files[0])
    reg = np.array(quality.pick_comparison_stars(rst, rf.shape, rsky.level, 65535.0, 6, 80))
    reg = registration.match_stars(rsub, rf.mask, rsky.noise, reg, 0, 0, search=7, box=7, method="2dg")[1]
    corners = np.array([[0, 0], [1023, 0], [0, 1023], [1023, 1023]], float)
    for k in range(1, len(geos)):
        frame, sky, sub, st = _measure(truth.files[k])
        res = registration.solve_geometry(sub, frame.mask, sky.noise, np.c_[rst.x, rst.y], np.c_[st.x, st.y], reg,
                                          box=registration.star_box(3.5 * geos[k].scale / geos[k].binning))
        if geos[k].field_offset is not None:
            assert res.transform is None and res.source == "", "another field must not match"
            continue
        true = Affine.from_list(truth.transforms[k])
        got = res.transform
        assert res.source == "pattern" and res.fit is not None and res.fit.n_used >= 30, (k, res)
        assert got.mirrored == true.mirrored, k
        assert abs((got.rotation - true.rotation + 180) % 360 - 180) < 0.002, (k, got.rotation, true.rotation)
        assert abs(got.scale / true.scale - 1) < 1e-4, (k, got.scale, true.scale)
        assert np.abs(got.apply(corners) - true.apply(corners)).max() < 0.05, k


def test_affine_fit_recovers_a_different_scale_per_axis():
    rng = np.random.default_rng(4)
    ref = rng.uniform(0, 1000, (60, 2))
    true = Affine(np.array([[1.002, 0.01], [-0.012, 0.997]]), np.array([3.0, -4.0]))
    pts = true.apply(ref) + rng.normal(0, 0.02, (60, 2))
    pts[:3] += 5.0  # three bad centroids
    fit = registration.fit_transform(ref, pts, kind="affine")
    assert fit.n_used == 57
    assert np.abs(fit.transform.m - true.m).max() < 1e-4 and fit.transform.axis_ratio > 1.003
    sim = registration.fit_transform(ref, pts, kind="similarity")
    assert sim.rms > 5 * fit.rms  # a similarity cannot take the axes' difference


def test_wcs_guess_equals_the_true_transform(turned_set):
    geos, truth = turned_set
    ref_wcs = registration.celestial_wcs(fits.getheader(truth.files[0]))
    corners = np.array([[0, 0], [1023, 0], [0, 1023], [1023, 1023]], float)
    for k in range(1, len(geos)):
        w = registration.celestial_wcs(fits.getheader(truth.files[k]))
        if geos[k].field_offset is not None:
            assert w is None  # written without one
            continue
        got = registration.wcs_transform(ref_wcs, w, (1024, 1024))
        assert np.abs(got.apply(corners) - Affine.from_list(truth.transforms[k]).apply(corners)).max() < 1e-4
    assert registration.celestial_wcs(fits.Header({"NAXIS": 2})) is None


def test_similarity_list_is_the_contract_six():
    a, b, tx, ty = 0.9, 0.2, 3.0, -1.0
    sim = registration.SimilarityFit.from_list([a, b, tx, ty])
    aff = Affine.from_list([a, b, tx, ty])
    assert aff.as_list() == [a, -b, tx, b, a, ty]
    xy = np.array([[1.0, 2.0], [300.0, -40.0]])
    assert np.allclose(sim.apply(xy), aff.apply(xy))
    assert np.allclose(aff.inverse().apply(aff.apply(xy)), xy)


@pytest.mark.parametrize("k", range(8))
def test_reorient_is_the_exact_quarter_turn_or_mirror(k):
    """reorient(frame, d) puts every pixel where d says, so a frame turned by d then
    reoriented by d's part of its transform differs from the reference by a shift only."""
    d = registration.DIHEDRAL[k]
    rng = np.random.default_rng(k)
    frame = rng.random((5, 7))
    out = registration.reorient(frame, d)
    o = registration.reorient_offset(d, frame.shape)
    for y in range(out.shape[0]):
        for x in range(out.shape[1]):
            fx, fy = d @ [x, y] + o
            assert out[y, x] == frame[int(fy), int(fx)]
    # a transform that is d plus a small turn and a shift: found, and what remains a small turn
    t = Affine(d, np.zeros(2)).then(Affine(np.eye(2), np.array([2.5, -1.0])))
    t = Affine.similarity(np.exp(1j * np.radians(0.01)), 0j).then(t)
    assert np.array_equal(registration.dihedral_part(t), d)
    rest = registration.reoriented_transform(t, d, frame.shape)
    assert not rest.mirrored and abs(rest.rotation) < 0.011
    assert registration.dihedral_part(Affine.similarity(np.exp(1j * np.radians(1.0)), 0j)) is None
    assert registration.dihedral_part(Affine.similarity(1.01 + 0j, 0j)) is None


def test_affine_kind_fits_optics_stretched_along_one_axis(tmp_path):
    """A frame whose y scale is 0.3% larger than its x scale: a similarity leaves 1.5 px at the
    edges, the affine fit recovers the stretch."""
    geos = [G(), G(rotation=21.0, stretch_y=1.003, shift=(2.5, -1.5))]
    truth = synthetic.write_geometry_field(tmp_path, synthetic.FieldSpec(shape=(1024, 1024), n_stars=400, seed=12), geos)
    rf, rsky, rsub, rst = _measure(truth.files[0])
    reg = np.array(quality.pick_comparison_stars(rst, rf.shape, rsky.level, 65535.0, 6, 80))
    reg = registration.match_stars(rsub, rf.mask, rsky.noise, reg, 0, 0, search=7, box=7, method="2dg")[1]
    frame, sky, sub, st = _measure(truth.files[1])
    true = Affine.from_list(truth.transforms[1])
    corners = np.array([[0, 0], [1023, 0], [0, 1023], [1023, 1023]], float)
    errs = {}
    for kind in ("similarity", "affine"):
        res = registration.solve_geometry(sub, frame.mask, sky.noise, np.c_[rst.x, rst.y], np.c_[st.x, st.y], reg,
                                          kind=kind, box=7)
        errs[kind] = np.abs(res.transform.apply(corners) - true.apply(corners)).max()
    assert errs["affine"] < 0.05 and errs["similarity"] > 0.5, errs
    assert abs(res.transform.axis_ratio - true.axis_ratio) < 2e-4
