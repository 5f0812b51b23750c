"""The output directory's lock, staging and one-set commit (tui_stack.rundir), on their own."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tui_stack import rundir
from tui_stack.errors import InputError


def listing(d):
    return {p.name: p.read_bytes() if p.is_file() else "dir" for p in sorted(d.iterdir())}


def write_set(d, names, text, command="tui-stack run"):
    with rundir.OutputDir(d, command) as od:
        od.check_names(names)
        for n in names:
            od.path(n).write_text(text)
        od.commit()


def test_commit_puts_the_set_in_place_and_leaves_no_trace(tmp_path):
    out = tmp_path / "a" / "out"
    write_set(out, ["report.json", "combined_median.fits"], "1")
    assert sorted(os.listdir(out)) == [rundir.MANIFEST, "combined_median.fits", "report.json"]
    manifest = json.loads((out / rundir.MANIFEST).read_text())["files"]
    assert set(manifest) == {"report.json", "combined_median.fits"}


def test_rerun_replaces_the_previous_set_and_only_it(tmp_path):
    out = tmp_path / "out"
    write_set(out, ["report.json", "combined_median.fits", "sa.fits", "sb.fits"], "old")
    (out / "seeing_log.txt").write_text("colleague")
    (out / "sci_001.fits").write_text("telescope")
    (out / "sub").mkdir()
    write_set(out, ["report.json", "combined_average.fits", "sa.fits"], "new")
    got = listing(out)
    assert got.pop(rundir.MANIFEST)
    assert got == {"report.json": b"new", "combined_average.fits": b"new", "sa.fits": b"new",
                   "seeing_log.txt": b"colleague", "sci_001.fits": b"telescope", "sub": "dir"}


def test_interrupted_rerun_keeps_the_previous_complete_set(tmp_path):
    out = tmp_path / "out"
    write_set(out, ["report.json", "sa.fits"], "old")
    before = listing(out)
    with pytest.raises(KeyboardInterrupt):
        with rundir.OutputDir(out) as od:
            od.path("report.json").write_text("new")
            od.scratch().joinpath("tmp.fits").write_text("x" * 1000)
            raise KeyboardInterrupt
    assert listing(out) == before


def test_a_file_that_is_not_ours_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("someone's")
    with pytest.raises(InputError, match="report.json: a file of that name .* not written by tui-stack"):
        write_set(out, ["report.json"], "new")
    assert listing(out) == {"report.json": b"someone's"}


def test_a_previous_output_changed_since_is_no_longer_ours(tmp_path):
    out = tmp_path / "out"
    write_set(out, ["report.json", "sa.fits"], "old")
    (out / "sa.fits").write_text("edited by hand")
    write_set(out, ["report.json"], "new")
    assert (out / "sa.fits").read_text() == "edited by hand"  # not removed with the old set
    with pytest.raises(InputError, match="sa.fits"):
        write_set(out, ["sa.fits"], "newer")


def test_a_directory_written_before_manifests_is_known_from_its_report(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"frames": [{"file": "a.fits"}, {"file": "b.fits"}],
                                                 "combined": {"file": "combined_median.fits"}}))
    for n in ("sa.fits", "sb.fits", "combined_median.fits", "notes.txt"):
        (out / n).write_text("old")
    write_set(out, ["report.json", "sa.fits", "combined_median.fits"], "new")
    got = listing(out)
    got.pop(rundir.MANIFEST)
    assert got == {"report.json": b"new", "sa.fits": b"new", "combined_median.fits": b"new", "notes.txt": b"old"}


def test_a_new_directory_is_removed_again_when_the_run_fails(tmp_path):
    with pytest.raises(InputError):
        with rundir.OutputDir(tmp_path / "x" / "y"):
            raise InputError("bad")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(InputError):
        with rundir.OutputDir(tmp_path / "kept"):
            raise InputError("bad")
    assert list((tmp_path / "kept").iterdir()) == []


def test_a_subfolder_and_a_file_appearing_during_the_run_are_left_alone(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with rundir.OutputDir(out) as od:
            od.path("report.json").write_text("new")
            (out / "night2").mkdir()
            (out / "night2" / "f.fits").write_text("t")
            (out / "seeing_log.txt").write_text("c")
            raise RuntimeError
    assert listing(out) == {"night2": "dir", "seeing_log.txt": b"c"}
    assert (out / "night2" / "f.fits").read_text() == "t"


def test_a_name_appearing_during_the_run_is_refused_at_the_commit(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match="combined_median.fits"):
        with rundir.OutputDir(out) as od:
            od.path("combined_median.fits").write_text("ours")
            (out / "combined_median.fits").write_text("theirs")
            od.commit()
    assert listing(out) == {"combined_median.fits": b"theirs"}


def test_inputs_are_never_an_output(tmp_path):
    (tmp_path / "sa.fits").write_text("input")
    with pytest.raises(InputError, match="overwrite an input"):
        with rundir.OutputDir(tmp_path, protect={tmp_path / "sa.fits"}) as od:
            od.check_names(["sa.fits"])


HOLD = textwrap.dedent("""
    import sys, time
    from tui_stack import rundir
    od = rundir.OutputDir(sys.argv[1], "tui-stack run held.toml").__enter__()
    od.path("report.json").write_text("half")
    print("locked", flush=True)
    time.sleep(60)
