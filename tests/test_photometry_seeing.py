"""Scales that do not depend on the seeing (issue 22): the Moffat PSF of each frame, the
aperture correction it gives, and the scales against known transparencies on frames whose
FWHM and PSF wings differ, with the lab's fixed aperture alongside to show what it misses."""

import numpy as np
import pytest

from tui_stack import pipeline
from tui_stack.config import config_from_dict
from tui_stack.errors import ConfigError
from tui_stack.core import photometry, psf, synthetic


def _frame(stars, fwhm, beta, transparency=1.0, sky=1000.0, seed=0, shape=(300, 300)):
    img = np.full(shape, sky)
    for x, y, f in stars:
        synthetic.add_star(img, x, y, f * transparency, fwhm, beta, oversample=5)  # as a CCD integrates
    rng = np.random.default_rng(seed)
    noisy = rng.poisson(img * 1.5) / 1.5 + rng.normal(0, 8 / 1.5, shape)
    return (noisy - sky).astype(np.float32)


def _grid_stars(shape=(300, 300), n=5, flux=(1e5, 4e5), seed=3):
    rng = np.random.default_rng(seed)
    xs = np.linspace(40, shape[1] - 40, n)
    return [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5), rng.uniform(*flux)) for y in xs for x in xs]


@pytest.mark.parametrize("beta", [2.0, 3.0, 4.5])
@pytest.mark.parametrize("fwhm", [2.5, 5.0])
def test_aperture_fraction_matches_a_rendered_star(beta, fwhm):
    """The correction's model against pixels: a noise-free star measured with the annulus median,
    in an aperture on the star and in one an integer shift's rounding puts 0.57 px off it. The
    integral of the profile was off by up to 0.13% on the star and 0.4% off it at 2 FWHM
    (pixels' steps across the aperture's edge); the profile measured in pixels is within 0.03%
    (averaged over where in its pixel a star falls: one star at 1.2 FWHM can be 0.07% off)."""
    img = np.zeros((161, 161))
    synthetic.add_star(img, 80.3, 80.6, 1e5, fwhm, beta, 80, oversample=9)
    shape = psf.MoffatPSF(psf.alpha_of(fwhm, beta), beta)
    worst_integral = 0.0
    for r in (2 * fwhm, 10.0, 20.0):
        for off in ((0.0, 0.0), (0.45, -0.35)):
            fl = photometry.measure_stars(img, None, [(80.3 - off[0], 80.6 - off[1])], r, 0.0, None, (r + 5, r + 15))
            measured = fl.flux[0] / 1e5
            assert shape.aperture_fraction(r, (r + 5, r + 15), offset=off) == pytest.approx(measured, abs=3e-4), (r, off)
            integral = shape.enclosed(r) - np.pi * r * r * shape.level(np.sqrt(((r + 5) ** 2 + (r + 15) ** 2) / 2))
            worst_integral = max(worst_integral, abs(integral - measured))
    assert worst_integral > (1e-3 if fwhm < 3 else 4e-4)  # what the pixels change (sharp stars most)


@pytest.mark.parametrize("beta", [2.0, 4.5])
def test_aperture_fraction_with_an_annulus_mean_matches_a_rendered_star(beta):
    """`sky = "annulus-mean"` with growth: the correction takes the mean of the star's own wing
    over the ring's pixels (`MoffatPSF.annulus_mean`), against a noise-free rendered star."""
    fwhm = 4.0
    img = np.zeros((161, 161))
    synthetic.add_star(img, 80.3, 80.6, 1e5, fwhm, beta, 80, oversample=9)
    shape = psf.MoffatPSF(psf.alpha_of(fwhm, beta), beta)
    for r in (2 * fwhm, 12.0):
        fl = photometry.measure_stars(img, None, [(80.3, 80.6)], r, 0.0, None, (r + 5, r + 15), "mean")
        assert shape.aperture_fraction(r, (r + 5, r + 15), mean=True) == pytest.approx(fl.flux[0] / 1e5, abs=3e-4), r


