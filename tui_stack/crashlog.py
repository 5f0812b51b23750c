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


def private_dir(path: Path) -> Path:
    """`path` made if missing (0700), then checked: a real directory (not a symlink) owned by
    this user, writable by no one else. OSError otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to another user")
    if st.st_mode & 0o022:
        raise OSError(f"{path} is writable by others")
    return path


def create_exclusive(directory: Path, stem: str, suffix: str):
    """A new file `stem[-k]suffix` in `directory`, never an existing file or a link: (fd, path)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for k in range(100):
        path = Path(directory) / (f"{stem}{'-' + str(k) if k else ''}{suffix}")
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise OSError(f"cannot create a new log file in {directory}")


def write(exc: BaseException) -> Path | None:
    """The traceback of `exc` in a new log file; its path, or None if it could not be written
    (the caller says so instead: a crash log must never become a second crash)."""
    try:
        directory = private_dir(state_dir() / "crash")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        fd, path = create_exclusive(directory, f"crash-{stamp}-{os.getpid()}", ".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write("".join(traceback.format_exception(exc)))
        return path
    except (OSError, ValueError):
        return None
