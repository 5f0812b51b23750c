"""Many-star registration against known truth: the precision the lab's one star cannot reach."""

import numpy as np
import pytest

from tui_stack import pipeline
from tui_stack.core import synthetic

from conftest import make_config, requires_pydia


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """8 frames of 1024², hundreds of stars, subpixel offsets, a frame at half transparency,
    and a star 3x brighter 40 px from the reference star."""
    spec = synthetic.FieldSpec(n_frames=8, shape=(1024, 1024), n_stars=600, max_shift=10, seed=5,
                               bright_neighbour=40.0, transparencies=(1, 0.95, 0.9, 0.5, 1, 0.97, 0.92, 1.0))
    return synthetic.write_field(tmp_path_factory.mktemp("crowded"), spec)


def register(truth, tmp_path, **over):
    state = pipeline.RunState(config=make_config(truth, tmp_path, shift__mode="subpixel", **over),
                              files=list(truth.files))
    pipeline.register(state)
    return state, np.array([[f.shift_x, f.shift_y] for f in state.frames])


def test_many_stars_reach_three_thousandths_of_a_pixel(crowded, tmp_path):
    state, shifts = register(crowded, tmp_path)
    err = shifts - crowded.shifts
    rms = np.sqrt(np.mean(np.sum(err[1:] ** 2, axis=1)))
    assert rms < 0.003, rms
    assert np.abs(err).max() < 0.05
    for fr in state.frames[1:]:
        assert fr.n_matched >= 30 and fr.fit_rms < 0.1 and not fr.flags


def test_one_star_method_is_kept_and_is_less_precise(crowded, tmp_path):
    _, many = register(crowded, tmp_path)
    _, one = register(crowded, tmp_path, shift__method="star")
    err_one = np.sqrt(np.mean(np.sum((one - crowded.shifts)[1:] ** 2, axis=1)))
    err_many = np.sqrt(np.mean(np.sum((many - crowded.shifts)[1:] ** 2, axis=1)))
    assert err_one < 0.1  # still right (the cross-correlation guides it past the neighbour)
    assert err_many < err_one / 3


@requires_pydia
def test_real_frames_many_stars():
    import csv
    import tempfile
    from pathlib import Path

    from tui_stack.config import load_config

    from conftest import PYDIA, REPO

    cfg = load_config(REPO / "sample_configs" / "pydia.toml")
    with tempfile.TemporaryDirectory() as d:
        cfg.output.directory = Path(d)
        state = pipeline.RunState(config=cfg, files=pipeline.select(cfg))
        pipeline.choose_reference(state)
        pipeline.register(state)
    est = {r["file"]: r for r in csv.DictReader(open(PYDIA / "frames.csv"))}
    for i, fr in enumerate(state.frames):
        if i == state.ref_index:
            continue
        assert fr.n_matched >= 30, fr.name
        assert abs(fr.shift_x - float(est[fr.name]["shift_x"])) < 0.3
        assert abs(fr.shift_y - float(est[fr.name]["shift_y"])) < 0.3


@pytest.mark.parametrize("mode", ["integer", "subpixel"])
def test_auto_scales_are_real_stars_within_a_third_of_a_percent(crowded, tmp_path, mode):
    """stars = "auto": many isolated unsaturated stars with a local annulus sky, no hand-picked star
    (IRAF's and Siril's image-statistics scaling miss these transparencies by 33-43%). Subpixel
    mode measures on the frames' own pixels, not the resampled ones."""
    state = pipeline.run(make_config(crowded, tmp_path, scale__stars="auto", scale__radius=12.0, shift__mode=mode,
                                     scale__sky="annulus-median"))
    # every one a star of the field: two-pixel cosmic rays used to be taken (9 of the 30 here),
    # their ratios thousands of percent off, all on the same side of the median
    cs = np.array(state.comparison_stars)
    dist = np.hypot(cs[:, None, 0] - crowded.stars[None, :, 0], cs[:, None, 1] - crowded.stars[None, :, 1]).min(axis=1)
    assert (dist < 1).all(), cs[dist >= 1]
    assert len(state.comparison_stars) >= 20
    scales = np.array([f.scale for f in state.frames])
    err = scales / crowded.scales - 1
    # The median of 30 star ratios is noise-limited, and the reference's own noise is common to
    # every frame: over six noise draws of this field (seeds 5-10, integer mode) 0.08-0.18% RMS,
    # worst frame 0.16-0.33%. (Until the cosmic rays went, 0.3% held here only because their
    # ratios, all high, pulled the median up against this draw's low reference.)
    assert np.sqrt(np.mean(err[1:] ** 2)) < 0.002 and np.abs(err).max() < 0.0035, err
    # relative: the spread of the ratios grows with the scale (the half-transparent frame's are near 2)
    assert all(f.scale_mad / f.scale < 0.03 for f in state.frames), [round(f.scale_mad / f.scale, 4) for f in state.frames]
    # the default sky (the annulus mean clear of the reference's stars, linear for clouded frames
    # on crowded fields): over seeds 5-8 in integer mode 0.11-0.20% RMS, worst 0.17-0.38%
    # (the median 0.10-0.18%, 0.17-0.31%: on this field its noise bias is below the stars' noise)
    state = pipeline.run(make_config(crowded, tmp_path / "mean", scale__stars="auto", scale__radius=12.0,
                                     shift__mode=mode))
    err = np.array([f.scale for f in state.frames]) / crowded.scales - 1
    assert np.sqrt(np.mean(err[1:] ** 2)) < 0.0022 and np.abs(err).max() < 0.0042, err
