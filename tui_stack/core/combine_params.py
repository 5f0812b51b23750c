"""The combine's parameters, declared once.

One table (PARAMS) says for every parameter its default, what values are valid, which methods
use it and its FITS header card. The config's [combine] section, the `tui-stack combine`
flags, the validation and the provenance cards are all made from it, so they cannot drift.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Callable

METHODS = ("average", "median", "minmax", "sigmaclip", "sigclip", "avsigclip", "ccdclip", "pclip", "winsorized", "gesd")
WEIGHTS = ("none", "exposure", "noise")
MIN_MEMORY = 16 * 1024**2
DEFAULT_MEMORY_LIMIT = 256 * 1024**2

CLIPPING = ("sigmaclip", "sigclip", "avsigclip", "ccdclip", "pclip", "winsorized")
IRAF_KEEP = ("sigclip", "avsigclip", "ccdclip", "pclip", "winsorized", "gesd")
IRAF_MCLIP = ("sigclip", "avsigclip", "ccdclip")


# ---------------------------------------------------------------- checks: value -> value, or ValueError("must ...")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(minimum: int | None = None) -> Callable:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("must be an integer")
        if minimum is not None and v < minimum:
            raise ValueError(f"must be at least {minimum}")
        return v

    return check


def number(v) -> float:
    if not _is_number(v):
        raise ValueError("must be a number")
    if not math.isfinite(v):
        raise ValueError("must be a finite number")
    return float(v)


def at_least(minimum: float) -> Callable:
    def check(v):
        v = number(v)
        if v < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return v

    return check


def positive(v) -> float:
    v = number(v)
    if v <= 0:
        raise ValueError("must be positive")
    return v


def fraction(v) -> float:
    v = number(v)
    if not 0 < v < 1:
        raise ValueError("must be between 0 and 1")
    return v


def pclip_rank(v) -> float:
    v = number(v)
    if not -1 <= v <= 1 or v == 0:
        raise ValueError("must be between -1 and 1, not 0")
    return v


def choice(options) -> Callable:
    def check(v):
        if v not in options:
            raise ValueError(f"must be one of {', '.join(repr(o) for o in options)}")
        return v

    return check


def boolean(v) -> bool:
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def keyword(v) -> str:
    if not isinstance(v, str) or not v.strip() or len(v.strip()) > 8:
        raise ValueError("must be a FITS header keyword (1-8 characters)")
    return v.strip().upper()


def number_or_keyword(v):
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("must be a number or a header keyword")
        return keyword(v)
    return at_least(0)(v)


def parse_size(text) -> int:
    """'256MB', '2 GB', '512M' or a number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 256MB or 2GB)")
    units = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    return int(float(m.group(1)) * units[(m.group(2) or "").lower()[:1]])