""")


def hold(out):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_is_refused_naming_the_holder_then_cleans_up_after_a_kill(tmp_path):
    out = tmp_path / "out"
    write_set(out, ["report.json"], "old")
    proc = hold(out)
    try:
        with pytest.raises(InputError) as err:
            with rundir.OutputDir(out):
                pass
        msg = str(err.value)
        assert "another tui-stack run is writing there" in msg and f"pid {proc.pid}" in msg
        assert "held.toml" in msg
    finally:
        proc.kill()  # SIGKILL: no clean-up of its own
        proc.wait()
    left = [n for n in os.listdir(out) if n.startswith(rundir.STAGING_PREFIX)]
    assert left and (out / rundir.LOCK).exists()  # what a killed run leaves
    with rundir.OutputDir(out) as od:
        assert any("removed" in r for r in od.recovered)
    assert sorted(os.listdir(out)) == [rundir.MANIFEST, "report.json"]
    assert (out / "report.json").read_text() == "old"


def test_a_commit_cut_short_is_finished_by_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_set(out, ["report.json", "sa.fits", "sb.fits"], "old")
    calls = []
    real = os.replace

    def dies_half_way(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # after the journal and one output: as a power cut would
            raise SystemExit("power cut")
        return real(src, dst)

    with rundir.OutputDir(out) as od:
        for n in ("report.json", "sa.fits", "sc.fits"):
            od.path(n).write_text("new")
        monkeypatch.setattr(os, "replace", dies_half_way)
        with pytest.raises(SystemExit):
            od.commit()
        monkeypatch.setattr(os, "replace", real)
        od.committed = True  # as if the process had died here: no abort
        od._owner_fd and os.close(od._owner_fd)
        od._owner_fd = None
        od.staging = None
        od.lock.release()
        od.lock = None
    with rundir.OutputDir(out) as od:
        assert any("finished" in r for r in od.recovered)
    got = listing(out)
    got.pop(rundir.MANIFEST)
    assert got == {"report.json": b"new", "sa.fits": b"new", "sc.fits": b"new"}  # the new set, whole


def test_lock_file_symlink_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / rundir.LOCK).symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        with rundir.OutputDir(out):
            pass
    assert victim.read_text() == "precious"


def test_output_file_lock_is_per_name(tmp_path):
    a = rundir.OutputFile(tmp_path / "a.fits").__enter__()
    try:
        with pytest.raises(InputError, match="another tui-stack command is writing a.fits"):
            with rundir.OutputFile(tmp_path / "a.fits"):
                pass
        with rundir.OutputFile(tmp_path / "b.fits") as b:  # another name in the same folder: fine
            b.path.write_text("b")
            b.commit()
        a.path.write_text("a")
        a.commit()
    finally:
        a.__exit__(None, None, None)
    assert listing(tmp_path) == {"a.fits": b"a", "b.fits": b"b"}


def test_scratch_dirs_of_dead_owners_are_removed(tmp_path):
    code = ("import sys; from tui_stack import rundir; s = rundir.ScratchDir(sys.argv[1]); "
            "(s.path / 'x.fits').write_bytes(b'0' * 4096); print(s.path, flush=True); import time; time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True)
    dead = proc.stdout.readline().strip()
    mine = rundir.ScratchDir(tmp_path / "cache")
    assert os.path.exists(dead)  # its owner is alive: kept
    proc.kill()
    proc.wait()
    other = rundir.ScratchDir(tmp_path / "cache")
    assert not os.path.exists(dead) and mine.path.exists()
    assert os.stat(other.path).st_mode & 0o777 == 0o700
    mine.close()
    other.close()
    assert os.listdir(tmp_path / "cache") == []


def test_a_signal_during_the_commit_waits_for_it(tmp_path, monkeypatch):
    """SIGTERM arriving while the set is being renamed into place is delivered after it: the
    directory holds the whole new set, then the run ends with 143."""
    import signal

    from tui_stack import signals
    from tui_stack.errors import Interrupted

    out = tmp_path / "out"
    write_set(out, ["report.json", "sa.fits", "sb.fits"], "old")
    real = rundir._put_in_place

    def signalled(*a):
        os.kill(os.getpid(), signal.SIGTERM)  # mid-commit
        return real(*a)

    monkeypatch.setattr(rundir, "_put_in_place", signalled)
    with pytest.raises(Interrupted) as err:
        with signals.handled():
            with rundir.OutputDir(out) as od:
                for n in ("report.json", "sa.fits", "sc.fits"):
                    od.path(n).write_text("new")
                od.commit()
    assert err.value.exit_code == 143
    got = listing(out)
    got.pop(rundir.MANIFEST)
    assert got == {"report.json": b"new", "sa.fits": b"new", "sc.fits": b"new"}


@pytest.mark.parametrize("code", ["ENOLCK", "EOPNOTSUPP"])
def test_a_file_system_without_locks_is_an_input_error_naming_the_folder(tmp_path, monkeypatch, code):
    """Some NFS mounts answer flock with ENOLCK or EOPNOTSUPP: the run stops with exit 2 and says
    what to do (a run there could not tell a live writer's files from a dead one's), and the
    folder it made for the outputs is gone again."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "nfs" / "out"
    with pytest.raises(InputError, match="does not lock files") as err:
        with rundir.OutputDir(out):
            pass
    assert str(out) in str(err.value) and "--out" in str(err.value)
    assert not out.exists()
    with pytest.raises(InputError, match="does not lock files"):
        with rundir.OutputFile(tmp_path / "c.fits"):
            pass
    assert not list(tmp_path.iterdir())  # nothing left behind: no lock file, no staging folder


