"""The wizard's session on disk: choices and measured tables, never pixels.

Saved after every measurement, step change, method change and edited field, so a user whose
SSH link dropped runs `tui-stack --resume` and is back at the same step with the same tables,
highlighted rows and fields. One session per user and frame directory: two observers on one
shared account, each on their own night's frames, do not overwrite each other; a second
wizard on the same directory while the first still runs saves nothing (and says so).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

from tui_stack import __version__
from tui_stack.errors import InputError


def state_dir() -> Path:
    base = os.environ.get("TUI_STACK_STATE_DIR") or os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base else Path.home() / ".local" / "state"
    return root if os.environ.get("TUI_STACK_STATE_DIR") else root / "tui-stack"


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or the password database
        return str(os.getuid())


def session_path(directory: Path) -> Path:
    """The session of this user on the frames in `directory`."""
    import hashlib

    key = hashlib.sha1(str(Path(directory).resolve()).encode()).hexdigest()[:12]
    return state_dir() / "sessions" / f"{_user()}-{key}" / "session.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(path: Path) -> int | None:
    """The pid of another live wizard that holds the session at `path`, or None."""
    try:
        pid = int(path.with_suffix(".lock").read_text())
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


def claim(path: Path, take: bool = False) -> bool:
    """This process may write the session at `path`: no other live wizard holds it (take: it
    is taken from the one that does, which then stops saving)."""
    lock = path.with_suffix(".lock")
    if not take and holder(path) is not None:
        return False
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
    except OSError:
        return False
    return True


def release(path: Path) -> None:
    lock = path.with_suffix(".lock")
    try:
        if int(lock.read_text()) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def _clean(v):
    """JSON-safe: NaN -> None, paths -> str, numpy scalars -> Python."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item"):
        return _clean(v.item())
    return v


def _nan(v):
    return float("nan") if v is None else v


def save(ws, step: int, ui: dict | None = None) -> Path | None:
    """Write the session; a failure to save never stops the wizard. None when another live
    wizard holds this directory's session."""
    from tui_stack.core.io import write_text_atomic

    path = session_path(ws.config.input.directory)
    if not claim(path):
        return None
    run = ws.run
    data = {
        "version": __version__,
        "step": step,
        "directory": str(ws.config.input.directory),
        "ui": ui or {},  # per step: highlighted rows, typed fields
        "config": ws.config_toml(),
        "included": sorted(ws.infos[i].path.name for i in ws.included if i < len(ws.infos)),
        "suggested_ref": ws.suggested_ref,
        "star_xy": list(ws.star_xy) if ws.star_xy else None,
    }
    if run is not None:
        data["run"] = {
            "files": [str(p) for p in run.files],
            "shape": list(run.shape),
            "ref_index": run.ref_index,
            "ref_star": dataclasses.asdict(run.ref_star) if run.ref_star else None,
            "comparison_stars": [list(s) for s in run.comparison_stars],
            "frames": [dataclasses.asdict(fr) for fr in run.frames],
            "qualities": [dataclasses.asdict(q) for q in run.qualities],
            "combined": [
                {"method": c.method, "n_frames": c.n_frames, "median": c.stats.median, "std": c.stats.std,
                 "ratio_median": c.photometry.ratio_median}
                for c in run.combined
            ],
        }
        data["run"]["fingerprints"] = [_fingerprint(p) for p in run.files]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(_clean(data)))
    except Exception:
        return None
    return path


_PRINTS: dict = {}


def _fingerprint(path: Path) -> dict | None:
    """Size, mtime and digest of a measured frame (tui_stack.resume), kept per file version."""
    from tui_stack import resume

    try:
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in _PRINTS:
            _PRINTS[key] = resume.fingerprint(path)
        return _PRINTS[key]
    except OSError:
        return None


