"""What `tui-stack --resume` may trust of a saved session.

The session holds measured tables of frames on disk. Before they are used again each frame is
checked against what was measured - size, mtime and a digest - and a session that is not what
`save` writes (hand-edited, truncated, another version) is refused with its path, exit 2.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tui_stack import safetext
from tui_stack.errors import InputError

_HEAD = 1 << 16  # the whole header of nearly every frame
_SAMPLES = 32  # blocks of pixels spread over the file
_BLOCK = 4096


def digest(path: Path, size: int | None = None) -> str:
    """blake2b of the file's first 64 KB (the header), 32 blocks of 4 KB spread evenly over the
    rest and its last 4 KB: a frame rewritten with other pixels or header changes it, and it
    costs ~0.3 ms per file whatever its size (hashing all of a 64 MB frame takes ~100 ms, 10 s
    for a night's 100 frames on every resume)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size if size is None else size
        h.update(size.to_bytes(8, "little"))
        h.update(os.pread(fh.fileno(), _HEAD, 0))
        if size > _HEAD:
            step = max(_BLOCK, (size - _HEAD) // _SAMPLES)
            for off in range(_HEAD, size, step):
                h.update(os.pread(fh.fileno(), _BLOCK, off))
            h.update(os.pread(fh.fileno(), _BLOCK, max(_HEAD, size - _BLOCK)))
    return h.hexdigest()


def fingerprint(path: Path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest(path, st.st_size)}


def changed(path: Path, saved: dict | None) -> str:
    """Why `path` is no longer the frame measured ('' if it still is)."""
    if not saved:
        return "not fingerprinted"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return exc.strerror or "unreadable"
    if st.st_size != saved.get("size"):
        return "size changed"
    if st.st_mtime_ns == saved.get("mtime_ns"):
        return ""  # same size and mtime: trusted without reading (as make and rsync do)
    try:
        return "" if digest(path, st.st_size) == saved.get("digest") else "contents changed"
    except OSError as exc:
        return exc.strerror or "unreadable"


# ---------------------------------------------------------------- the session's shape


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise InputError(f"{safetext.terminal(path)}: saved session is malformed ({what}); "
                         "start without --resume to make a new one")


def _is_num(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def load_session(path: Path) -> dict | None:
    """The saved session at `path`, None if there is none; InputError naming the path if it is
    not valid JSON or not what the wizard writes."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{safetext.terminal(path)}: saved session cannot be read "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{safetext.terminal(path)}: saved session is not valid JSON ({exc}); "
                         "start without --resume to make a new one") from None
    validate(data, Path(path))
    return data


def validate(data, path: Path) -> None:
    """The keys and types `tui.session.save` writes; the frames must be files of the session's
    own input directory and pattern, not any path the file names."""
    import tomllib

    _need(isinstance(data, dict), path, "not a JSON object")
    _need(isinstance(data.get("step"), int) and 0 <= data["step"] <= 4, path, "step must be 0-4")
    _need(isinstance(data.get("config"), str), path, "no config")
    try:
        cfg = tomllib.loads(data["config"])
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{safetext.terminal(path)}: saved session is malformed (its config: {exc})") from None
    _need(isinstance(data.get("included", []), list) and all(isinstance(n, str) for n in data.get("included", [])),
          path, "included must be a list of names")
    star = data.get("star_xy")
    _need(star is None or (isinstance(star, list) and len(star) == 2 and all(_is_num(v) for v in star)),
          path, "star_xy must be [x, y]")
    run = data.get("run")
    if run is None:
        return
    _need(isinstance(run, dict), path, "run must be an object")
    files = run.get("files")
    _need(isinstance(files, list) and files and all(isinstance(f, str) for f in files), path, "run.files")
    frames = run.get("frames")
    # no frames yet (the session ended on the Reference step), or one per file
    _need(isinstance(frames, list) and len(frames) in (0, len(files)), path, "run.frames must match run.files")
    _need(all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in frames), path, "run.frames[].path")
    ref = run.get("ref_index")
    _need(isinstance(ref, int) and 0 <= ref < len(files), path, "run.ref_index out of range")
    shape = run.get("shape")
    _need(isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v >= 0 for v in shape),
          path, "run.shape")
    stars = run.get("comparison_stars", [])
    _need(isinstance(stars, list) and all(isinstance(s, list) and len(s) == 2 and all(_is_num(v) for v in s)
                                          for s in stars), path, "run.comparison_stars")
    prints = run.get("fingerprints")
    _need(prints is None or (isinstance(prints, list) and len(prints) == len(files)
                             and all(p is None or isinstance(p, dict) for p in prints)), path, "run.fingerprints")
    # The frames must be the session's own: files of its input directory matching its pattern.
    inp = cfg.get("input", {}) if isinstance(cfg.get("input", {}), dict) else {}
    directory = inp.get("directory")
    _need(isinstance(directory, str), path, "its config names no input directory")
    import fnmatch

    root = Path(directory)
    pattern = inp.get("pattern", "*")
    for k, f in enumerate(files):
        p = Path(f)
        if frames:
            _need(frames[k]["path"] == f, path, f"run.frames path {frames[k]['path']!r} is not run.files' {f!r}")
        _need(p.is_absolute() and (p.parent == root or p.parent.resolve() == root.resolve())
              and fnmatch.fnmatch(p.name, str(pattern)), path,
              f"frame {safetext.terminal(f)} is not a {pattern} file of {safetext.terminal(directory)}")


def stale_frames(data: dict) -> list[tuple[int, str]]:
    """(index, reason) of each saved frame that is not the one measured."""
    run = data.get("run") or {}
    prints = run.get("fingerprints") or [None] * len(run.get("files", []))
    return [(i, why) for i, (f, fp) in enumerate(zip(run.get("files", []), prints))
            if (why := changed(Path(f), fp))]
