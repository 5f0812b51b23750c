"""The run config (SPEC.md): TOML in, a validated Config out; unknown keys and wrong types name the key."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tui_stack.errors import ConfigError

CENTROIDS = ("com", "1dg", "2dg", "quadratic")
SHIFT_MODES = ("integer", "subpixel")
SHIFT_METHODS = ("stars", "star")
TRANSFORMS = ("auto", "translation", "similarity")
COMBINE_METHODS = ("average", "median", "minmax", "sigmaclip", "sigclip", "avsigclip", "ccdclip", "pclip", "winsorized",
                   "gesd")
WEIGHTS = ("none", "exposure", "noise")
SCHEDULERS = ("local", "dask")
SKY_METHODS = ("median", "sigmaclip")
PHOT_SKY = ("global", "annulus")


@dataclass
class Config:
    base_dir: Path = Path(".")
    # [input]
    directory: Path = Path(".")
    pattern: str = "*.fits"
    select: dict = field(default_factory=dict)
    exclude: list = field(default_factory=list)
    # [reference]
    frame: int | str = 0
    star: tuple[float, float] | str = "auto"
    box: int = 100
    centroid: str = "2dg"
    sky: str = "median"
    # [shift]
    shift_mode: str = "integer"
    shift_method: str = "stars"  # "stars": many matched stars; "star": the reference star alone (the lab)
    transform: str = "auto"  # "translation" | "similarity" | "auto": similarity when a rotation is found (subpixel)
    # [scale]
    stars: list | str = "auto"
    radius: float = 20.0
    saturation: float | None = 60000.0
    phot_sky: str = "annulus"
    annulus: tuple[float, float] | None = None
    # [combine]
    method: str = "median"
    nlow: int = 3
    nhigh: int = 3
    sigma: float = 3.0
    maxiters: int = 1
    lsigma: float | None = None
    hsigma: float | None = None
    pclip: float = -0.5
    gain: float | str = "GAIN"  # ccdclip: e-/ADU, or the header keyword holding it
    rdnoise: float | str = "RDNOISE"  # ccdclip: e-, or the header keyword
    snoise: float = 0.0
    nkeep: int = 1
    mclip: bool = True
    gesd_outliers: float = 0.3
    gesd_alpha: float = 0.05
    weights: str = "none"  # "exposure": the header's exposure_key; "noise": 1 / (sky noise x scale)^2
    exposure_key: str = "EXPTIME"
    memory_limit: int = 256 * 1024**2
    maps: bool = False
    # [output]
    out_dir: Path = Path("out")
    write_shifted: bool = True
    # [compute]
    scheduler: str = "local"  # "dask": per-frame work and the combine as Dask tasks
    address: str | None = None  # a Dask scheduler, "tcp://host:8786"; none: a LocalCluster
    workers: int | None = None  # LocalCluster size (default: one per core)

    def annulus_radii(self) -> tuple[float, float] | None:
        if self.phot_sky != "annulus":
            return None
        return self.annulus or (self.radius + 5.0, self.radius + 15.0)


def _fail(where: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"config: {where} {what}, got {value!r}")


def _int(where, v, minimum=None):
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail(where, "must be an integer", v)
    if minimum is not None and v < minimum:
        raise _fail(where, f"must be at least {minimum}", v)
    return v


def _num(where, v, minimum=None):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _fail(where, "must be a number", v)
    if v != v or v in (float("inf"), float("-inf")):
        raise _fail(where, "must be a finite number", v)
    if minimum is not None and v < minimum:
        raise _fail(where, f"must be at least {minimum}", v)
    return float(v)


def _pos_num(where, v):
    v = _num(where, v)
    if v <= 0:
        raise _fail(where, "must be positive", v)
    return v


def _str(where, v):
    if not isinstance(v, str):
        raise _fail(where, "must be a string", v)
    return v


def _choice(options):
    def check(where, v):
        if v not in options:
            raise _fail(where, f"must be one of {', '.join(repr(o) for o in options)}", v)
        return v

    return check


def _bool(where, v):
    if not isinstance(v, bool):
        raise _fail(where, "must be true or false", v)
    return v


def _xy(where, v):
    if not isinstance(v, list) or len(v) != 2:
        raise _fail(where, "must be [x, y]", v)
    return (_num(where, v[0]), _num(where, v[1]))


def _star(where, v):
    return "auto" if v == "auto" else _xy(where, v)


def _stars(where, v):
    if v == "auto":
        return "auto"
    if not isinstance(v, list) or not v:
        raise _fail(where, 'must be "auto" or a non-empty list of [x, y]', v)
    return [_xy(f"{where}[{i}]", s) for i, s in enumerate(v)]


def _frame(where, v):
    if v == "auto" or isinstance(v, str):
        return v
    return _int(where, v, minimum=0)


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


def _saturation(where, v):
    return None if v is False else _pos_num(where, v)


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
        try:
            out[key.upper()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.upper()] = value.strip("'\"")
    return out


def _pclip(where, v):
    v = _num(where, v)
    if not -1 <= v <= 1 or v == 0:
        raise _fail(where, "must be between -1 and 1, not 0", v)
    return v


def _fraction(where, v):
    v = _num(where, v)
    if not 0 < v < 1:
        raise _fail(where, "must be between 0 and 1", v)
    return v


def _keyword(where, v):
    if not isinstance(v, str) or not v.strip() or len(v.strip()) > 8:
        raise _fail(where, "must be a FITS header keyword (1-8 characters)", v)
    return v.strip().upper()


def _num_or_keyword(where, v):
    if isinstance(v, str):
        if not v.strip():
            raise _fail(where, "must be a number or a header keyword", v)
        return v.strip().upper()
    return _num(where, v, minimum=0)


def parse_size(text: str | int) -> int:
    """'256MB', '2 GB', '512M' or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 256MB or 2GB)")
    units = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * units[unit])


