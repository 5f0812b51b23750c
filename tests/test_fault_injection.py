"""Issue 20's cases, one test each: a dropped link, a shared machine, a hostile file name.

Every test asserts the exit code, the one line on stderr, the inputs' checksums and what the
output directory holds before and after. The signals are sent to a real `tui-stack run`.
"""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import rundir
from tui_stack.core import synthetic

from conftest import checksums, make_config, small_spec
from test_cli import assert_one_line_error, run_cli, write_config

STAGING = rundir.STAGING_PREFIX


def snapshot(d: Path) -> dict:
    """name -> sha256 (files) or 'dir' of everything in `d`, one level, hidden files too."""
    if not d.exists():
        return {}
    return {p.name: "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}


def outputs(d: Path) -> dict:
    """The snapshot without the manifest (its contents name mtimes)."""
    snap = snapshot(d)
    snap.pop(rundir.MANIFEST, None)
    return snap


@pytest.fixture()
def field(tmp_path):
    truth = synthetic.write_field(tmp_path / "frames", small_spec(n_frames=5, seed=17, subpixel=False))
    return truth, tmp_path / "frames"


def inputs(frames: Path) -> dict:
    return checksums(p for p in frames.iterdir() if p.is_file())


def run_in_process(truth, frames, tmp_path, capsys, out=None, **over):
    out = out or tmp_path / "out"
    cfg = make_config(truth, out, **over)
    cfg.input.directory = frames
    before = inputs(frames)
    code, stdout, err = run_cli(["run", write_config(cfg, tmp_path / "c.toml"), "--quiet"], capsys)
    assert inputs(frames) == before
    return code, stdout, err


# ---------------------------------------------------------------- 1. crash logs


def test_1_crash_log_is_private_and_never_follows_a_planted_link(field, tmp_path, capsys, monkeypatch):
    from tui_stack import pipeline

    truth, frames = field
    state = tmp_path / "state"
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(state))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = Path("/tmp") / f"tui-stack-crash-{os.getpid()}.log"  # where the old version wrote
    planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    try:
        def bug(*a, **kw):
            raise ZeroDivisionError("a bug")

        monkeypatch.setattr(pipeline, "choose_reference", bug)
        code, _, err = run_in_process(truth, frames, tmp_path, capsys)
    finally:
        planted.unlink()
    assert code == 1 and len(err.strip().splitlines()) == 1 and "ZeroDivisionError" in err
    log = Path(err.strip().rsplit("details in ", 1)[1])
    assert log.parent == state / "crash" and "ZeroDivisionError: a bug" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert victim.read_text() == "precious"
    assert snapshot(tmp_path / "out") == {}


# ---------------------------------------------------------------- 2. nobody else's file


def test_2_interrupted_run_touches_no_other_file_and_a_new_subfolder_is_fine(field, tmp_path, capsys, monkeypatch):
    from tui_stack.core import combine

    truth, frames = field
    out = tmp_path / "out"
    out.mkdir()
    (out / "seeing_log.txt").write_text("a colleague's notes")
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(out / "sci_0001.fits")  # the telescope's
    (out / "sdemo_x.txt").write_text("starts with s")
    (out / "combined_mine.fits").write_text("someone's own combine")
    before = snapshot(out)

    def interrupted(*a, **kw):
        (out / "night2").mkdir()  # a subfolder appears during the run
        (out / "sci_0002.fits").write_text("a new frame from the telescope")
        raise KeyboardInterrupt

    monkeypatch.setattr(combine, "combine_rows", interrupted)
    code, _, err = run_in_process(truth, frames, tmp_path, capsys)
    assert code == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err
    after = snapshot(out)
    assert after.pop("night2") == "dir" and after.pop("sci_0002.fits")
    assert after == before


def test_2_a_second_concurrent_run_exits_2_naming_the_holder(tmp_path, capsys):
    truth = synthetic.write_field(tmp_path / "frames", small_spec(n_frames=10, shape=(768, 768), n_stars=200))
    first = start_run(truth, tmp_path, "first.toml")
    try:
        wait_for_staging(tmp_path / "out", first)
        cfg = make_config(truth, tmp_path / "out")
        before = inputs(tmp_path / "frames")
        code, _, err = run_cli(["run", write_config(cfg, tmp_path / "second.toml"), "--quiet"], capsys)
        assert_one_line_error(code, err, "another tui-stack run is writing there", f"pid {first.pid}",
                              "first.toml")
        assert inputs(tmp_path / "frames") == before
    finally:
        _, ferr = first.communicate(timeout=120)
    assert first.returncode == 0, ferr  # the first run was not disturbed
    assert {"report.json", "combined_median.fits"} <= set(os.listdir(tmp_path / "out"))
    assert not [n for n in os.listdir(tmp_path / "out") if n.startswith((STAGING, rundir.LOCK))]