def load(directory: Path | None = None) -> dict | None:
    """The session on `directory`, or without one this user's newest session; None if there is
    none. A session that is not valid JSON or not what `save` writes is an InputError naming its
    path (exit 2), never a crash or 'not found'."""
    from tui_stack import resume

    if directory is not None:
        paths = [session_path(directory)]
    else:
        paths = sorted((state_dir() / "sessions").glob(f"{_user()}-*/session.json"), key=lambda p: p.stat().st_mtime,
                       reverse=True)
    if not paths:
        return None
    path = paths[0]
    data = resume.load_session(path)
    if data is not None:
        try:
            _build_run(data, None)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise InputError(f"{path}: saved session is malformed ({type(exc).__name__}: {exc}); "
                             "start without --resume to make a new one") from None
        data["_path"] = str(path)
    return data


def _build_run(data: dict, config):
    """The pipeline state of the saved tables."""
    from tui_stack import pipeline
    from tui_stack.core import quality, registration

    saved = data.get("run")
    if not saved:
        return None
    run = pipeline.RunState(config=config, files=[Path(p) for p in saved["files"]])
    run.ref_index = saved["ref_index"]
    run.shape = tuple(saved.get("shape", (0, 0)))
    if saved.get("ref_star"):
        run.ref_star = registration.StarPosition(**{k: _nan(v) for k, v in saved["ref_star"].items()})
    run.comparison_stars = [tuple(s) for s in saved.get("comparison_stars", [])]
    run.qualities = [quality.FrameQuality(**{k: _nan(v) if k != "flags" else v for k, v in q.items()})
                     for q in saved.get("qualities", [])]
    frames = []
    # JSON has no NaN: a float field saved as null is NaN again; transform stays None (a shift)
    floats = {f.name for f in dataclasses.fields(pipeline.FrameResult) if isinstance(f.default, float)}
    for fd in saved.get("frames", []):
        fd = dict(fd)
        fd["path"] = Path(fd["path"])
        q = fd.pop("quality", None)
        for k, v in fd.items():
            if v is None and k in floats:
                fd[k] = float("nan")
        fr = pipeline.FrameResult(**fd)
        fr.quality = quality.FrameQuality(**{k: _nan(v) if k != "flags" else v for k, v in q.items()}) if q else None
        frames.append(fr)
    run.frames = frames
    return run


def restore_run(ws, data: dict) -> str:
    """Rebuild the pipeline state from the saved tables (frames are re-read only when needed),
    and what the screens showed (rows, fields). If a frame is not the one measured any more
    (size, mtime, digest: tui_stack.resume), the tables are not used - they are measured
    again - and the reason is returned."""
    from tui_stack import resume, safetext

    ws.ui_restore = dict(data.get("ui") or {})
    if data.get("star_xy"):
        ws.star_xy = tuple(data["star_xy"])
    ws.suggested_ref = data.get("suggested_ref")
    if not data.get("run"):
        return ""
    stale = resume.stale_frames(data)
    if stale:
        i, why = stale[0]
        name = Path(data["run"]["files"][i]).name
        more = f" and {len(stale) - 1} more" if len(stale) > 1 else ""
        return (f"{safetext.terminal(name)}{more}: {why} since the session was saved; "
                "its measurements are redone")
    ws.run = _build_run(data, ws.config)
    ws.restored_combined = data["run"].get("combined", [])
    # a setting saved without the tables measured under it (a session of an older version cut
    # in a re-measure): those tables and what depends on them are measured again
    other = ws.run.measured_otherwise(ws.config)
    if other == "shifts":
        ws.run.frames, ws.restored_combined = [], []
        data["step"] = min(int(data.get("step", 0)), 2)
        return f"the saved shifts were not measured in {ws.config.shift.mode} mode; measured again"
    if other == "scales":
        ws.run.clear_scales()
        ws.restored_combined = []
        data["step"] = min(int(data.get("step", 0)), 3)
        return "the saved scales were measured with another [scale] method or radius; measured again"
    return ""