def memory_size(v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise ValueError('must be a size such as "256MB"')
    try:
        size = parse_size(v)
    except ValueError:
        raise ValueError('must be a size such as "256MB"') from None
    if size < MIN_MEMORY:
        raise ValueError("must be at least 16MB")
    return size


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Param:
    name: str  # config key, CombineParams field, flag --name-with-dashes
    default: Any
    check: Callable  # value -> valid value, or ValueError("must ...")
    help: str
    methods: tuple = METHODS  # methods the parameter matters to (header cards, report)
    card: str | None = None  # FITS keyword of the provenance card
    comment: str = ""
    value: Callable | None = None  # what the card records, from the CombineParams (default: the field)
    method_param: bool = True  # a field of CombineParams; else only a run setting ([combine] key)
    cli: bool = True  # a flag of `tui-stack combine`
    off: str = ""  # what its --no- flag does (a switch that is on by default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def validate(self, where: str, value):
        """The valid value, or ValueError naming `where` (a config key or a flag)."""
        if value is None and self.default is None:
            return None
        try:
            return self.check(value)
        except ValueError as exc:
            raise ValueError(f"{where} {exc}, got {value!r}") from None


PARAMS: tuple[Param, ...] = (
    Param("method", "median", choice(METHODS), "combine method", card="TSMETHOD", comment="combine method", cli=False),
    Param("nlow", 3, integer(0), "minmax: values dropped low", ("minmax",), "TSNLOW", "values dropped low"),
    Param("nhigh", 3, integer(0), "minmax: values dropped high", ("minmax",), "TSNHIGH", "values dropped high"),
    Param("sigma", 3.0, positive, "clipping limit, both sides", CLIPPING),
    Param("lsigma", None, positive, "low clipping limit (default: sigma)", CLIPPING, "TSLSIGMA", "low clipping limit",
          value=lambda p: p.low),
    Param("hsigma", None, positive, "high clipping limit (default: sigma)", CLIPPING, "TSHSIGMA",
          "high clipping limit", value=lambda p: p.high),
    Param("maxiters", 1, integer(1), "sigmaclip: clipping passes (1 = ccdproc's combine)", ("sigmaclip",),
          "TSMAXIT", "clipping passes"),
    Param("nkeep", 1, integer(-10_000), "keep at least N values; negative: reject at most -N", IRAF_KEEP, "TSNKEEP",
          "IRAF nkeep"),
    Param("mclip", True, boolean, "clip about the median (else the mean without min and max)", IRAF_MCLIP,
          "TSMCLIP", "clip about the median",
          off="sigclip, avsigclip, ccdclip: clip about the mean of the values less the lowest and highest, "
              "not about the median (the default; IRAF mclip = no)"),
    Param("pclip", -0.5, pclip_rank, "pclip: rank of the spread estimate, as a fraction of n/2", ("pclip",),
          "TSPCLIP", "pclip rank parameter"),
    Param("gain", "GAIN", number_or_keyword, "ccdclip: e-/ADU, or the header keyword holding it", ("ccdclip",),
          "TSGAIN", "e-/ADU"),
    Param("rdnoise", "RDNOISE", number_or_keyword, "ccdclip: read noise in e-, or the header keyword",
          ("ccdclip",), "TSRDNOIS", "read noise, e-"),
    Param("snoise", 0.0, at_least(0), "ccdclip: fractional sensitivity noise", ("ccdclip",), "TSSNOISE",
          "sensitivity noise"),
    Param("sky", 0.0, number, "sky taken out of the values, still in their noise (ADU)", ("ccdclip", "avsigclip"),
          "TSSKY", "sky added back for the noise model, ADU", cli=False),
    Param("gesd_outliers", 0.3, fraction, "gesd: largest fraction of outliers", ("gesd",), "TSGESDF",
          "GESD outlier fraction"),
    Param("gesd_alpha", 0.05, fraction, "gesd: significance", ("gesd",), "TSGESDA", "GESD significance"),
    Param("weights", "none", choice(WEIGHTS), "weights of the average: none, exposure (the exposure time) or noise "
          "(1/(sky noise x scale)^2)", method_param=False),
    Param("exposure_key", "EXPTIME", keyword, "header keyword of the exposure time", method_param=False),
    Param("memory_limit", DEFAULT_MEMORY_LIMIT, memory_size, "bound on the combine's buffers, e.g. 256MB",
          method_param=False),
    Param("maps", False, boolean, "add NUSED, NREJECTED and SIGMA extensions (as IRAF)", method_param=False),
)
BY_NAME = {p.name: p for p in PARAMS}
# The config may name a header keyword for these; the engine takes the number it holds.
NUMBER_FIELDS = {"gain": 1.0, "rdnoise": 0.0}


@dataclass
class CombineParams:
    """What the combine engine needs, validated against PARAMS when made."""

    method: str = "median"
    nlow: int = 3
    nhigh: int = 3
    sigma: float = 3.0
    lsigma: float | None = None  # low / high clipping limits; default: sigma
    hsigma: float | None = None
    maxiters: int = 1
    nkeep: int = 1
    mclip: bool = True
    pclip: float = -0.5
    gain: float = 1.0  # ccdclip: e-/ADU (numbers here; the config may name a header keyword)
    rdnoise: float = 0.0
    snoise: float = 0.0
    sky: float = 0.0
    gesd_outliers: float = 0.3
    gesd_alpha: float = 0.05

    @property
    def low(self) -> float:
        return self.sigma if self.lsigma is None else self.lsigma

    @property
    def high(self) -> float:
        return self.sigma if self.hsigma is None else self.hsigma

    def __post_init__(self):
        for f in fields(self):
            p = BY_NAME[f.name]
            value = getattr(self, f.name)
            if f.name in NUMBER_FIELDS:
                if not _is_number(value) or not math.isfinite(value) or value < 0:
                    raise ValueError(f"combine parameter {f.name} must be a number of at least 0, got {value!r}")
                setattr(self, f.name, float(value))
                continue
            setattr(self, f.name, p.validate(f"combine parameter {f.name}", value))

    def check_frames(self, n: int, flags: bool = False) -> None:
        """Parameters that only make sense against the number of frames; the message names
        the command's flags (`flags`) or the config's keys."""
        if self.method == "minmax" and self.nlow + self.nhigh >= n:
            names = "--nlow / --nhigh" if flags else "[combine] nlow / nhigh"
            raise ValueError(f"minmax drops nlow + nhigh = {self.nlow + self.nhigh} values but only {n} frames "
                             f"are combined; lower {names}")


assert [f.name for f in fields(CombineParams)] == [p.name for p in PARAMS if p.method_param]


def method_parameters(params: CombineParams) -> list[tuple[str, str, object, str]]:
    """The parameters the method used, as (FITS card, name, value, comment) for provenance."""
    rows = []
    for p in PARAMS:
        if p.card and params.method in p.methods:
            value = p.value(params) if p.value else getattr(params, p.name)
            rows.append((p.card, p.name, value, p.comment))
    return rows