# ---------------------------------------------------------------- 3 and 4. signals, reruns


def start_run(truth, tmp_path, name="c.toml", out=None, **over):
    cfg = make_config(truth, out or tmp_path / "out", **over)
    path = write_config(cfg, tmp_path / name)
    return subprocess.Popen([sys.executable, "-m", "tui_stack", "run", str(path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_staging(out: Path, proc, what="sdemo_*.fits") -> bool:
    """Until the run has written part of its outputs into its staging folder."""
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(out.glob(f"{STAGING}*/{what}")):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def big_field(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    return synthetic.write_field(d / "frames", small_spec(n_frames=12, shape=(1024, 1024), n_stars=300))


@pytest.mark.parametrize("sig, code, word", [(signal.SIGHUP, 129, "hang-up"), (signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_3_4_signal_mid_rerun_leaves_the_previous_complete_set(big_field, tmp_path, sig, code, word):
    frames = big_field.files[0].parent
    out = tmp_path / "out"
    first = start_run(big_field, tmp_path, "first.toml", combine__method="median")
    assert first.wait(timeout=180) == 0, first.stderr.read()
    (out / "seeing_log.txt").write_text("a colleague's notes")
    before, before_inputs = snapshot(out), inputs(frames)
    proc = start_run(big_field, tmp_path, "second.toml", combine__method="average")  # another set over the first
    reached = wait_for_staging(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if not reached or proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast)")
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in err
    assert snapshot(out) == before  # the previous complete set, byte for byte, nothing else
    assert inputs(frames) == before_inputs


def test_4_leftovers_of_a_killed_run_are_cleaned_by_the_next(big_field, tmp_path, capsys):
    out = tmp_path / "out"
    proc = start_run(big_field, tmp_path)
    reached = wait_for_staging(out, proc)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    if not reached:
        pytest.skip("the run finished before the kill")
    left = [n for n in os.listdir(out) if n.startswith(STAGING)]
    assert left  # what a power cut leaves
    before_inputs = inputs(big_field.files[0].parent)
    cfg = make_config(big_field, out, output__write_shifted=False)
    code, _, err = run_cli(["run", write_config(cfg, tmp_path / "again.toml"), "--quiet"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted([rundir.MANIFEST, "combined_median.fits", "report.json"])
    assert inputs(big_field.files[0].parent) == before_inputs


def test_3_failing_rerun_keeps_the_previous_set_and_does_not_claim_otherwise(field, tmp_path, capsys, monkeypatch):
    import errno

    truth, frames = field
    code, _, err = run_in_process(truth, frames, tmp_path, capsys)
    assert code == 0, err
    before = snapshot(tmp_path / "out")
    real = fits.HDUList.writeto

    def full_disk(self, name, *a, **kw):
        if "combined_" in str(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(fits.HDUList, "writeto", full_disk)
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, combine__method="average")
    assert_one_line_error(code, err, "combined_average.fits", "no space left")
    assert snapshot(tmp_path / "out") == before


# ---------------------------------------------------------------- 5. limits


@pytest.mark.parametrize("over, words", [
    ({"scale__radius": 1e9}, ["radius = 1e+09 px", "320x320"]),
    ({"scale__annulus": (25.0, 1e7)}, ["annulus", "outer radius 1e+07 px"]),
])
def test_5_huge_apertures_are_refused_before_any_allocation(field, tmp_path, capsys, over, words):
    import resource

    truth, frames = field
    t0, rss0 = time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, **over)
    assert_one_line_error(code, err, *words)
    assert time.time() - t0 < 20 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KB
    assert snapshot(tmp_path / "out") == {}


def test_5_offsets_that_would_write_41_gb_are_refused(field, tmp_path, capsys):
    truth, frames = field
    offs = tmp_path / "offs.txt"
    offs.write_text("0 0\n10000000 0\n0 0\n0 0\n0 0\n")
    before = inputs(frames)
    code, _, err = run_cli(["combine", *truth.files, "--method", "median", "--out", tmp_path / "o" / "c.fits",
                            "--offsets", offs], capsys)
    assert_one_line_error(code, err, "--offsets", "10000000 px in x")
    assert inputs(frames) == before and not (tmp_path / "o").exists()


def test_5_output_larger_than_the_free_disk_is_refused(field, tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    truth, frames = field
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    code, _, err = run_in_process(truth, frames, tmp_path, capsys)
    assert_one_line_error(code, err, "need", "MB", "but only 976.6 KB are free")
    assert snapshot(tmp_path / "out") == {}


# ---------------------------------------------------------------- trial 6 #3, #7, #11: full and read-only disks, demo sizes


class _FullDisk:
    """os for tui_stack.rundir, except that writing a file finds the disk full."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_5_disk_full_as_the_lock_is_written_is_exit_2_and_leaves_no_folder(field, tmp_path, capsys, monkeypatch):
    """The run's first write (the lock file's holder line) was an internal error, exit 1, and the
    folder the run had made stayed, holding an empty .tui-stack.lock."""
    truth, frames = field
    monkeypatch.setattr(rundir, "os", _FullDisk())
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, out=tmp_path / "new" / "out")
    assert_one_line_error(code, err, str(tmp_path / "new" / "out"), "no space left on the device")
    assert not (tmp_path / "new").exists()
    out = tmp_path / "old"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, out=out)
    assert_one_line_error(code, err, str(out), "no space left on the device")
    assert snapshot(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}  # no lock file left


def test_5_disk_full_mid_run_names_the_output_once(field, tmp_path, capsys, monkeypatch):
    """astropy wraps a full disk's OSError in another one, twice over: the message said it three
    times and named the hidden staging file."""
    import errno

    truth, frames = field

    def full(self, *a, **kw):  # what astropy.io.fits.util._free_space_check raises, nested as writeto nests it
        try:
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                raise OSError("Not enough space on disk: requested 1048576, available 0. " + str(exc))
        except OSError as exc:
            raise OSError("Not enough space on disk: requested 1048576, available 0. " + str(exc))

    monkeypatch.setattr(fits.HDUList, "writeto", full)
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, output__write_shifted=True)
    assert_one_line_error(code, err, f"{tmp_path / 'out' / 'sdemo_001.fits'}: no space left on the device; free some")
    assert STAGING not in err and "Not enough space" not in err and err.count("space") == 1
    assert snapshot(tmp_path / "out") == {}


def test_5_disk_check_says_the_margin_it_keeps(field, tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    from tui_stack import limits

    truth, frames = field
    usage = namedtuple("usage", "total used free")
    free = limits.DISK_MARGIN + 2**20  # more than the outputs alone need: the margin is what is short
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - free, free))
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, output__write_shifted=True)
    assert_one_line_error(code, err, "the outputs need 2.4 MB of free space and 16.0 MB more kept free for "
                                     "the file system, but only 17.0 MB are free there")


def test_7_demo_sizes_that_cannot_fit_are_refused_naming_the_flag(tmp_path, capsys, monkeypatch):
    from collections import namedtuple

    from tui_stack import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 8 * 2**30)
    code, _, err = run_cli(["demo", "--headless", "--size", "100000", "--out", tmp_path / "d"], capsys)
    assert_one_line_error(code, err, "--size 100000", "372.5 GB of memory, more than the 8.0 GB available")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2**40, 2**40 - 50 * 2**30, 50 * 2**30))
    code, _, err = run_cli(["demo", "--headless", "--frames", "100000", "--out", tmp_path / "d"], capsys)
    assert_one_line_error(code, err, "--frames 100000 of --size 1024 px and their outputs need 783.4 GB",
                          "only 50.0 GB are free")
    assert not (tmp_path / "d").exists()


def test_3_demo_on_a_read_only_disk_is_exit_2(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    code, _, err = run_cli(["demo", "--headless", "--out", tmp_path / "ro" / "demo", "--size", "256", "--frames", "3"],
                           capsys)
    assert_one_line_error(code, err, str(tmp_path / "ro" / "demo"), "not writable (Read-only file system)")
    assert not (tmp_path / "ro").exists()


def test_11_interrupted_demo_leaves_its_folder_as_it_was(tmp_path, capsys, monkeypatch):
    """SIGTERM while the demo drew its frames said "the output directory was left as it was"
    while the frames written stayed (1031 frames, 4.1 GB)."""
    from tui_stack import pipeline
    from tui_stack.errors import Interrupted

    real_write, written = synthetic._write, []

    def killed_after_two(path, data, hdr):
        if len(written) == 2:
            raise Interrupted(signal.SIGTERM)
        written.append(real_write(path, data, hdr))
        return written[-1]

    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(synthetic, "_write", killed_after_two)
    code, _, err = run_cli(["demo", "--headless", "--out", out, "--size", "256", "--frames", "5"], capsys)
    assert code == 143 and err.strip() == "tui-stack: terminated (SIGTERM); the output directory was left as it was " \
                                          "before this run"
    assert len(written) == 2 and snapshot(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    monkeypatch.setattr(synthetic, "_write", real_write)

    def killed(*a, **kw):  # after the frames, in the pipeline: they stay, and it says so
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(pipeline, "run", killed)
    code, _, err = run_cli(["demo", "--headless", "--out", out, "--size", "256", "--frames", "3"], capsys)
    assert code == 143 and err.strip() == (f"tui-stack: terminated (SIGTERM); the demo's frames stay in {out / 'frames'} "
                                           f"and its output directory {out / 'out'} was left as it was before this run")
    assert sorted(p.name for p in (out / "frames").iterdir()) == [
        "demo_001.fits", "demo_002.fits", "demo_003.fits", "demo_flat.fits", "truth.csv"]


# ---------------------------------------------------------------- 6. umask


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_6_outputs_honour_the_umask(field, tmp_path, capsys, umask, mode):
    truth, frames = field
    old = os.umask(umask)
    try:
        code, _, err = run_in_process(truth, frames, tmp_path, capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    for p in (tmp_path / "out").iterdir():
        if not p.name.startswith("."):
            assert stat.S_IMODE(p.stat().st_mode) == mode, p.name


# ---------------------------------------------------------------- 7. minmax


def test_7_minmax_rejecting_every_frame_is_exit_2(field, tmp_path, capsys):
    truth, frames = field
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, combine__method="minmax", combine__nlow=3, combine__nhigh=2)
    assert_one_line_error(code, err, "nlow", "nhigh", "5")
    assert snapshot(tmp_path / "out") == {}
    before = inputs(frames)
    code, _, err = run_cli(["combine", *truth.files, "--method", "minmax", "--nlow", "3", "--nhigh", "2",
                            "--out", tmp_path / "c.fits"], capsys)
    assert_one_line_error(code, err, "nlow", "nhigh")
    assert inputs(frames) == before and not (tmp_path / "c.fits").exists()


# ---------------------------------------------------------------- 8 and 9. hostile names


def rename_all(frames: Path, new_name) -> None:
    for i, p in enumerate(sorted(frames.glob("demo_*.fits"))):
        p.rename(p.with_name(new_name(i)))


def test_8_control_characters_in_names_never_reach_the_terminal(field, tmp_path, capsys):
    truth, frames = field
    rename_all(frames, lambda i: f"demo_{i:03d}\x1b]0;pwned\x07\x1b[2J.fits")
    code, out, err = run_in_process(truth, frames, tmp_path, capsys)
    assert code == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "demo_000\\x1b]0;pwned\\x07\\x1b[2J.fits" in out
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["frames"][0]["file"] == "demo_000\x1b]0;pwned\x07\x1b[2J.fits"  # the real name
    (frames / "demo_000\x1b]0;pwned\x07\x1b[2J.fits").write_bytes(b"")  # an error names it safely
    code, out, err = run_in_process(truth, frames, tmp_path, capsys)
    assert_one_line_error(code, err, "demo_000\\x1b]0;pwned\\x07\\x1b[2J.fits", "empty")
    assert "\x1b" not in err


def test_8_control_characters_in_header_values(field, tmp_path, capsys):
    from tui_stack.core import io

    truth, frames = field
    for p in frames.glob("demo_*.fits"):
        with fits.open(p, mode="update") as h:
            h[0].header["OBJECT"] = "NGC_2362"
        p.write_bytes(p.read_bytes().replace(b"NGC_2362", b"N\x1b[2J\x07CC"))
    code, out, err = run_in_process(truth, frames, tmp_path, capsys)
    assert code == 0, err
    assert fits.getheader(tmp_path / "out" / "combined_median.fits")["OBJECT"] == "N\\x1b[2J\\x07CC"
    info = io.frame_info(sorted(frames.glob("demo_*.fits"))[0])  # the wizard's scan
    assert not info.error and info.header["OBJECT"] == "N\\x1b[2J\\x07CC"


@pytest.mark.parametrize("name", ["f ☃ {:03d}.fits", "ñandú_{:03d}.fits"])
def test_9_any_name_works_in_run_and_combine(field, tmp_path, capsys, name):
    truth, frames = field
    rename_all(frames, name.format)
    cfg_pattern = "*.fits"
    code, out, err = run_in_process(truth, frames, tmp_path, capsys, input__pattern=cfg_pattern)
    assert code == 0, err
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["frames"][0]["file"] == name.format(0)
    hdr = fits.getheader(tmp_path / "out" / "combined_median.fits")
    assert name.format(0).encode("ascii", "backslashreplace").decode() in "".join(hdr["HISTORY"]) + str(
        hdr.get("IMCMB001"))
    assert (tmp_path / "out" / ("s" + name.format(0))).exists()
    files = sorted(frames.glob("*.fits"))
    code, out, err = run_cli(["combine", *files, "--method", "average", "--out", tmp_path / "c ☃.fits"], capsys)
    assert code == 0, err
    assert fits.getheader(tmp_path / "c ☃.fits")["IMCMB001"] == name.format(0).encode(
        "ascii", "backslashreplace").decode()


def test_9_a_long_name_keeps_the_summary_columns_at_80(field, tmp_path, monkeypatch):
    """A 200-character file name used to squeeze every number column of run's summary to '…'."""
    import subprocess

    truth, frames = field
    rename_all(frames, lambda i: "night_" + "x" * 190 + f"_{i:03d}.fits")
    cfg = make_config(truth, tmp_path / "out", input__pattern="night_*.fits")
    cfg.input.directory = frames
    monkeypatch.setenv("COLUMNS", "80")
    proc = subprocess.run([sys.executable, "-m", "tui_stack", "run", str(write_config(cfg, tmp_path / "c.toml"))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if "night_" in ln and "…" in ln]
    assert len(rows) == 5 and all(len(ln.rstrip()) <= 80 for ln in proc.stdout.splitlines())
    assert all(ln.split()[1].endswith(f"_{i:03d}.fits") for i, ln in enumerate(rows))
    assert "1.0000" in rows[0] and not any("…" in " ".join(ln.split()[2:]) for ln in rows)


# ---------------------------------------------------------------- 12. smaller cases


def test_12_gz_frames_are_read(field, tmp_path, capsys):
    import gzip

    truth, frames = field
    for p in frames.glob("demo_*.fits"):
        p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, input__pattern="demo_*.fits.gz")
    assert code == 0, err
    assert (tmp_path / "out" / "sdemo_001.fits.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_12_fz_frames_give_compressed_fz_outputs(field, tmp_path, capsys):
    truth, frames = field
    for p in frames.glob("demo_*.fits"):
        with fits.open(p) as h:
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(h[0].data, h[0].header, quantize_level=0,
                                                               compression_type="GZIP_2")]).writeto(
                p.with_name(p.name + ".fz"))
        p.unlink()
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, input__pattern="demo_*.fits.fz")
    assert code == 0, err
    with fits.open(tmp_path / "out" / "sdemo_001.fits.fz") as h:
        assert isinstance(h[1], fits.CompImageHDU)


@pytest.mark.parametrize("suffix", [".fits.gz", ".fits.fz"])
def test_12_combine_out_compressed_as_its_name_says(field, tmp_path, capsys, suffix):
    """`combine --out x.fits.gz` wrote a plain FITS under a .gz name: now gzip (.gz) or a
    lossless tile-compressed image (.fz), maps included, pixels equal to the plain output."""
    truth, _ = field
    files = [str(p) for p in truth.files]
    plain, packed = tmp_path / "c.fits", tmp_path / f"c{suffix}"
    for out in (plain, packed):
        code, _, err = run_cli(["combine", *files, "--method", "median", "--maps", "--out", out], capsys)
        assert code == 0, err
    head = packed.read_bytes()[:2]
    assert (head == b"\x1f\x8b") == (suffix == ".fits.gz")
    with fits.open(plain) as a, fits.open(packed) as b:
        images = [h for h in b if h.data is not None]
        assert isinstance(b[1], fits.CompImageHDU) == (suffix == ".fits.fz")
        assert [h.name for h in images][-3:] == ["NUSED", "NREJECTED", "SIGMA"]
        assert np.array_equal(a[0].data, images[0].data, equal_nan=True)
        assert np.array_equal(a["SIGMA"].data, b["SIGMA"].data, equal_nan=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".c.")) == []  # no temporary left


def test_12_out_naming_a_directory_is_exit_2(field, tmp_path, capsys):
    truth, frames = field
    (tmp_path / "d").mkdir()
    for out in (f"{tmp_path / 'd'}/", str(tmp_path / "d"), f"{tmp_path / 'new'}/"):
        code, _, err = run_cli(["combine", *truth.files, "--method", "median", "--out", out], capsys)
        assert_one_line_error(code, err, "--out", "directory")
    assert snapshot(tmp_path / "d") == {} and not (tmp_path / "new").exists()


def test_12_bom_in_the_config_is_read(field, tmp_path, capsys):
    truth, frames = field
    cfg = make_config(truth, tmp_path / "out")
    path = write_config(cfg, tmp_path / "c.toml")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    code, _, err = run_cli(["run", path, "--quiet"], capsys)
    assert code == 0, err


def test_12_bad_dask_address_and_symlink_loop_are_exit_2(field, tmp_path, capsys):
    truth, frames = field
    pytest.importorskip("distributed")
    code, _, err = run_cli(["combine", *truth.files, "--method", "median", "--out", tmp_path / "c.fits",
                            "--address", "notaurl:::"], capsys)
    assert_one_line_error(code, err, "notaurl:::")
    loop = tmp_path / "loop.fits"
    loop.symlink_to(loop)
    code, _, err = run_cli(["combine", loop, *truth.files, "--method", "median", "--out", tmp_path / "c.fits"],
                           capsys)
    assert_one_line_error(code, err, "loop.fits", "loop")
    assert not (tmp_path / "c.fits").exists()


def test_12_argparse_errors_are_one_line(capsys):
    code, _, err = run_cli_exit(["combine", "a.fits", "--method", "nope", "--out", "x.fits"], capsys)
    assert_one_line_error(code, err, "--method", "nope", "tui-stack combine --help")
    code, _, err = run_cli_exit(["run"], capsys)
    assert_one_line_error(code, err, "config")


def run_cli_exit(args, capsys):
    from tui_stack import cli

    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_12_exit_2_leaves_no_empty_output_folder(field, tmp_path, capsys):
    truth, frames = field
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, out=tmp_path / "a" / "b" / "out",
                                  reference__star=(5000.0, 160.0))
    assert_one_line_error(code, err, "outside")
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- 4. the wizard


def wizard_in_pty(directory: Path, env: dict):
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: the wizard on a terminal of its own
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, "-m", "tui_stack", str(directory)])
    return pid, fd


def read_until(fd, want: bytes, timeout=60.0) -> bytes:
    import select

    seen = b""
    deadline = time.time() + timeout
    while time.time() < deadline and want not in seen:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


@pytest.mark.parametrize("sig, code", [(signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_4_wizard_ends_on_hangup_and_term_and_leaves_no_cache(field, tmp_path, sig, code):
    truth, frames = field
    cache = tmp_path / "cache"
    env = {"TUI_STACK_STATE_DIR": str(tmp_path / "state"), "XDG_CACHE_HOME": str(cache),
           "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    # what a wizard killed mid-combine (SIGKILL) left: its private scratch folder
    dead = subprocess.run([sys.executable, "-c", "import sys; from tui_stack import rundir; "
                           "s = rundir.ScratchDir(); (s.path / 'sdemo_001.fits').write_bytes(b'0' * 8192); "
                           "print(s.path)"], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    assert Path(dead.stdout.strip()).exists()
    before = inputs(frames)
    pid, fd = wizard_in_pty(frames, env)
    try:
        shown = read_until(fd, b"files selected")
        assert b"files selected" in shown, shown[-500:]
        os.kill(pid, sig)
        if sig == signal.SIGHUP:
            os.close(fd)  # the link is gone: nothing reads the terminal any more
            fd = None
        else:
            read_until(fd, b"\x00", timeout=5)
        deadline = time.time() + 30
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the wizard did not end")
    finally:
        if fd is not None:
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == code
    assert os.listdir(cache / "tui-stack") == []  # the dead wizard's scratch folder went at start
    assert inputs(frames) == before


# ---------------------------------------------------------------- 10. resume


@pytest.fixture()
def saved_session(field, tmp_path, monkeypatch, capsys):
    """A session saved after the pipeline measured the field (as the wizard saves it)."""
    from tui_stack import pipeline
    from tui_stack.tui import session
    from tui_stack.tui.state import WizardState

    truth, frames = field
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state"))
    cfg = make_config(truth, tmp_path / "out")
    cfg.input.directory = frames
    state = pipeline.run(cfg)
    ws = WizardState(config=cfg, run=state)
    path = session.save(ws, 3)
    return truth, frames, path, cfg


def test_10_resume_redoes_what_changed_and_keeps_what_did_not(saved_session):
    from tui_stack.tui import session
    from tui_stack.tui.state import WizardState

    truth, frames, path, cfg = saved_session
    data = session.load()
    ws = WizardState(config=cfg)
    assert session.restore_run(ws, data) == "" and ws.run is not None  # the same frames: tables kept
    assert [f.shift_x for f in ws.run.frames]
    # another night's frame under the same name, same size, same mtime but for a second
    victim = sorted(frames.glob("demo_*.fits"))[2]
    st = victim.stat()
    with fits.open(victim, mode="update") as h:
        h[0].data[100:110, 100:110] += 500
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ws = WizardState(config=cfg)
    msg = session.restore_run(ws, session.load())
    assert ws.run is None and msg.startswith(f"{victim.name}: contents changed") and "redone" in msg


@pytest.mark.parametrize("damage, words", [
    (lambda p: p.write_text("{\"step\": 3, "), ["session.json", "not valid JSON"]),
    (lambda p: p.write_text("[1, 2]"), ["session.json", "malformed", "not a JSON object"]),
    (lambda p: p.write_text(p.read_text().replace('"ref_index": ', '"ref_index": 99 + ').replace("99 + ", "99, \"x\": ")),
     ["session.json", "malformed"]),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "run": {
        **json.loads(p.read_text())["run"], "files": ["/etc/passwd"] * len(json.loads(p.read_text())["run"]["files"]),
    }})), ["session.json", "malformed"]),
])
def test_10_malformed_session_is_exit_2_with_its_path(saved_session, capsys, damage, words):
    truth, frames, path, cfg = saved_session
    damage(path)
    before = inputs(frames)
    code, _, err = run_cli(["--resume"], capsys)
    assert_one_line_error(code, err, *words)
    assert str(path) in err and "not found" not in err
    assert inputs(frames) == before


# ---------------------------------------------------------------- 11. open files


def _opens_frames_on_demand() -> bool:
    import inspect

    from tui_stack.core import io

    return "keep_open" in inspect.signature(io.RowReader).parameters


@pytest.mark.skipif(not _opens_frames_on_demand(), reason="frames opened on demand come with issue 18 "
                    "(io.RowReader keep_open); this test runs once that is merged")
def test_11_more_frames_than_open_files_allowed(tmp_path):
    """`ulimit -n 64` and 80 frames: the combine opens frames as it reads them."""
    d = tmp_path / "many"
    d.mkdir()
    rng = np.random.default_rng(5)
    for i in range(80):
        fits.PrimaryHDU(rng.normal(100, 5, (48, 40)).astype(np.float32)).writeto(d / f"f{i:03d}.fits")
    before = inputs(d)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64)); "
            "from tui_stack import cli; sys.exit(cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "combine", *sorted(map(str, d.iterdir())), "--method",
                           "median", "--out", str(tmp_path / "c.fits")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    want = np.median([fits.getdata(p) for p in sorted(d.iterdir())], axis=0)
    np.testing.assert_allclose(fits.getdata(tmp_path / "c.fits"), want, rtol=1e-6)
    assert inputs(d) == before


def test_8_hostile_names_in_the_wizard(field, tmp_path, monkeypatch):
    """A name with escape sequences and markup: shown escaped on the Files and Shifts screens,
    the wizard neither crashes nor passes the bytes through."""
    import asyncio

    from test_tui import SIZE, press, settle
    from textual.widgets import DataTable

    from tui_stack.tui.app import StackApp

    truth, frames = field
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state"))
    rename_all(frames, lambda i: f"demo_{i:03d}[red]\x1b]0;t\x07[b].fits")
    cfg = make_config(truth, tmp_path / "out")
    cfg.input.directory = frames
    app = StackApp(frames, cfg)
    shown = {}

    async def go():
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            table = app.screen.query_one(DataTable)
            shown["files"] = [shown_text(table.get_row_at(r)[1]) for r in range(table.row_count)]
            await press(pilot, "n", 2)
            assert app.screen.STEP == 2
            table = app.screen.query_one("#shifts", DataTable)
            shown["shifts"] = [shown_text(table.get_row_at(r)[1]) for r in range(table.row_count)]

    def shown_text(cell) -> str:  # what the table paints for the cell
        from textual.widgets._data_table import default_cell_formatter

        return default_cell_formatter(cell).plain

    asyncio.run(go())
    assert len(shown["files"]) == 5 and len(shown["shifts"]) == 5
    for cell in shown["files"] + shown["shifts"]:
        # escaped, markup shown as it is, cut in the middle to the column (the detail line has it all)
        assert "\x1b" not in cell and "\x07" not in cell and cell.endswith("x07[b]") and "…" in cell, cell
        assert len(cell) <= 15


@pytest.mark.parametrize("sig, code", [(signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_4_signal_mid_combine_keeps_the_previous_output(big_field, tmp_path, sig, code):
    frames = big_field.files
    out = tmp_path / "c.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(out)  # the previous result
    (tmp_path / "notes.txt").write_text("mine")
    before, before_inputs = snapshot(tmp_path), inputs(frames[0].parent)
    proc = subprocess.Popen([sys.executable, "-m", "tui_stack", "combine", *map(str, frames), "--method", "gesd",
                             "--out", str(out), "--overwrite", "--memory-limit", "16MB"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = wait_for_staging(tmp_path, proc, ".c.fits.*.part")  # the stream being written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if not reached or proc.returncode == 0:
        pytest.skip("the combine finished before the signal arrived")
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert snapshot(tmp_path) == before  # the old c.fits, byte for byte; no staging folder, no lock
    assert inputs(frames[0].parent) == before_inputs


def test_12_interrupted_dask_run_leaves_no_worker_written_frame(field, tmp_path, capsys, monkeypatch):
    """The workers write the shifted frames into the staging folder; Ctrl-C after they did closes
    the cluster first, then removes the folder: nothing of theirs stays."""
    pytest.importorskip("distributed")
    from tui_stack import compute

    truth, frames = field
    out = tmp_path / "out"
    out.mkdir()
    (out / "seeing_log.txt").write_text("mine")
    before = snapshot(out)
    staged = []

    def interrupted(self, *a, **kw):
        staged.extend(out.glob(f"{STAGING}*/sdemo_*.fits"))  # what the workers wrote
        raise KeyboardInterrupt

    monkeypatch.setattr(compute.DaskCompute, "combine", interrupted)
    code, _, err = run_in_process(truth, frames, tmp_path, capsys, compute__scheduler="dask", compute__workers=2,
                                  shift__mode="subpixel")
    assert code == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert len(staged) == 5
    assert snapshot(out) == before


def test_5_the_wizard_steps_check_the_aperture_too(field, tmp_path):
    """The wizard calls the steps, not `run`: a radius typed there is refused the same way."""
    from tui_stack import pipeline
    from tui_stack.errors import InputError

    truth, frames = field
    cfg = make_config(truth, tmp_path / "out")
    state = pipeline.RunState(config=cfg)
    state.set_files(pipeline.select(cfg))
    pipeline.choose_reference(state)
    pipeline.register(state)
    cfg.set("scale", "radius", 1e9)
    with pytest.raises(InputError, match=r"radius = 1e\+09 px: an aperture must fit"):
        pipeline.measure_scales(state)
    cfg.set("scale", "radius", 12.0)
    cfg.set("scale", "annulus", [15.0, 900.0])
    with pytest.raises(InputError, match="outer radius 900 px is larger than the 320x320 frame"):
        pipeline.register(state)


def test_9_a_folder_name_with_glob_and_markup_characters(field, tmp_path, capsys):
    truth, frames = field
    odd = tmp_path / "night [1] *"
    frames.rename(odd)
    code, out, err = run_in_process(truth, odd, tmp_path, capsys, out=tmp_path / "out [red]")
    assert code == 0, err
    assert "out [red]" in out.replace("\n", "")  # shown as it is (rich wraps long lines), not as a style
    assert json.loads((tmp_path / "out [red]" / "report.json").read_text())["frames"][0]["file"] == "demo_001.fits"


@pytest.mark.parametrize("sig, code, word", [(signal.SIGHUP, 129, "hang-up"), (signal.SIGTERM, 143, "terminated")])
def test_4_signal_as_the_command_ends_is_its_exit_code_and_a_line(field, tmp_path, sig, code, word):
    """A signal after the work used to kill the process by the signal itself, silently (the
    interpreter's shut-down resets the handlers): now the command leaves at once when its work
    is done, still handling signals until then, with the documented code and one line saying
    the outputs were complete. Run as the console script runs it (main() with no arguments);
    the signal is sent at the very last moment, from the exit call itself."""
    cfg = write_config(make_config(field[0], tmp_path / "out", output__write_shifted=False), tmp_path / "c.toml")
    script = ("import os, signal, sys, time\n"
              f"sys.argv = ['tui-stack', 'run', {str(cfg)!r}, '--quiet']\n"
              "real_exit, calls = os._exit, []\n"
              "def last_moment(code):\n"
              "    calls.append(code)\n"
              "    if len(calls) == 1:\n"
              f"        os.kill(os.getpid(), {int(sig)})\n"
              "        time.sleep(2)\n"
              "    real_exit(code)\n"
              "os._exit = last_moment\n"
              "from tui_stack import cli\n"
              "cli.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "outputs were complete" in lines[0], proc.stderr
    assert (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("where", ["out", "out_below", "input", "demo"])
def test_12_a_loop_of_symbolic_links_given_as_a_folder_is_exit_2(field, tmp_path, capsys, where):
    """`--out`, a folder under it, the config's [input] directory or demo's --out on a symlink
    loop: one line naming it, exit 2 (was an internal error from pathlib)."""
    truth, frames = field
    a, b = tmp_path / "loopA", tmp_path / "loopB"
    a.symlink_to(b)
    b.symlink_to(a)
    cfg = make_config(truth, tmp_path / "out")
    if where == "input":
        cfg.input.directory = a
    cfg_path = write_config(cfg, tmp_path / "c.toml")
    args = {"out": ["run", cfg_path, "--out", a, "--quiet"], "out_below": ["run", cfg_path, "--out", a / "sub", "--quiet"],
            "input": ["run", cfg_path, "--quiet"], "demo": ["demo", "--headless", "--out", a]}[where]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "loopA", "loop of symbolic links")
