import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tui_stack.config import SCHEMA, config_from_dict, config_to_toml, load_config, parse_size
from tui_stack.errors import ConfigError

from conftest import REPO


def test_spec_example_config_is_accepted():
    raw = {
        "input": {"directory": "frames", "pattern": "proc_NGC_2362_V_30*.fits", "select": {"PICTTYPE": 1}},
        "reference": {"frame": 6, "star": [2030, 1360], "box": 100, "centroid": "2dg"},
        "shift": {"mode": "integer"},
        "scale": {"stars": [[1721, 1257], [479, 867]], "radius": 20, "saturation": 60000},
        "combine": {"method": "median", "nlow": 3, "nhigh": 3, "sigma": 3.0},
        "output": {"directory": "out", "write_shifted": True},
    }
    cfg = config_from_dict(raw, Path("/data"))
    assert cfg.reference.frame == 6 and cfg.reference.star == (2030.0, 1360.0) and cfg.input.directory == Path("/data/frames")
    assert cfg.input.select == {"PICTTYPE": 1} and cfg.scale.stars == [(1721.0, 1257.0), (479.0, 867.0)]


def test_round_trip_through_toml(tmp_path):
    cfg = config_from_dict({
        "input": {"directory": str(tmp_path), "select": {"PICTTYPE": 1}, "exclude": [2, "x.fits"]},
        "reference": {"star": [10.5, 20.0]}, "scale": {"stars": [[1.0, 2.0]], "saturation": False},
        "combine": {"method": "minmax", "lsigma": 2.5}, "output": {"directory": str(tmp_path / "o")},
    })
    p = tmp_path / "c.toml"
    p.write_text(config_to_toml(cfg))
    back = load_config(p)
    for section in SCHEMA:
        assert getattr(back, section) == getattr(cfg, section), section
    assert back.scale.saturation is None and back.combine.lsigma == 2.5


@pytest.mark.parametrize("name", ["demo.toml", "pydia.toml", "ngc2362_lab.toml"])
def test_sample_configs_load(name):
    cfg = load_config(REPO / "sample_configs" / name)
    assert cfg.input.pattern


def test_lab_config_has_the_lab_parameters():
    cfg = load_config(REPO / "sample_configs" / "ngc2362_lab.toml")
    assert (cfg.reference.frame, cfg.reference.star, cfg.reference.box, cfg.reference.centroid) == (6, (2030.0, 1360.0), 100, "2dg")
    assert (cfg.scale.radius, cfg.scale.saturation, cfg.shift.mode, cfg.scale.sky) == (20.0, 60000.0, "integer", "global")


def test_sizes():
    assert parse_size("256MB") == 256 * 1024**2 and parse_size("2 GB") == 2 * 1024**3 and parse_size(1000) == 1000
    with pytest.raises(ValueError):
        parse_size("lots")


toml_scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=8), st.booleans(), st.lists(st.integers(-5, 5000), max_size=3))
section_names = st.sampled_from(list(SCHEMA) + ["bogus"])
key_names = st.sampled_from(sorted({k for s in SCHEMA.values() for k in s}) + ["nope"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(section_names, st.one_of(st.dictionaries(key_names, toml_scalars, max_size=5), toml_scalars), max_size=6))
def test_fuzzed_configs_never_raise_anything_but_config_error(raw):
    try:
        config_from_dict(raw, Path("."))
    except ConfigError as exc:
        assert str(exc).startswith("config: ")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_toml_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fz") / "c.toml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(p)
    except ConfigError:
        pass


def test_sample_demo_config_matches_the_generated_demo(tmp_path):
    from tui_stack import demo

    generated = load_config(demo.write_demo(tmp_path, n_frames=3, size=1024))
    sample = load_config(REPO / "sample_configs" / "demo.toml")
    for section in ("reference", "shift", "scale", "combine"):
        assert getattr(sample, section) == getattr(generated, section), section
    assert (sample.input.pattern, sample.input.select) == (generated.input.pattern, generated.input.select)


@pytest.mark.parametrize("scale, named, meant", [
    ({"radius": 20, "annulus": [10, 15]}, "[scale].annulus starts at 10 px, inside the aperture", {"radius": 20, "annulus": [20, 30]}),
    ({"radius": 0.5}, "[scale].radius must be at least 1 px", {"radius": 1}),
    ({"stars": [[226.5, 116.1], [40, 50], [226.5, 116.4]]}, "[scale].stars[2] is the star of [scale].stars[0] again",
     {"stars": [[226.5, 116.1], [40, 50], [228, 116.4]]}),
])
def test_scale_values_that_cannot_be_meant_are_refused(scale, named, meant):
    """Accepted before: an annulus inside the aperture took the stars' own light as sky (scales
    5-8% off, no flag), radius 0.5 was an internal error, a star given twice counted twice."""
    raw = {"input": {"directory": "."}, "reference": {"frame": 0, "star": "auto"}, "scale": scale}
    with pytest.raises(ConfigError, match=re.escape(named)):
        config_from_dict(raw)
    config_from_dict(dict(raw, scale=meant))  # the nearest meant value passes


@pytest.mark.parametrize("section", ["input", "output"])
def test_empty_directory_is_refused_not_taken_as_the_config_folder(section):
    """`directory = ""` read as "." before: a run wrote its stack beside the config, unasked."""
    raw = {"input": {"directory": "frames"}, "reference": {"frame": 0, "star": "auto"}}
    raw[section] = dict(raw.get(section, {}), directory=" ")
    with pytest.raises(ConfigError, match=re.escape(f'[{section}].directory is empty; use "."')):
        config_from_dict(raw, Path("/data"))
    raw[section]["directory"] = "."
    assert getattr(config_from_dict(raw, Path("/data")), section).directory == Path("/data")
