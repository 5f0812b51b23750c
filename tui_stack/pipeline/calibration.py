"""Step 0, calibrate: masters from the [calibrate] frames, and every read of a light calibrated.

The steps read lights in two ways, and both go through here: whole frames (`read_frame`:
registration, photometry, previews, shifted frames) and row blocks (`source`: the combine).
So the calibrated lights flow through the steps without a calibrated copy on disk.

The calibration built for a config is kept per [calibrate] settings (`active`), so the steps,
which are given the config only, find it; `run` and the wizard build it with `calibrate`.
"""

from __future__ import annotations

import dataclasses
import glob
import threading
from pathlib import Path

from tui_stack import __version__
from tui_stack.config import Config
from tui_stack.core import calibrate as cal
from tui_stack.core import combine, io
from tui_stack.core.combine_params import CombineParams
from tui_stack.errors import InputError
from tui_stack.pipeline.state import Progress, RunState, noop

_BUILT: dict = {}  # settings key -> Calibration; the last few only (masters are 64 MB each at 4k)
_KEEP = 2
_lock = threading.Lock()


def frame_lists(cfg: Config) -> dict[str, list[Path]]:
    """bias, dark and flat files from their globs or lists, relative to the config's directory."""
    out = {}
    for kind in cal.KINDS:
        value = getattr(cfg.calibrate, kind)
        if not value:
            out[kind] = []
            continue
        items = [value] if isinstance(value, str) else list(value)
        files = []
        for item in items:
            pattern = str(item if Path(item).is_absolute() else Path(cfg.base_dir) / item)
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
            if not found:
                raise InputError(f"config: [calibrate].{kind} = {item!r} matches no file (relative to {cfg.base_dir})")
            files += found
        out[kind] = sorted({p.resolve() for p in files})
    return out


def planned_masters(cfg: Config, lights) -> list[str]:
    """The master files a run with this config writes (checked with the other outputs first)."""
    if not cfg.calibrate.any:
        return []
    sets = frame_lists(cfg)
    names = [f"master_{k}.fits" for k in ("bias", "dark") if sets[k]]
    if sets["flat"]:
        flat_filters = {cal.read_info(p).filter for p in sets["flat"]}
        if flat_filters == {""}:
            names.append(f"master_flat_{cal.safe_filter('')}.fits")
        else:
            light_filters = {cal.read_info(p).filter for p in lights}
            names += [f"master_flat_{cal.safe_filter(f)}.fits" for f in sorted(flat_filters & light_filters)]
    return names


def options(cfg: Config) -> cal.Options:
    c = cfg.calibrate
    try:
        params = CombineParams(method=c.method, sigma=c.sigma, maxiters=c.maxiters, nlow=c.nlow, nhigh=c.nhigh)
    except ValueError as exc:
        raise InputError(f"config: [calibrate] {exc}") from None
    return cal.Options(overscan=c.overscan, trim=c.trim, overscan_stat=c.overscan_stat, overscan_order=c.overscan_order,
                       bias_params=params, dark_params=dataclasses.replace(params), flat_params=dataclasses.replace(params),
                       hot_sigma=c.hot_sigma, dead_below=c.dead_below, max_dark_scale=c.max_dark_scale,
                       cosmics=c.cosmics, cosmic_sigma=c.cosmic_sigma, cosmic_objlim=c.cosmic_objlim,
                       memory_limit=cfg.combine.memory_limit)


def _key(cfg: Config) -> tuple:
    return (str(Path(cfg.base_dir).resolve()), repr(dataclasses.astuple(cfg.calibrate)))


def active(cfg: Config) -> cal.Calibration | None:
    """The calibration built for this config's [calibrate], or None without one."""
    if not cfg.calibrate.any:
        return None
    with _lock:
        return _BUILT.get(_key(cfg))


