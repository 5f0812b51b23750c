"""A run owns exactly what it writes in its output directory.

- A lock (`.tui-stack.lock`, flock) so one run at a time writes there; the file names its
  holder, so a second run can say who. The kernel drops the lock when the holder dies, however
  it dies.
- Every output is written into a hidden staging folder inside the directory (same file system,
  so moving is a rename) and put in place as one set at the end (`commit`), signals held back
  for those few renames: after any interruption the directory holds the previous complete set
  or the new one, never a mix.
- The previous set is known by name, size and mtime (`.tui-stack-outputs.json`, or for a
  directory written before this existed, the files report.json names): only those are replaced
  or removed. Any other file - a colleague's notes, frames the telescope writes there, a
  subfolder - is never touched, and an output name that would overwrite one is refused.
- A staging folder whose owner is gone (SIGKILL, power cut: its own flock is free) is removed
  by the next run, or finished if it had got as far as its commit journal.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path

from tui_stack import safetext, signals
from tui_stack.errors import InputError

LOCK = ".tui-stack.lock"
MANIFEST = ".tui-stack-outputs.json"
STAGING_PREFIX = ".tui-stack-staging-"
JOURNAL = ".commit.json"  # in a staging folder: the set is complete, put it in place
SCRATCH = ".scratch"  # in a staging folder: temporary files that are not outputs
_OWNER = ".owner"  # in a staging folder: flocked by the run writing it
COMMITTED: list = []  # outputs this process put in place: a signal after that did not undo them
_OLD_TMP_PREFIXES = (".tui-stack-tmp-", ".tui-stack-probe-")  # left by versions before this one


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


def _flock(fd: int, where: Path | None = None) -> bool:
    """An exclusive lock on `fd` without waiting: False if another process holds it. A file
    system without locks (some NFS mounts, FUSE) is an input error naming `where`: a run
    there cannot tell a live writer from a dead one, so it would risk another run's files."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if exc.errno in _NO_LOCKS and where is not None:
            raise InputError(f"{where}: its file system does not lock files ({exc.strerror}); "
                             "write the outputs to a local disk (--out)") from None
        raise


def cannot_write(directory: Path, exc: OSError) -> InputError:
    """A disk that is full or read-only, named by the output directory (not a hidden file of ours)."""
    if exc.errno == errno.ENOSPC:
        return InputError(f"{directory}: no space left on the device; free some or choose another output directory")
    return InputError(f"{directory}: output directory is not writable ({exc.strerror or exc})")


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def foreign_in_sticky(directory: Path, names) -> tuple[Path, str] | None:
    """(a file of `names` in `directory`, its owner) that this user cannot replace or remove:
    in a sticky directory (/tmp, a shared scratch) only the file's owner, the directory's or
    root can. None where every one of them can be."""
    try:
        st = os.stat(directory)
    except OSError:
        return None
    me = os.geteuid()
    if not st.st_mode & stat.S_ISVTX or me in (0, st.st_uid):
        return None
    for name in names:
        try:
            owner = os.lstat(Path(directory) / name).st_uid
        except OSError:
            continue
        if owner != me:
            return Path(directory) / name, _user(owner)
    return None


def _open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)


def _holder_text(command: str) -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args = " ".join(sys.argv[1:])
    argv0 = sys.argv[0] if sys.argv else ""
    if args and (Path(argv0).name == "tui-stack" or "tui_stack" in argv0):  # its command line, as ps shows it
        command = f"{command.split()[0]} {args}"[:240]
    return f"{command}, pid {os.getpid()} on {socket.gethostname()}, user {user}, since {since}"


class DirLock:
    """An exclusive flock on `directory/name`, holding a line that says who holds it."""

    def __init__(self, directory: Path, command: str, name: str = LOCK):
        self.path = Path(directory) / name
        self.command = command
        self.fd: int | None = None

    def acquire(self) -> "DirLock":
        for _ in range(20):
            try:
                fd = _open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                writable = True
            except PermissionError:  # another user's lock file, left by a run that died
                fd = _open_nofollow(self.path, os.O_RDONLY)
                writable = False
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise InputError(f"{self.path}: is a symbolic link; remove it") from None
                raise InputError(f"{self.path.parent}: cannot lock the output directory ({exc.strerror})") from None
            try:
                locked = _flock(fd, self.path.parent)
            except InputError:
                if os.fstat(fd).st_size == 0:  # ours, just made: leave the folder as it was
                    self.path.unlink(missing_ok=True)
                os.close(fd)
                raise
            if not locked:
                holder = self._read(fd)
                os.close(fd)
                raise InputError(
                    f"{self.path.parent}: another tui-stack run is writing there "
                    f"({safetext.terminal(holder) or 'holder unknown'}); wait for it or choose another output directory")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed it as we opened it: take the new one
                os.close(fd)
                continue
            if not writable:
                os.close(fd)
                try:
                    self.path.unlink()
                except OSError as exc:
                    raise InputError(f"{self.path}: stale lock of another user cannot be removed "
                                     f"({exc.strerror})") from None
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, (_holder_text(self.command) + "\n").encode("utf-8", "backslashreplace"))
            except OSError as exc:  # a full disk: no lock file left behind, the folder as it was
                self.path.unlink(missing_ok=True)
                os.close(fd)
                raise cannot_write(self.path.parent, exc) from None
            self.fd = fd
            return self
        raise InputError(f"{self.path.parent}: cannot lock the output directory (lock file keeps changing)")

    @staticmethod
    def _read(fd: int) -> str:
        try:
            return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink()  # while still locked: the next run makes a new one
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# ---------------------------------------------------------------- the previous set