def test_annulus_median_of_a_broad_wing_under_noise():
    """The sky an annulus median takes of a star's own wing: on noise much larger than the
    wing's fall across the annulus the median reads the wing's mean over the annulus, not its
    level at the area-halving radius (25% less here: 0.16% of the star's flux at r = 8)."""
    fwhm, beta, flux, sigma = 4.0, 2.0, 3e5, 30.0
    shape = psf.MoffatPSF(psf.alpha_of(fwhm, beta), beta)
    img = np.zeros((800, 800))
    xs = np.arange(50, 800, 100) + 0.3
    pos = np.array([(x, y) for y in xs for x in xs])
    for x, y in pos:
        synthetic.add_star(img, x, y, flux, fwhm, beta, 49, oversample=5)
    rng = np.random.default_rng(3)
    annulus = (13.0, 23.0)
    read = np.mean([photometry.annulus_medians(img + rng.normal(0, sigma, img.shape), np.zeros(img.shape, bool), pos,
                                               *annulus) for _ in range(6)])
    model = shape.noisy_median(np.array([flux]), annulus, sigma)[0]
    r_mid = np.sqrt((annulus[0] ** 2 + annulus[1] ** 2) / 2)
    assert read == pytest.approx(model, rel=0.03)  # measured 9.50 against 9.59
    assert abs(flux * shape.level(r_mid) - read) > 0.2 * read  # the noise-free model: 7.17
    # the aperture correction follows: per star, from its flux
    assert shape.aperture_fraction(8.0, annulus, [flux], sigma)[0] == pytest.approx(
        shape.in_pixels(8.0) - 64 * np.pi * model / flux)


@pytest.mark.parametrize("fwhm,beta", [(2.5, 4.5), (5.5, 2.0), (4.0, 3.0)])
def test_moffat_fit_recovers_fwhm_and_wings(fwhm, beta):
    stars = _grid_stars()
    img = _frame(stars, fwhm, beta)
    noise = np.sqrt(1000 / 1.5 + (8 / 1.5) ** 2)
    fit = psf.fit_moffat(img, None, [(x, y) for x, y, _ in stars], 20, noise, 1000.0, 4.0)
    assert fit.fwhm == pytest.approx(fwhm, rel=0.01) and fit.beta == pytest.approx(beta, rel=0.03)


def test_moffat_fit_leaves_out_a_star_whose_fit_settles_on_a_brighter_neighbour():
    """Noise-free: eleven lone stars and one with a star 3 times brighter 10 px away in its
    stamp. The fainter star's own fit ran onto the bright one (10 px off its position) and its
    pixels, clipped against that, pulled the shared beta 4.9% low (4.28 for 4.5, in the issue-22
    sparse field's 60 brightest stars); left out: within 0.5%."""
    fwhm, beta = 6.0, 4.5
    stars = [(x, y, 2e5) for x, y, _ in _grid_stars(n=4)][:11] + [(470.3, 470.6, 1e5)]
    img = np.zeros((520, 520))
    for x, y, f in stars + [(478.3, 464.6, 3e5)]:
        synthetic.add_star(img, x, y, f, fwhm, beta, 60, oversample=5)
    noise = np.sqrt(1000 / 1.5 + (8 / 1.5) ** 2)
    fit = psf.fit_moffat(img, None, [(x, y) for x, y, _ in stars], 15, noise, 1000.0, 6.0)
    assert fit.n_stars == 11
    assert fit.beta == pytest.approx(beta, rel=5e-3) and fit.fwhm == pytest.approx(fwhm, rel=2e-3)


