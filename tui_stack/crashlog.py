"""Logs of unexpected errors, in the user's own state directory.

Never a shared folder under a predictable name: /tmp/tui-stack-crash-<pid>.log let another user
plant a symlink there and have a crash of yours overwrite any file you can write. The directory
is made 0700 and must be a real directory owned by the user; the log is created exclusively
(O_EXCL, O_NOFOLLOW), mode 0600.
"""

from __future__ import annotations

import os
import stat
import time
import traceback
from pathlib import Path


def state_dir() -> Path:
    """$TUI_STACK_STATE_DIR, else $XDG_STATE_HOME/tui-stack, else ~/.local/state/tui-stack
    (the wizard's session lives there too)."""
    own = os.environ.get("TUI_STACK_STATE_DIR")
    if own:
        return Path(own)
    base = os.environ.get("XDG_STATE_HOME")
    return (Path(base) if base else Path.home() / ".local" / "state") / "tui-stack"


def _check_private(st, path: Path) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to another user")
    if st.st_mode & 0o022:
        raise OSError(f"{path} is writable by others")


def open_private_dir(path: Path) -> int:
    """`path` made if missing (0700) and opened (O_NOFOLLOW): it and its parent must be real
    directories of this user that no one else can write to. Returns a directory fd; files are
    made relative to it, so the path cannot be swapped for a link in between. OSError otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_private(os.lstat(path.parent), path.parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_private(os.fstat(fd), path)
    except OSError:
        os.close(fd)
        raise
    return fd


def create_exclusive(dir_fd: int, directory: Path, stem: str, suffix: str):
    """A new file `stem[-k]suffix` in the directory, never an existing file or a link: (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for k in range(100):
        name = f"{stem}{'-' + str(k) if k else ''}{suffix}"
        try:
            return os.open(name, flags, 0o600, dir_fd=dir_fd), Path(directory) / name
        except FileExistsError:
            continue
    raise OSError(f"cannot create a new log file in {directory}")


def write(exc: BaseException) -> Path | None:
    """The traceback of `exc` in a new log file; its path, or None if it could not be written
    (the caller says so instead: a crash log must never become a second crash)."""
    try:
        directory = state_dir() / "crash"
        dir_fd = open_private_dir(directory)
        try:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            fd, path = create_exclusive(dir_fd, directory, f"crash-{stamp}-{os.getpid()}", ".log")
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write("".join(traceback.format_exception(exc)))
        return path
    except (OSError, ValueError):
        return None