def _memory(where, v):
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise _fail(where, "must be a size such as \"256MB\"", v)
    try:
        size = parse_size(v)
    except ValueError:
        raise _fail(where, "must be a size such as \"256MB\"", v) from None
    if size < 16 * 1024**2:
        raise _fail(where, "must be at least 16MB", v)
    return size


def _annulus(where, v):
    r = _xy(where, v)
    if not 0 < r[0] < r[1]:
        raise _fail(where, "must be [r_in, r_out] with 0 < r_in < r_out", v)
    return r


# section -> key -> (Config attribute, validator)
SCHEMA: dict[str, dict[str, tuple[str, Callable]]] = {
    "input": {
        "directory": ("directory", _str),
        "pattern": ("pattern", _str),
        "select": ("select", _select),
        "exclude": ("exclude", _exclude),
    },
    "reference": {
        "frame": ("frame", _frame),
        "star": ("star", _star),
        "box": ("box", lambda w, v: _int(w, v, minimum=5)),
        "centroid": ("centroid", _choice(CENTROIDS)),
        "sky": ("sky", _choice(SKY_METHODS)),
    },
    "shift": {"mode": ("shift_mode", _choice(SHIFT_MODES)), "method": ("shift_method", _choice(SHIFT_METHODS)),
              "transform": ("transform", _choice(TRANSFORMS))},
    "scale": {
        "stars": ("stars", _stars),
        "radius": ("radius", _pos_num),
        "saturation": ("saturation", _saturation),
        "sky": ("phot_sky", _choice(PHOT_SKY)),
        "annulus": ("annulus", _annulus),
    },
    "combine": {
        "method": ("method", _choice(COMBINE_METHODS)),
        "nlow": ("nlow", lambda w, v: _int(w, v, minimum=0)),
        "nhigh": ("nhigh", lambda w, v: _int(w, v, minimum=0)),
        "sigma": ("sigma", _pos_num),
        "maxiters": ("maxiters", lambda w, v: _int(w, v, minimum=1)),
        "memory_limit": ("memory_limit", _memory),
        "maps": ("maps", _bool),
        "lsigma": ("lsigma", _pos_num),
        "hsigma": ("hsigma", _pos_num),
        "pclip": ("pclip", _pclip),
        "gain": ("gain", _num_or_keyword),
        "rdnoise": ("rdnoise", _num_or_keyword),
        "snoise": ("snoise", lambda w, v: _num(w, v, minimum=0)),
        "nkeep": ("nkeep", lambda w, v: _int(w, v, minimum=-10_000)),
        "mclip": ("mclip", _bool),
        "gesd_outliers": ("gesd_outliers", _fraction),
        "gesd_alpha": ("gesd_alpha", _fraction),
        "weights": ("weights", _choice(WEIGHTS)),
        "exposure_key": ("exposure_key", _keyword),
    },
    "output": {
        "directory": ("out_dir", _str),
        "write_shifted": ("write_shifted", _bool),
    },
    "compute": {
        "scheduler": ("scheduler", _choice(SCHEDULERS)),
        "address": ("address", _str),
        "workers": ("workers", lambda w, v: _int(w, v, minimum=1)),
    },
}
REQUIRED_SECTIONS = ("input",)


def config_from_dict(raw: dict, base_dir: Path = Path(".")) -> Config:
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
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"config: unknown key [{section}].{key} (known: {', '.join(SCHEMA[section])})"
                )
            attr, check = SCHEMA[section][key]
            setattr(cfg, attr, check(f"[{section}].{key}", value))
    base = Path(base_dir)
    cfg.directory = (base / cfg.directory).resolve()
    cfg.out_dir = (base / cfg.out_dir).resolve()
    if cfg.transform == "similarity" and cfg.shift_mode != "subpixel":
        raise ConfigError('config: [shift].transform = "similarity" resamples the frames: it needs mode = "subpixel"')
    return cfg


def load_config(path: Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
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
    raise TypeError(type(v))


def config_to_toml(cfg: Config) -> str:
    """The config as TOML that load_config reads back to the same Config (paths made absolute)."""
    lines = []
    for section, keys in SCHEMA.items():
        lines.append(f"[{section}]")
        for key, (attr, _) in keys.items():
            v = getattr(cfg, attr)
            if v is None and attr == "saturation":
                v = False
            if v is None or (attr in ("select", "exclude") and not v):
                continue
            if isinstance(v, Path):
                v = str(v)
            lines.append(f"{key} = {_toml_value(v)}")
        lines.append("")
    return "\n".join(lines)