def test_moffat_fit_takes_the_stars_alone_in_their_stamps():
    """Twelve bright stars each with three neighbours of 1% of its light 8-12 px away (under the
    5 sigma clip but in the wings), twelve half as bright alone. Fitted to the bright ones only
    (no lone star given: the fallback), beta came out 4.1% low; with all given, the fit takes
    the lone stars: within 0.3%."""
    rng = np.random.default_rng(5)
    fwhm, beta = 4.0, 3.0
    img = np.zeros((700, 700))
    xs = np.linspace(50, 650, 6)
    grid = [(x + rng.uniform(-0.5, 0.5), y + rng.uniform(-0.5, 0.5)) for y in xs for x in xs]
    crowded, lone = grid[:12], grid[12:24]
    for x, y in crowded:
        synthetic.add_star(img, x, y, 4e5, fwhm, beta, 60, oversample=5)
        angle, d = rng.uniform(0, 2 * np.pi), rng.uniform(8, 12)
        for k in range(3):
            synthetic.add_star(img, x + d * np.cos(angle + 2.1 * k), y + d * np.sin(angle + 2.1 * k), 4e3, fwhm, beta,
                               60, oversample=5)
    for x, y in lone:
        synthetic.add_star(img, x, y, 2e5, fwhm, beta, 60, oversample=5)
    noise = np.sqrt(1000 / 1.5 + (8 / 1.5) ** 2)
    img += rng.normal(0, noise, img.shape) + rng.normal(0, 1, img.shape) * np.sqrt(np.clip(img, 0, None) / 1.5)
    only_crowded = psf.fit_moffat(img, None, crowded, 15, noise, 1000.0, 4.0)
    fit = psf.fit_moffat(img, None, crowded + lone, 15, noise, 1000.0, 4.0)
    assert only_crowded.beta < 0.97 * beta
    assert fit.beta == pytest.approx(beta, rel=6e-3) and fit.fwhm == pytest.approx(fwhm, rel=3e-3)


def test_growth_scale_holds_across_seeing_fixed_aperture_does_not():
    """Same 36 stars, transparency 0.7, a sharp steep frame against a soft broad-winged one. The
    fitted beta of the soft frame comes out up to 1% high (2.02 for 2.00 over a few noise
    draws), 0.5% on its correction, and the annulus median takes a little more of the broad
    wing than the model says: 0.7% in all here, against 5.7% for the fixed aperture. The
    goals (0.1% RMS over a set of frames) are tested on whole sets below."""
    shape = (500, 500)
    stars = _grid_stars(shape, n=6, flux=(2e5, 4e5), seed=4)
    ref = _frame(stars, 2.5, 4.5, 1.0, seed=1, shape=shape)
    soft = _frame(stars, 5.5, 2.0, 0.7, seed=14, shape=shape)
    pos = [(x, y) for x, y, _ in stars]
    noise = float(np.sqrt(1000 / 1.5 + (8 / 1.5) ** 2))
    scales = {}
    for method in ("growth", "fixed"):
        a, b = (photometry.measure_frame(f, None, pos, method, None, 1000.0, noise, 60000.0, fwhm_guess=4.0)
                for f in (ref, soft))
        scales[method] = photometry.scale_of(a, b)
    assert scales["growth"].scale == pytest.approx(1 / 0.7, rel=1e-2)
    assert abs(scales["fixed"].scale * 0.7 - 1) > 0.04  # the wings a fixed 20 px aperture loses
    assert not scales["growth"].flags


def test_integer_shift_rounding_puts_the_apertures_off_the_stars_and_growth_allows_for_it(tmp_path):
    """Integer mode: a frame shifted by (3.5, -2.5) px is measured with apertures where the
    rounded shift puts them, 0.7 px off its stars. Sharp stars with broad wings (FWHM 2.5,
    beta 2) lose 0.4-0.5% of their light in a 2 FWHM aperture that far off; growth's correction
    measured with the aperture off the model star as far gives the transparency ratio
    (measured over 8 fields: -0.08 +- 0.07% with it, +0.39% without)."""
    errs, sigmas = {True: [], False: []}, []
    for seed in range(1, 5):
        spec = synthetic.FieldSpec(n_frames=2, shape=(512, 512), n_stars=150, fwhm=2.5, beta=2.0, cosmic_rays=0,
                                   shifts=((0, 0), (3.5, -2.5)), transparencies=(1.0, 0.8), seed=seed, star_reach=40,
                                   oversample=5)
        truth = synthetic.write_seeing_field(tmp_path / str(seed), spec, [2.5, 2.5], [2.0, 2.0])
        for allow in (True, False):
            cfg = config_from_dict({"input": {"directory": str(tmp_path / str(seed)), "pattern": "demo_*.fits"},
                                    "reference": {"frame": 0, "star": "auto"}, "scale": {"stars": "auto", "method": "growth"},
                                    "output": {"directory": str(tmp_path / f"out{seed}"), "write_shifted": False}})
            measure = photometry.measure_frame
            if not allow:
                def measure_on_the_star(*a, **k):
                    return measure(*a, **dict(k, offset=(0.0, 0.0)))
                photometry.measure_frame = measure_on_the_star
            try:
                state = pipeline.run(cfg)
            finally:
                photometry.measure_frame = measure
            fr = state.frames[1]
            off = np.abs([fr.applied_shift_x - fr.shift_x, fr.applied_shift_y - fr.shift_y])
            assert off == pytest.approx([0.5, 0.5], abs=0.01)
            errs[allow].append(fr.scale / truth.scales[1] - 1)
            if allow:
                sigmas.append(fr.scale_error / fr.scale)
    assert abs(np.mean(errs[True])) < 1.5e-3, errs
    assert np.mean(errs[False]) > 3e-3, errs  # the frame's fluxes read low
    # the stated error holds the fitted PSF's own uncertainty (beta 2: the correction is 14%):
    # 0.18% stated, 0.2% scatter over 8 fields; the star ratios' alone said 0.11%
    z = np.array(errs[True]) / np.array(sigmas)
    assert np.sqrt(np.mean(z**2)) < 1.6, (errs[True], sigmas)


