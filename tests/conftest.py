import hashlib
from pathlib import Path

import pytest

from tui_stack.core import synthetic

REPO = Path(__file__).resolve().parent.parent
PYDIA = REPO.parent / "shared" / "data" / "pydia"


def checksums(paths):
    return {Path(p).name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def small_spec(**kw):
    base = dict(n_frames=6, shape=(320, 320), n_stars=70, max_shift=9.0, cosmic_rays=10, seed=11)
    base.update(kw)
    return synthetic.FieldSpec(**base)


@pytest.fixture(scope="session")
def field_subpixel(tmp_path_factory):
    d = tmp_path_factory.mktemp("subpixel")
    return synthetic.write_field(d, small_spec(transparencies=(1.0, 0.9, 0.75, 1.1, 0.5, 0.95)))


@pytest.fixture(scope="session")
def field_integer(tmp_path_factory):
    d = tmp_path_factory.mktemp("integer")
    return synthetic.write_field(d, small_spec(subpixel=False, seed=5))


def make_config(truth, out_dir, **over):
    """A config for a synthetic field; `section__key=value` overrides one key (validated)."""
    from tui_stack.config import config_from_dict

    raw = {
        "input": {"directory": str(truth.files[0].parent), "pattern": "demo_*.fits"},
        "reference": {"frame": truth.ref_index, "star": [round(truth.ref_star[0]), round(truth.ref_star[1])]},
        "scale": {"stars": [list(c) for c in truth.comparison_stars], "radius": 12.0},
        "output": {"directory": str(out_dir)},
    }
    for name, value in over.items():
        section, key = name.split("__")
        raw.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
    return config_from_dict(raw)


requires_pydia = pytest.mark.skipif(
    not (PYDIA / "frames.csv").exists(), reason=f"real frames not found at {PYDIA} (CI has them in ../shared/data)"
)


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory, monkeypatch):
    """Wizard sessions and crash logs of the tests go to a temporary folder, never the user's
    ~/.local/state/tui-stack (where `--resume` would open a pytest folder). A test that wants
    its own sets TUI_STACK_STATE_DIR again."""
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(scope="module", params=["compiled", "numpy"])
def passes(request):
    """core.shifting's resampling passes in both forms: the compiled ones (skipped where they
    were not built, or TUI_STACK_PURE=1) and the numpy ones, so both stay tested."""
    from tui_stack.core import shifting

    if request.param == "compiled" and shifting.COMPILED is None:
        pytest.skip("compiled resampling passes not built (or TUI_STACK_PURE=1)")
    with pytest.MonkeyPatch.context() as mp:
        if request.param == "numpy":
            mp.setattr(shifting, "COMPILED", None)
        yield request.param