def test_outputs_of_another_user_in_a_sticky_directory_are_refused_before_any_work(tmp_path, monkeypatch):
    """A shared scratch (mode 1777, as /tmp): another user's set there cannot be replaced by
    this one (os.replace: EPERM). Before: the whole run, then an internal error (exit 1)
    naming the hidden staging file. Now exit 2 at the start, naming the owner."""
    import pwd

    out = tmp_path / "shared"
    out.mkdir()
    write_set(out, ["combined_median.fits", "report.json"], "theirs")
    out.chmod(0o1777)
    me = os.geteuid()
    owner = pwd.getpwuid(me).pw_name
    monkeypatch.setattr(os, "geteuid", lambda: me + 4242)  # another user than the files' owner
    before = listing(out)
    with pytest.raises(InputError, match=rf"the outputs here are user {owner}'s, and this directory's sticky bit"):
        with rundir.OutputDir(out):
            pass
    with pytest.raises(InputError, match=rf"is user {owner}'s, and this directory's sticky bit"):
        with rundir.OutputFile(out / "combined_median.fits"):
            pass
    assert listing(out) == before  # nothing of ours left, theirs untouched
    out.chmod(0o777)  # no sticky bit: anyone who can write here can replace the set
    with rundir.OutputDir(out):
        pass


def test_a_killed_run_folder_that_cannot_be_removed_is_said_not_claimed_removed(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_set(out, ["report.json"], "old")
    (out / (rundir.STAGING_PREFIX + "dead")).mkdir()  # a killed run's (no owner lock held)
    monkeypatch.setattr(rundir, "_remove_tree", lambda path: None)  # as another user's folder in a sticky dir
    with rundir.OutputDir(out) as od:
        assert any(r.startswith(f"could not remove {rundir.STAGING_PREFIX}dead, left by a killed run of user")
                   for r in od.recovered), od.recovered
        assert not any(r == f"removed {rundir.STAGING_PREFIX}dead" for r in od.recovered)