def test_weighted_scale_clips_an_outlier_and_flags_disagreeing_stars():
    rng = np.random.default_rng(5)
    flux = rng.uniform(1e5, 5e5, 20)
    err = np.full(20, 100.0)
    ref = photometry.StarFluxes(flux, np.zeros(20), [[] for _ in flux], err, method="growth")
    frame = photometry.StarFluxes(flux / 1.25 * (1 + rng.normal(0, 3e-4, 20)), np.zeros(20), [[] for _ in flux],
                                  err / 1.25, method="growth")
    frame.flux[3] *= 1.2  # a variable star, a cosmic ray in the aperture
    sc = photometry.scale_of(ref, frame)
    assert sc.scale == pytest.approx(1.25, rel=3e-4) and sc.n_used == 19 and np.isnan(sc.ratios[3])
    assert not sc.flags and sc.spread < 3
    frame.flux[::2] *= 1.02  # half the stars 2% brighter: the frame's stars disagree
    assert photometry.STARS_DISAGREE in photometry.scale_of(ref, frame).flags


@pytest.fixture(scope="module")
def seeing_runs(tmp_path_factory):
    """Each set of synthetic.seeing_set through the whole pipeline with stars = "auto", by both methods."""
    runs = {}
    for kind in ("sparse", "crowded", "same"):
        d = tmp_path_factory.mktemp(kind)
        spec, fw, be = synthetic.seeing_set(kind)
        truth = synthetic.write_seeing_field(d, spec, fw, be)
        for method in ("growth", "fixed"):
            cfg = config_from_dict({
                "input": {"directory": str(d), "pattern": "demo_*.fits"},
                "reference": {"frame": 0, "star": [round(v) for v in truth.ref_star]},
                "scale": {"stars": "auto", "method": method},
                "output": {"directory": str(d / f"out_{method}"), "write_shifted": False},
            })
            state = pipeline.run(cfg)
            err = np.array([fr.scale for fr in state.frames]) / truth.scales - 1
            runs[kind, method] = (state, err[1:], fw, be, d / f"out_{method}")
    return runs


def _rms(e):
    return float(np.sqrt(np.mean(e**2)))


NOISE_FLOOR = ("the set's own noise moves growth's scales by 0.13% RMS (benchmarks/run.py --scales --noise-draws 5: "
               "systematic part 0.066% sparse, 0.061% crowded); even at the Cramer-Rao bound "
               "(benchmarks/scale_bound.py: expected RMS 0.105% sparse, 0.073% crowded) one draw meets the goal with a "
               "chance of 0.53 / 0.86; README 'Scales when the seeing changes'")


@pytest.mark.xfail(strict=True, reason="0.129% RMS / 0.28% worst on this noise draw; " + NOISE_FLOOR)
def test_growth_scales_within_goal_of_true_transparency(seeing_runs):
    _, err, _, _, _ = seeing_runs["sparse", "growth"]
    assert _rms(err) < 1e-3 and np.abs(err).max() < 2e-3, err


