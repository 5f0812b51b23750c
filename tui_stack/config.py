"""The run config (SPEC.md): TOML in, a validated Config out, one section per table.

Every key is checked by the one function SCHEMA gives it, whether it comes from a file, the
wizard or a command-line override; unknown keys and wrong types name the key. The [combine]
section is made from core.combine_params.PARAMS, which the `combine` command's flags share.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tui_stack.core import combine_params as cp
from tui_stack.core.combine_params import parse_size  # noqa: F401  (the config's size syntax)
from tui_stack.errors import ConfigError

CENTROIDS = ("com", "1dg", "2dg", "quadratic")
SHIFT_MODES = ("integer", "subpixel")
SHIFT_METHODS = ("stars", "star")
TRANSFORMS = ("auto", "translation", "similarity", "affine")
COMBINE_METHODS = cp.METHODS
SCHEDULERS = ("local", "dask")
SKY_METHODS = ("median", "sigmaclip")
PHOT_SKY = ("annulus", "annulus-mean", "annulus-median", "global")
SCALE_METHODS = ("growth", "fixed")  # core.photometry.SCALE_METHODS
FIXED_RADIUS = 20.0  # the lab's aperture, px


@dataclass(slots=True)
class InputConfig:
    directory: Path = Path(".")
    pattern: str = "*.fits"
    select: dict = field(default_factory=dict)
    exclude: list = field(default_factory=list)


@dataclass(slots=True)
class ReferenceConfig:
    frame: int | str = 0
    star: tuple[float, float] | str = "auto"
    box: int | None = None  # not given: pipeline.reference.reference_box (100 px, less on small frames)
    centroid: str = "2dg"
    sky: str = "median"


@dataclass(slots=True)
class ShiftConfig:
    mode: str = "integer"
    method: str = "stars"  # "stars": many matched stars; "star": the reference star alone (the lab)
    # "auto": a similarity where a rotation (or a turn, mirror, other plate scale) is found;
    # "affine": that, with a scale of its own along each axis (optics); both resample: subpixel
    transform: str = "auto"


@dataclass(slots=True)
class ScaleConfig:
    stars: list | str = "auto"
    # "fixed" (SPEC's scale: median of the star ratios in one aperture, the lab's);
    # "growth": each frame's sums corrected by its own PSF's curve of growth (seeing changes)
    method: str = "fixed"
    radius: float | str = "auto"  # "auto": twice each frame's FWHM (growth), 20 px (fixed)
    saturation: float | None = 60000.0
    sky: str = "annulus"
    annulus: tuple[float, float] | None = None

    def aperture(self) -> float | None:
        """The aperture radius in px; None: per frame, from its PSF (growth with "auto")."""
        if self.radius != "auto":
            return float(self.radius)
        return None if self.method == "growth" else FIXED_RADIUS

    def sky_statistic(self) -> str:
        """What the annulus sky takes of its pixels: "mean" (over the pixels clear of the
        reference's stars, cosmic rays out: linear, right for frames dimmed by cloud) or
        "median" (photutils' way; the lab's). sky = "annulus": the mean with "fixed", the
        median with "growth" (whose sets it keeps more accurate: 0.08% RMS on the crowded
        seeing set against 0.15%)."""
        if self.sky == "annulus":
            return "mean" if self.method == "fixed" else "median"
        return "mean" if self.sky == "annulus-mean" else "median"

    def annulus_radii(self) -> tuple[float, float] | str | None:
        """(r_in, r_out); "auto": radius + 5 to radius + 15 of each frame's own aperture."""
        if not self.sky.startswith("annulus"):
            return None
        if self.annulus:
            return self.annulus
        r = self.aperture()
        return "auto" if r is None else (r + 5.0, r + 15.0)


USER_PARAMS = tuple(p for p in cp.PARAMS if p.name != "sky")  # the sky is measured, not set
CombineConfig = dataclasses.make_dataclass(
    "CombineConfig", [(p.name, Any, field(default=p.default)) for p in USER_PARAMS], slots=True
)


@dataclass(slots=True)
class OutputConfig:
    directory: Path = Path("out")
    write_shifted: bool = True


@dataclass(slots=True)
class ComputeConfig:
    scheduler: str = "local"  # "dask": per-frame work and the combine as Dask tasks
    address: str | None = None  # a Dask scheduler, "tcp://host:8786"; none: a LocalCluster
    workers: int | None = None  # LocalCluster size (default: one per core)


@dataclass(slots=True)
class CalibrateConfig:
    """Raw frames in: masters from these frames (globs or lists, relative to the config), applied
    to the lights before the steps above (core/calibrate.py). Defaults as ccdproc's guide."""

    bias: list | str | None = None
    dark: list | str | None = None
    flat: list | str | None = None
    method: str = "sigmaclip"  # every master; any [combine] method
    sigma: float = 5.0
    maxiters: int = 1
    nlow: int = 1
    nhigh: int = 1
    overscan: str | None = None  # "[x1:x2,y1:y2]" or a header keyword ("BIASSEC")
    trim: str | None = None  # "[x1:x2,y1:y2]" or a header keyword ("TRIMSEC")
    overscan_stat: str = "median"
    overscan_order: int | None = None  # polynomial along the overscan; none: each line's own value
    hot_sigma: float = 8.0
    dead_below: float = 0.5
    max_dark_scale: float = 2.0
    cosmics: bool = False
    cosmic_sigma: float = 4.5
    cosmic_objlim: float = 5.0

    @property
    def any(self) -> bool:
        return any(bool(v) for v in (self.bias, self.dark, self.flat))


SECTIONS = {"input": InputConfig, "reference": ReferenceConfig, "shift": ShiftConfig, "scale": ScaleConfig,
            "combine": CombineConfig, "output": OutputConfig, "compute": ComputeConfig,
            "calibrate": CalibrateConfig}


@dataclass(slots=True)
class Config:
    base_dir: Path = Path(".")
    input: InputConfig = field(default_factory=InputConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    shift: ShiftConfig = field(default_factory=ShiftConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    combine: Any = field(default_factory=CombineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)

    def set(self, section: str, key: str, value, flag: str | None = None) -> None:
        """Set one key through its validator (the wizard and command-line overrides; `flag`:
        the option that gave it, named in the error instead of the key)."""
        if section not in SCHEMA:
            raise ConfigError(f"config: unknown section [{section}] (known: {', '.join(SCHEMA)})")
        if key not in SCHEMA[section]:
            raise ConfigError(f"config: unknown key [{section}].{key} (known: {', '.join(SCHEMA[section])})")
        value = SCHEMA[section][key](flag or f"[{section}].{key}", value)
        setattr(getattr(self, section), key, value)

    def check(self) -> None:
        """Rules between keys."""
        if self.shift.transform in ("similarity", "affine") and self.shift.mode != "subpixel":
            raise ConfigError(f'config: [shift].transform = "{self.shift.transform}" resamples the frames: '
                              'it needs mode = "subpixel"')
        sc = self.scale
        if sc.sky.startswith("annulus") and sc.annulus and sc.radius != "auto" and sc.annulus[0] < float(sc.radius):
            raise ConfigError(f"config: [scale].annulus starts at {sc.annulus[0]:g} px, inside the aperture "
                              f"(radius {float(sc.radius):g} px): the sky would hold the stars' own light; start it "
                              "at the radius or beyond")
        if self.calibrate.any and self.compute.scheduler == "dask":
            raise ConfigError('config: [calibrate] runs on this machine only: it needs [compute].scheduler = "local"')

    def copy(self) -> "Config":
        return dataclasses.replace(self, **{s: dataclasses.replace(getattr(self, s)) for s in SECTIONS})


def _fail(where: str, what: str, value: Any) -> ConfigError:
    # a command-line flag (where = "--memory-limit") is not in the config: name it alone
    return ConfigError(f"{'' if where.startswith('--') else 'config: '}{where} {what}, got {value!r}")


def _checked(check: Callable) -> Callable:
    """A combine_params check (value -> value or ValueError) as a config validator."""

    def validate(where, v):
        try:
            return check(v)
        except ValueError as exc:
            raise _fail(where, str(exc), v) from None

    return validate


_int = lambda minimum: _checked(cp.integer(minimum))  # noqa: E731
_num = _checked(cp.number)
_pos_num = _checked(cp.positive)
_bool = _checked(cp.boolean)
_choice = lambda options: _checked(cp.choice(options))  # noqa: E731


def _str(where, v):
    if not isinstance(v, str):
        raise _fail(where, "must be a string", v)
    return v


def _xy(where, v):
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise _fail(where, "must be [x, y]", v)
    return (_num(where, v[0]), _num(where, v[1]))


def _star(where, v):
    return "auto" if v == "auto" else _xy(where, v)


def _stars(where, v):
    if v == "auto":
        return "auto"
    if not isinstance(v, list) or not v:
        raise _fail(where, 'must be "auto" or a non-empty list of [x, y]', v)
    stars = [_xy(f"{where}[{i}]", s) for i, s in enumerate(v)]
    for i, (x, y) in enumerate(stars):
        for j, (x2, y2) in enumerate(stars[:i]):
            if math.hypot(x - x2, y - y2) < 1.0:  # counted twice in the median of the ratios
                raise _fail(f"{where}[{i}]", f"is the star of {where}[{j}] again", v[i])
    return stars


MIN_RADIUS = 1.0  # px: a smaller aperture holds a fraction of one pixel


def _radius(where, v):
    if v == "auto":
        return "auto"
    r = _pos_num(where, v)
    if r < MIN_RADIUS:
        raise _fail(where, f"must be at least {MIN_RADIUS:g} px", v)
    return r


def _frame(where, v):
    if v == "auto" or isinstance(v, str):
        return v
    return _int(0)(where, v)


def _select(where, v):
    if not isinstance(v, dict):
        raise _fail(where, "must be a table of header keywords", v)
    for k, val in v.items():
        if isinstance(val, (dict, list)):
            raise _fail(f"{where}.{k}", "must be a single value", val)
    return {k.upper(): val for k, val in v.items()}


def _exclude(where, v):
    if not isinstance(v, list):
        raise _fail(where, "must be a list of frame indices or file names", v)
    for i, item in enumerate(v):
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise _fail(f"{where}[{i}]", "must be a frame index or a file name", item)
    return list(v)


def _path(where, v):
    if isinstance(v, Path):
        return v
    if not _str(where, v).strip():  # Path("") is "." silently: the outputs beside the config, unasked
        raise _fail(where, 'is empty; use "." for the config\'s own folder', v)
    return Path(v)


def _saturation(where, v):
    return None if v is False or v is None else _pos_num(where, v)


def _frames(where, v):
    """A glob or a list of files (the [calibrate] sets)."""
    if isinstance(v, str):
        return v
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _fail(where, "must be a glob or a list of file names", v)
    return list(v)


def _annulus(where, v):
    r = _xy(where, v)
    if not 0 < r[0] < r[1]:
        raise _fail(where, "must be [r_in, r_out] with 0 < r_in < r_out", v)
    return r


def _optional(check):
    return lambda where, v: None if v is None else check(where, v)


def _param(p: cp.Param):
    def validate(where, v):
        return None if v is None and p.default is None else _checked(p.check)(where, v)

    return validate


def parse_value(text):
    """A value typed as text (a flag, a wizard field) as TOML would read it: 3, 2.5, nan, true;
    anything else stays text (a keyword, a size, a path). The key's validator judges it."""
    if not isinstance(text, str):
        return text
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return text.strip().strip("'\"")


def parse_select(text: str) -> dict:
    """'PICTTYPE=1, FILTER=V' -> {'PICTTYPE': 1, 'FILTER': 'V'} (numbers and booleans typed)."""
    out = {}
    for part in text.replace(";", ",").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"{part.strip()!r} is not KEY=VALUE")
        key, value = (p.strip() for p in part.split("=", 1))
        if not key:
            raise ValueError(f"{part.strip()!r} has no keyword")
        out[key.upper()] = parse_value(value)
    return out


# section -> key -> validator; keys are the Config section's attributes
SCHEMA: dict[str, dict[str, Callable]] = {
    "input": {"directory": _path, "pattern": _str, "select": _select, "exclude": _exclude},
    "reference": {"frame": _frame, "star": _star, "box": _int(5), "centroid": _choice(CENTROIDS),
                  "sky": _choice(SKY_METHODS)},
    "shift": {"mode": _choice(SHIFT_MODES), "method": _choice(SHIFT_METHODS), "transform": _choice(TRANSFORMS)},
    "scale": {"stars": _stars, "method": _choice(SCALE_METHODS), "radius": _radius, "saturation": _saturation, "sky": _choice(PHOT_SKY),
              "annulus": _optional(_annulus)},
    "combine": {p.name: _param(p) for p in USER_PARAMS},
    "output": {"directory": _path, "write_shifted": _bool},
    "compute": {"scheduler": _choice(SCHEDULERS), "address": _optional(_str), "workers": _optional(_int(1))},
    "calibrate": {"bias": _optional(_frames), "dark": _optional(_frames), "flat": _optional(_frames),
                  "method": _choice(COMBINE_METHODS), "sigma": _pos_num, "maxiters": _int(1), "nlow": _int(0),
                  "nhigh": _int(0), "overscan": _optional(_str), "trim": _optional(_str),
                  "overscan_stat": _choice(("median", "mean")), "overscan_order": _optional(_int(0)),
                  "hot_sigma": _pos_num, "dead_below": _pos_num, "max_dark_scale": _pos_num, "cosmics": _bool,
                  "cosmic_sigma": _pos_num, "cosmic_objlim": _pos_num},
}
REQUIRED_SECTIONS = ("input",)


def config_from_dict(raw: dict, base_dir: Path = Path("."), resolve: bool = True) -> Config:
    """A Config from TOML-like tables; relative directories are taken from `base_dir`
    (kept relative with resolve=False, for a config file written beside its frames)."""
    if not isinstance(raw, dict):
        raise ConfigError("config: top level must be a table")
    cfg = Config(base_dir=Path(base_dir))
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"config: unknown section [{section}] (known: {', '.join(SCHEMA)})")
    for section in REQUIRED_SECTIONS:
        if section not in raw:
            raise ConfigError(f"config: missing section [{section}]")
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise _fail(f"[{section}]", "must be a table", table)
        for key, value in table.items():
            cfg.set(section, key, value)
    if resolve:
        from tui_stack.core.io import resolved

        for part in (cfg.input, cfg.output):
            part.directory = resolved(cfg.base_dir / part.directory)
    cfg.check()
    return cfg


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not an error
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw, base_dir=path.parent)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, Path):
        return _toml_value(str(v))
    raise TypeError(type(v))


def config_to_toml(cfg: Config) -> str:
    """The config as TOML that load_config reads back to the same Config (paths made absolute)."""
    lines = []
    for section, keys in SCHEMA.items():
        if section == "calibrate" and not cfg.calibrate.any:
            continue
        lines.append(f"[{section}]")
        for key in keys:
            v = getattr(getattr(cfg, section), key)
            if v is None and (section, key) == ("scale", "saturation"):
                v = False
            if v is None or (key in ("select", "exclude") and not v):
                continue
            lines.append(f"{key} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)
