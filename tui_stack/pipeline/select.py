"""Step 1, which frames: the glob, the header filter and the exclusions, for `run` and the wizard alike."""

from __future__ import annotations

from pathlib import Path

from tui_stack.config import Config
from tui_stack.core import io
from tui_stack.errors import InputError


def select(cfg: Config, skipped: list | None = None) -> list[Path]:
    """The sorted frames to work on. A file named in `exclude` that cannot be read (not FITS,
    or data its header does not describe: truncated, a wrong BITPIX) is skipped, not an error,
    and (path, reason) appended to `skipped`; any other unreadable file is an error naming it."""
    names = {e for e in cfg.input.exclude if isinstance(e, str)}
    return io.select_files(cfg.input.directory, cfg.input.pattern, cfg.input.select, skip=names, skipped=skipped)


def scan(directory: Path, pattern: str, progress=None):
    """Every file the glob matches, with its headers and quick statistics (the wizard's file
    table); an unreadable one carries its reason. Which of them the header filter keeps is
    FrameInfo.selected_by, the rule `select` applies."""
    try:
        files = io.match_files(directory, pattern)
    except InputError:
        return
    for k, path in enumerate(files):
        if progress is not None:
            progress("reading headers", k, len(files))
        yield io.frame_info(path)


def resolve_reference(cfg: Config, files: list[Path]) -> int:
    if isinstance(cfg.reference.frame, int):
        if cfg.reference.frame >= len(files):
            raise InputError(
                f"config: [reference].frame = {cfg.reference.frame} but only {len(files)} frames are selected (0-based)"
            )
        return cfg.reference.frame
    names = [f.name for f in files]
    if cfg.reference.frame in names:
        return names.index(cfg.reference.frame)
    raise InputError(f"config: [reference].frame = {cfg.reference.frame!r} is not one of the selected files")


def excluded_indices(cfg: Config, files: list[Path]) -> set[int]:
    names = [f.name for f in files]
    out = set()
    for item in cfg.input.exclude:
        if isinstance(item, int):
            if not 0 <= item < len(files):
                raise InputError(f"config: [input].exclude has index {item}, outside 0..{len(files) - 1}")
            out.add(item)
        elif item in names:
            out.add(names.index(item))
        elif (cfg.input.directory / item).exists():
            continue  # unreadable or filtered out by the header keywords: not selected anyway
        else:
            raise InputError(f"config: [input].exclude names {item!r}, which is not a selected file")
    return out