@pytest.fixture(scope="module")
def low_noise_run(tmp_path_factory):
    """The sparse set with 200 times the gain (and no cosmic rays): what is left is the method's
    own error."""
    from dataclasses import replace

    d = tmp_path_factory.mktemp("lownoise")
    spec, fw, be = synthetic.seeing_set("sparse")
    truth = synthetic.write_seeing_field(d, replace(spec, gain=300.0, read_noise=0.5, cosmic_rays=0), fw, be)
    cfg = config_from_dict({"input": {"directory": str(d), "pattern": "demo_*.fits"},
                            "reference": {"frame": 0, "star": [round(v) for v in truth.ref_star]},
                            "scale": {"stars": "auto", "method": "growth"},
                            "output": {"directory": str(d / "out"), "write_shifted": False}})
    state = pipeline.run(cfg)
    return state, truth, fw, be


def test_growth_psf_exact_where_the_noise_does_not_hide_it(low_noise_run):
    """Each frame's fitted Moffat against the true one. The shape is fitted to stars with no
    other star in their stamps: 0.11% mean, 0.32% worst off in beta (the sharpest frames, where
    the test's own stars, averaged over 5 x 5 points a pixel, are 0.24% of the peak off the
    integral). Fitted to the brightest stars whatever their neighbours, beta came out 0.36%
    mean, 0.55% worst low (the beta-2 frame; the reference 0.46%); with the Moffat sampled at
    pixel centres instead of integrated over them, 2-7% steep."""
    state, _, fw, be = low_noise_run
    beta = np.abs(np.array([fr.psf_beta for fr in state.frames]) / be - 1)
    fwhm = np.abs(np.array([fr.psf_fwhm for fr in state.frames]) / fw - 1)
    assert beta.mean() < 1.5e-3 and beta.max() < 4e-3 and fwhm.max() < 2e-3, (beta, fwhm)


@pytest.mark.xfail(strict=True, reason=(
    "0.082% RMS / 0.180% worst (the beta-2, FWHM-5 frame): with every PSF exact the rest is the comparison "
    "stars' neighbours: stars with under 1% of their light in neighbours within 30 px read within 0.08% of "
    "their true fluxes, the others 0.17-0.25% low in broad-winged frames (their light in the annulus), "
    "0.05% high in the reference. The 0.044% / 0.067% measured before came from the reference's and that "
    "frame's betas each fitted ~0.5% low, cancelling it. Left: weighting stars by their neighbours' light "
    "(0.046% systematic on sparse but 0.116% on crowded) or keeping only clean ones (0.119% on crowded)"))
def test_growth_scales_exact_where_the_noise_does_not_hide_it(low_noise_run):
    state, truth, _, _ = low_noise_run
    err = (np.array([fr.scale for fr in state.frames]) / truth.scales - 1)[1:]
    assert _rms(err) < 1e-3 and np.abs(err).max() < 1.5e-3, err


def test_growth_as_good_where_the_psf_does_not_change(seeing_runs):
    growth, fixed = seeing_runs["same", "growth"][1], seeing_runs["same", "fixed"][1]
    assert np.abs(growth).max() < 2e-3 and _rms(growth) < _rms(fixed), (growth, fixed)


def test_growth_crowded_field_worst_frame_within_goal(seeing_runs):
    """Issue 22's goal on the crowded set's base draw: 0.085% RMS, 0.152% worst. On one draw:
    of 5 noise draws 3 meet it (benchmarks/run.py --scales --noise-draws 5: 0.058-0.17% RMS;
    at the Cramer-Rao bound 0.86 of draws would)."""
    _, err, _, _, _ = seeing_runs["crowded", "growth"]
    assert np.abs(err).max() < 2e-3, err


def test_growth_scales_within_goal_on_crowded_field(seeing_runs):
    _, err, _, _, _ = seeing_runs["crowded", "growth"]
    assert _rms(err) < 1e-3, err


@pytest.mark.parametrize("kind", ["sparse", "crowded"])
def test_growth_ten_times_better_than_the_fixed_aperture_when_seeing_changes(seeing_runs, kind):
    growth, fixed = seeing_runs[kind, "growth"][1], seeing_runs[kind, "fixed"][1]
    assert _rms(fixed) > 0.01 and _rms(growth) < 0.1 * _rms(fixed) and np.abs(growth).max() < 0.005