def _stat_entry(path: Path):
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        return {str(k): list(v) for k, v in files.items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # unreadable: nothing is known to be ours


def _report_names(directory: Path) -> set:
    """Outputs a run of an earlier version wrote: the files its report.json names."""
    try:
        rep = json.loads((directory / "report.json").read_text(encoding="utf-8"))
        names = {"report.json"}
        for c in [rep.get("combined") or {}] + list(rep.get("all_combined") or []):
            if c.get("file"):
                names.add(str(c["file"]))
        for f in rep.get("frames") or []:
            names.add("s" + str(f["file"]))
        return {n for n in names if "/" not in n}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def previous_set(directory: Path) -> dict:
    """{name: [size, mtime_ns]} of the last complete set written here that is still as written."""
    directory = Path(directory)
    recorded = _read_manifest(directory)
    out = {}
    if recorded is None:
        for name in _report_names(directory):
            try:
                entry = _stat_entry(directory / name)
            except OSError:
                continue
            if entry is not None:
                out[name] = entry
        return out
    for name, entry in recorded.items():
        try:
            now = _stat_entry(directory / name)
        except OSError:
            continue
        if now == entry:  # changed since: not ours any more
            out[name] = entry
    return out


# ---------------------------------------------------------------- leftovers


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _put_in_place(directory: Path, staging: Path, journal: dict) -> None:
    """Move the staged set into `directory` and remove what of the old set it does not replace."""
    for name in journal["files"]:
        src = staging / name
        if os.path.lexists(src):
            os.replace(src, directory / name)
    for name, entry in journal["remove"].items():
        try:
            if _stat_entry(directory / name) == list(entry):
                os.unlink(directory / name)
        except OSError:
            pass
    tmp = staging / (MANIFEST + ".new")
    tmp.write_text(json.dumps({"files": journal["files"]}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)
    _fsync_dir(directory)


def _remove_tree(path: Path) -> None:
    for _ in range(3):  # a worker may still be closing a file in it
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.05)


def recover(directory: Path) -> list[str]:
    """Deal with what killed runs left in `directory` (the caller holds its lock): a staging
    folder with a commit journal is put in place, any other is removed; returns what was done."""
    directory = Path(directory)
    done = []
    for entry in os.scandir(directory):
        name = entry.name
        if name.startswith(STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
            owner = Path(entry.path) / _OWNER
            try:
                fd = _open_nofollow(owner, os.O_RDONLY)
            except OSError:
                fd = None
            try:
                if fd is not None and not _flock(fd, directory):
                    continue  # alive: a `combine` writing here at the same time
                try:
                    journal = json.loads((Path(entry.path) / JOURNAL).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    journal = None
                if journal is not None:
                    try:
                        _put_in_place(directory, Path(entry.path), journal)
                        done.append(f"finished the interrupted commit of {name}")
                    except OSError as exc:
                        done.append(f"could not finish the interrupted commit of {name} ({exc.strerror or exc})")
                _remove_tree(Path(entry.path))
                if os.path.lexists(entry.path):
                    who = _user(entry.stat(follow_symlinks=False).st_uid)
                    done.append(f"could not remove {name}, left by a killed run of user {who} "
                                f"(they or root can; it may hold large files)")
                else:
                    done.append(f"removed {name}")
            finally:
                if fd is not None:
                    os.close(fd)
        elif name.startswith(_OLD_TMP_PREFIXES):
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(Path(entry.path))
            else:
                Path(entry.path).unlink(missing_ok=True)
            done.append(f"removed {name}")
    return done


# ---------------------------------------------------------------- one run's outputs


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or name.startswith(".tui-stack") or "\0" in name:
        raise ValueError(f"not an output name: {name!r}")
    return name


class OutputDir:
    """The output directory of one run: locked, staged, committed as one set.

    with OutputDir(out, "run") as od:
        od.check_names(planned)               # refuse to overwrite what is not ours
        write to od.path("combined_median.fits"), ... ; temporary files in od.scratch()
        od.commit()                           # in place, as one set
    Leaving the block without a commit removes the staging folder (and the directory itself
    if this run created it and nothing else is in it).
    """

    def __init__(self, directory: Path, command: str = "tui-stack run", protect: set | frozenset = frozenset()):
        self.directory = Path(directory)
        self.command = command
        self.protect = {os.path.realpath(p) for p in protect}  # inputs: never an output
        self.created: list[Path] = []
        self.lock: DirLock | None = None
        self.staging: Path | None = None
        self._owner_fd: int | None = None
        self.previous: dict = {}
        self.committed = False
        self.recovered: list[str] = []

    # -- setup

    def _make_dirs(self) -> None:
        missing = []
        p = self.directory
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(f"{self.directory}: cannot create the output directory ({exc.strerror})") from None
            self.created.append(d)
        if not self.directory.is_dir():
            raise InputError(f"{self.directory}: is not a directory")

    def __enter__(self) -> "OutputDir":
        self._make_dirs()
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise InputError(f"{self.directory}: output directory is not writable")
        try:
            self.lock = DirLock(self.directory, self.command).acquire()
        except BaseException:
            self._remove_created()
            raise

        def replaced():
            self.previous = previous_set(self.directory)
            return [*self.previous, MANIFEST]

        self._stage(replaced, "{path}: the outputs here are user {owner}'s, and this directory's sticky bit lets only "
                              "them replace them; choose another output directory")
        return self

    def _stage(self, replaced, refusal: str) -> None:
        """Under the lock: deal with what killed runs left, open this run's staging folder, and
        refuse before any work to replace what this user may not (`replaced()`: the names it
        would replace; `refusal` says so, with {path} and {owner})."""
        import tempfile

        try:
            self.recovered = recover(self.directory)
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.directory))
            self._owner_fd = _open_nofollow(self.staging / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
            _flock(self._owner_fd, self.directory)
            names = replaced()
        except OSError as exc:
            self._abort()
            raise cannot_write(self.directory, exc) from None
        except BaseException:
            self._abort()
            raise
        foreign = foreign_in_sticky(self.directory, names)
        if foreign is not None:
            self._abort()
            raise InputError(refusal.format(path=safetext.terminal(foreign[0]), owner=foreign[1]))

    def __exit__(self, exc_type, exc, tb):
        with signals.deferred():
            if not self.committed:
                self._abort()
            else:
                self._release()
        return False

    # -- writing

    def path(self, name: str) -> Path:
        """Where the output `name` is written during the run."""
        return self.staging / _check_name(name)

    def scratch(self) -> Path:
        """A folder for temporary files that are not outputs (removed, never published)."""
        d = self.staging / SCRATCH
        d.mkdir(exist_ok=True)
        return d

    def final(self, name: str) -> Path:
        """Where the output `name` will be once committed."""
        return self.directory / _check_name(name)

    def check_names(self, names) -> None:
        """Exit 2 before any work if an output would replace an input or a file that is not
        one of the previous run's outputs here."""
        for name in names:
            target = self.final(name)
            if os.path.realpath(target) in self.protect:  # realpath: a link loop is no error here
                raise InputError(f"{safetext.terminal(target)}: output would overwrite an input file; "
                                 "choose another output directory")
            if os.path.lexists(target) and name not in self.previous:
                kind = "a folder" if target.is_dir() else "a file"
                raise InputError(f"{safetext.terminal(target)}: {kind} of that name is in the output directory and "
                                 "was not written by tui-stack's last run there; move it or choose another "
                                 "output directory")

    def check_space(self, nbytes: int, what: str = "the outputs") -> None:
        from tui_stack import limits

        limits.check_disk(self.directory, nbytes, what)

    # -- the end

    def commit(self) -> list[str]:
        """Put every staged output in place as one set; the previous set's files that the new
        set does not replace are removed. Returns the names put in place."""
        staging = self.staging
        _remove_tree(staging / SCRATCH)
        names = sorted(e.name for e in os.scandir(staging) if not e.name.startswith("."))
        self.check_names(names)  # again: something may have appeared there during the run
        files = {}
        for name in names:
            entry = _stat_entry(staging / name)
            if entry is None:
                raise InputError(f"{staging / name}: staged output is not a file")
            files[name] = entry
        journal = {"files": files, "remove": {k: v for k, v in self.previous.items() if k not in files}}
        with signals.deferred():
            # every writer (core.io) fsyncs its file before naming it: the names are made
            # durable here, then the journal that says the set is complete
            _fsync_dir(staging)
            tmp = staging / (JOURNAL + ".new")
            tmp.write_text(json.dumps(journal), encoding="utf-8")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, staging / JOURNAL)
            _fsync_dir(staging)
            try:
                _put_in_place(self.directory, staging, journal)
            except OSError as exc:  # the journal stays: the next run here finishes putting the set in place
                self.staging = None
                raise cannot_write(self.directory, exc) from None
            self.committed = True
            COMMITTED.append(self.directory)
            self._release()
        return names

    def _abort(self) -> None:
        if self.staging is not None:
            _remove_tree(self.staging)
            self.staging = None
        self._release()

    def _release(self) -> None:
        if self.staging is not None:
            _remove_tree(self.staging)
            self.staging = None
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if not self.committed:
            self._remove_created()

    def _remove_created(self) -> None:
        for d in reversed(self.created):
            try:
                d.rmdir()  # only if empty: never anything of anyone else's
            except OSError:
                break
        self.created = []


class OutputFile:
    """One output file (`tui-stack combine --out`): a lock of its own name, so two commands
    writing the same file exclude each other while different files in one folder do not;
    written in a staging folder beside it and renamed into place at the end."""

    def __init__(self, target: Path, command: str = "tui-stack combine"):
        import hashlib

        self.target = Path(target)
        key = hashlib.blake2b(self.target.name.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()
        self._dir = OutputDir(self.target.parent, command)
        self._dir_lock_name = f".tui-stack-{key}.lock"

    def __enter__(self) -> "OutputFile":
        od = self._dir
        od._make_dirs()
        try:
            od.lock = DirLock(od.directory, od.command, self._dir_lock_name).acquire()
        except InputError as exc:
            od._remove_created()
            raise InputError(str(exc).replace("another tui-stack run is writing there",
                                              f"another tui-stack command is writing {self.target.name}")) from None
        except BaseException:
            od._remove_created()
            raise
        od._stage(lambda: [self.target.name], "{path}: is user {owner}'s, and this directory's sticky bit lets only "
                                               "them replace it; choose another output file")
        return self

    @property
    def path(self) -> Path:
        return self._dir.staging / self.target.name

    def commit(self) -> None:
        od = self._dir
        with signals.deferred():
            with open(self.path, "rb") as fh:
                os.fsync(fh.fileno())
            try:
                os.replace(self.path, self.target)
            except OSError as exc:
                raise cannot_write(od.directory, exc) from None
            _fsync_dir(od.directory)
            od.committed = True
            COMMITTED.append(self.target)
            od._release()

    def __exit__(self, exc_type, exc, tb):
        return self._dir.__exit__(exc_type, exc, tb)


def directory_listing(directory: Path) -> dict:
    """{name: (size, mtime_ns)} of what is in `directory` (tests compare before and after)."""
    return {e.name: (e.stat(follow_symlinks=False).st_size, e.stat(follow_symlinks=False).st_mtime_ns)
            for e in os.scandir(directory)}


if __name__ == "__main__":  # pragma: no cover - `python -m tui_stack.rundir DIR` shows the state
    d = Path(sys.argv[1])
    print(json.dumps({"previous_set": previous_set(d)}, indent=1))


# ---------------------------------------------------------------- private scratch space


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/tui-stack, else ~/.cache/tui-stack: the user's own, not a shared /tmp."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "tui-stack"


class ScratchDir:
    """A private temporary folder (0700) in the user's cache directory, flocked while in use;
    making one removes those whose owner died (SIGKILL, power cut), so none stays for good.
    The wizard no longer needs one (the combine resamples inside its blocks); the wizard's start
    still runs clean_scratch for folders that earlier versions left."""

    def __init__(self, root: Path | None = None):
        import tempfile

        from tui_stack import crashlog

        self.root = Path(root) if root is not None else cache_dir()
        fd = crashlog.open_private_dir(self.root)
        os.close(fd)
        recover(self.root)
        self.path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
        self._fd = _open_nofollow(self.path / _OWNER, os.O_RDWR | os.O_CREAT, 0o600)
        _flock(self._fd, self.root)
        _SCRATCH.add(self)

    def close(self) -> None:
        _SCRATCH.discard(self)
        if self._fd is not None:
            _remove_tree(self.path)
            os.close(self._fd)
            self._fd = None


_SCRATCH: set = set()  # open ScratchDirs, for close_scratch


def close_scratch() -> None:
    """Remove every scratch folder this process still has (before a forced exit)."""
    for s in list(_SCRATCH):
        s.close()


def clean_scratch(root: Path | None = None) -> None:
    """Remove the scratch folders of wizards that were killed (run at the wizard's start)."""
    from tui_stack import crashlog

    root = Path(root) if root is not None else cache_dir()
    if not root.is_dir():
        return
    try:
        os.close(crashlog.open_private_dir(root))
    except OSError:
        return  # not the user's own: leave it alone
    recover(root)