def calibrate(state: RunState, progress: Progress = noop) -> cal.Calibration | None:
    """Build the masters for the state's files (or reuse the ones built for the same settings)."""
    cfg = state.config
    if not cfg.calibrate.any:
        state.calibration = None
        return None
    from tui_stack import compute

    if compute.current().name != "local":
        raise InputError('[calibrate] runs on this machine only: use [compute] scheduler = "local"')
    key = _key(cfg)
    with _lock:
        calib = _BUILT.get(key)
    lights = list(state.files)
    if calib is None or any(m.data is None for m in calib.masters):
        sets = frame_lists(cfg)
        overlap = set(lights) & {p for v in sets.values() for p in v}
        if overlap:
            raise InputError(f"{sorted(overlap)[0].name}: both a light ([input]) and a calibration frame ([calibrate])")
        calib = cal.build(sets["bias"], sets["dark"], sets["flat"], lights, options(cfg), progress)
        with _lock:
            _BUILT[key] = calib
            while len(_BUILT) > _KEEP:
                _BUILT.pop(next(iter(_BUILT)))
    else:
        for p in lights:
            calib.light_correction(p)  # the same checks for lights added since
    state.calibration = calib
    return calib


def _of(state: RunState) -> cal.Calibration | None:
    """The state's calibration (the wizard builds it on a state of its own: found by settings)."""
    if state.calibration is None and state.config.calibrate.any:
        state.calibration = active(state.config)
    return state.calibration


def write_masters(state: RunState, out: Path) -> list[Path]:
    """master_bias.fits, master_dark.fits, master_flat_<FILTER>.fits with provenance."""
    calib = _of(state)
    if calib is None:
        return []
    written = []
    for m in calib.masters:
        if m.data is None:
            continue
        path = Path(out) / m.file_name
        io.write_fits_atomic(path, cal.master_hdul(m, __version__, calib.geometry))
        written.append(path)
    return written


def release(state: RunState) -> None:
    """Masters written: keep only what the lights need (`run`; the wizard keeps them to show)."""
    if state.calibration is not None:
        state.calibration.prepare(state.files)


def _active_or_built(cfg: Config) -> cal.Calibration | None:
    """The calibration for cfg; built here, for the config's lights, if no step built it yet
    (a wizard session resumed after a dropped link)."""
    calib = active(cfg)
    if calib is None and cfg.calibrate.any:
        from tui_stack.pipeline.select import select

        calib = calibrate(RunState(config=cfg, files=select(cfg)))
    return calib


def read_frame(path: Path, cfg: Config) -> io.Frame:
    """A light as the steps see it: calibrated when the config has [calibrate]."""
    calib = _active_or_built(cfg)
    return io.read_frame(path) if calib is None else calib.read_frame(path)


def source(state: RunState, path: Path, hdu_index: int, dx: int, dy: int, zero: float, scale: float,
           flip: bool = False):
    """A light's combine source: calibrated row blocks when calibrating, else the file's rows."""
    calib = _active_or_built(state.config)
    if calib is None:
        return combine.FileSource(path, hdu_index, state.shape, dx, dy, zero, scale, flip=flip)
    return calib.source(path, dx, dy, zero, scale, flip=flip)


def warp_source(state: RunState, path: Path, hdu_index: int, matrix, zero: float, scale: float):
    """A light's resampling combine source (subpixel shifts, transforms; combine.WarpSource):
    calibrated rows when calibrating, else the file's rows."""
    calib = _active_or_built(state.config)
    if calib is None:
        return combine.WarpSource(path, hdu_index, None, matrix, zero, scale, out_shape=state.shape)
    calib.light_correction(path)  # checks now, not inside the combine's threads
    return combine.WarpSource(path, hdu_index, calib.shape, matrix, zero, scale, out_shape=state.shape,
                              make_reader=lambda: calib.reader(path))


def report(state: RunState) -> dict | None:
    calib = _of(state)
    if calib is None:
        return None
    d = calib.report()
    d["lights"] = len(state.files)
    return d