def test_each_frame_reports_its_psf_and_correction(seeing_runs):
    import json

    state, _, fw, be, out = seeing_runs["sparse", "growth"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["photometry"]["scale_method"] == "growth"
    for fr, f, want_fw, want_be in zip(state.frames, rep["frames"], fw, be):
        assert f["psf_fwhm"] == pytest.approx(want_fw, rel=0.01) and f["psf_beta"] == pytest.approx(want_be, rel=0.03)
        assert f["aperture_radius"] == pytest.approx(2 * f["psf_fwhm"], abs=3e-3)
        assert 1.0 < f["aperture_correction"] < 1.3 and f["scale_spread"] < 3
        assert "stars_disagree" not in f["flags"]
    # broad wings (beta 2) need the largest correction
    corr = [f["aperture_correction"] for f in rep["frames"]]
    assert int(np.argmax(corr)) == int(np.argmin(be))
    # the stack measured the same way matches the reference where the PSF holds (a median of
    # frames of different seeing is not flux-conserving in the star cores: 0.956 on "sparse")
    same = json.loads((seeing_runs["same", "growth"][4] / "report.json").read_text())
    assert 0.99 < same["photometry"]["ratio_median"] < 1.01


# ------------------------------------------------------------------ the real frames

from conftest import REPO, requires_pydia  # noqa: E402


@pytest.fixture(scope="module")
def pydia_registered(tmp_path_factory):
    from tui_stack.config import load_config

    cfg = load_config(REPO / "sample_configs" / "pydia.toml")
    cfg.output.directory = tmp_path_factory.mktemp("pydia22")
    cfg.scale.method, cfg.scale.radius = "growth", "auto"
    state = pipeline.RunState(config=cfg)
    state.set_files(pipeline.select(cfg))
    pipeline.choose_reference(state)
    pipeline.register(state)
    return state


def _scales_with(state, **scale):
    scale.setdefault("annulus", None)  # one case's annulus must not carry over into the next
    cfg = state.config.copy()
    for k, v in scale.items():
        cfg.set("scale", k, v)
    state.config = cfg
    pipeline.measure_scales(state)
    return np.array([fr.scale for fr in state.frames])


@requires_pydia
@pytest.mark.parametrize("radius,change", [
    pytest.param("auto", {"annulus": [30, 45]}, id="annulus"),
    pytest.param(10, {"annulus": [30, 45]}, id="annulus, one radius"),
    pytest.param(None, {"radius": 12}, id="aperture", marks=pytest.mark.xfail(
        strict=True, reason="aperture 12 vs 20 px moves frame 0004 by 2.3% (fixed: 1.9%): neighbours and the crowded "
                            "background between 12 and 20 px; notes/s6/issue22.md")),
    pytest.param("auto", "half", id="half of the stars", marks=pytest.mark.xfail(
        strict=True, reason="the two halves of the 12 stars differ by 5.5% on frame 0002: apertures of 2 FWHM are 7.6 "
                            "px in the reference, 12.6 px there, and each star's neighbours differ between them")),
    pytest.param(10, "half", id="half of the stars, one radius", marks=pytest.mark.xfail(
        strict=True, reason="0.9% on frame 0004: 6 stars with 1-1.5% noise each (notes/s6/issue22.md)")),
])
def test_real_frame_scales_stable_to_half_a_percent(pydia_registered, radius, change):
    """Each frame's scale moves by less than 0.5% when the annulus, the aperture or the half of
    the comparison stars used changes (goal of issue 22), with apertures of 2 FWHM per frame
    (radius "auto") or one radius for all frames."""
    moved = _real_change(pydia_registered, radius, change)
    assert np.abs(moved).max() < 0.005, np.round(100 * moved, 2)


def _real_change(state, radius, change):
    """Relative change of each frame's scale under `change` (radius None: 20 px against the change's)."""
    from tui_stack.config import load_config

    # pydia.toml's 12 stars, not the config's now: an earlier case leaves one half of them there
    stars = [list(s) for s in load_config(REPO / "sample_configs" / "pydia.toml").scale.stars]
    if change == "half":
        base, other = (_scales_with(state, stars=stars[k::2], radius=radius) for k in (0, 1))
    else:
        base = _scales_with(state, stars=stars, radius=20 if radius is None else radius)
        other = _scales_with(state, stars=stars, radius=radius, **change) if radius is not None else \
            _scales_with(state, stars=stars, **change)
    return other / base - 1


@requires_pydia
def test_real_frames_one_radius_far_steadier_between_halves(pydia_registered):
    """Why "auto" fails on this crowded field: a star's aperture and annulus cover other neighbours
    in a sharp and a soft frame (2 FWHM each); one radius for all frames cuts the change between
    the two halves of the stars from 5.5% to 0.9% (worst frame)."""
    auto = np.abs(_real_change(pydia_registered, "auto", "half")).max()
    one = np.abs(_real_change(pydia_registered, 10, "half")).max()
    assert one < auto / 3, (one, auto)


def test_annulus_mean_keeps_a_clouded_frame_s_scale_in_a_crowded_field(tmp_path):
    """1,000 stars on 512^2 (4,000 a 1024^2 field), one PSF, frames dimmed to 0.8, 0.5 and 0.3
    with the sky and its noise unchanged, as clouds do. The annulus median of a crowded
    annulus is not linear in the data: the neighbours' light it holds shrinks with the frame
    but the noise does not, so the median moves towards the mean of its skewed pixels and the
    dimmer the frame, the more of that light stays in its sky (measured +0.9 / +2.4 / +3.4% with
    the fixed r = 20). A plain mean is linear (-0.1 / +0.7 / +1.3%: neighbours and cosmic rays
    in single rings); the default, the mean of the ring pixels clear of the reference's stars
    with this frame's cosmic rays out: +0.2 / +0.1 / +0.2%."""
    from dataclasses import replace

    spec, _, _ = synthetic.seeing_set("crowded", n_frames=4, size=512)
    spec = replace(spec, n_stars=1000, transparencies=(1.0, 0.8, 0.5, 0.3), seed=77)
    truth = synthetic.write_seeing_field(tmp_path, spec, np.full(4, 3.5), np.full(4, 3.0))
    err = {}
    for sky in ("annulus-median", "annulus"):
        cfg = config_from_dict({"input": {"directory": str(tmp_path), "pattern": "demo_*.fits"},
                                "reference": {"frame": 0, "star": [round(v) for v in truth.ref_star]},
                                "scale": {"stars": "auto", "method": "fixed", "radius": 20, "sky": sky},
                                "output": {"directory": str(tmp_path / sky), "write_shifted": False}})
        state = pipeline.run(cfg)
        err[sky] = (np.array([fr.scale for fr in state.frames]) / truth.scales - 1)[1:]
    assert err["annulus-median"][-1] > 0.02 and np.all(np.diff(err["annulus-median"]) > 0), err  # grows as it dims
    assert np.abs(err["annulus"]).max() < 0.004, err


def test_annulus_mean_leaves_out_other_stars_and_cosmic_rays():
    """The ring's mean without the pixels in the given discs (another star) and those far above
    the ring's median (a cosmic ray), against the same mean taken by hand."""
    rng = np.random.default_rng(4)
    data = rng.normal(0, 5, (80, 80))
    yy, xx = np.mgrid[0:80, 0:80]
    data += 4000 * np.exp(-((xx - 52) ** 2 + (yy - 40) ** 2) / 8)  # a neighbour 12 px from the star
    data[30, 40] += 3000  # a cosmic ray in the ring
    pos = np.array([[40.0, 40.0]])
    d2 = (xx - 40) ** 2 + (yy - 40) ** 2
    ring = (d2 >= 8 ** 2) & (d2 < 16 ** 2)
    clear = ring & ((xx - 52) ** 2 + (yy - 40) ** 2 >= 8 ** 2)
    clear[30, 40] = False
    got = photometry.annulus_means(data, np.zeros(data.shape, bool), pos, 8, 16, np.array([[52.0, 40.0, 8.0]]), 40.0)
    assert got[0] == pytest.approx(data[clear].mean(), rel=1e-12)
    assert abs(photometry.annulus_means(data, np.zeros(data.shape, bool), pos, 8, 16)[0] - got[0]) > 5  # without: off
