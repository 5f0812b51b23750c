"""Terminal-safe names, crash logs, limits, resume fingerprints and output modes, on their own."""

import json
import os
import stat

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import crashlog, limits, resume, safetext
from tui_stack.core import io
from tui_stack.errors import InputError


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("raw, shown", [
    ("a\x1b]0;pwned\x07b", "a\\x1b]0;pwned\\x07b"),  # retitles the window
    ("x\x1b[2Jy", "x\\x1b[2Jy"),  # clears the screen
    ("new\nline", "new\\x0aline"),
    ("evil\u202etxt.fits", "evil\\u202etxt.fits"),  # bidi override
    ("f ☃é.fits", "f ☃é.fits"),  # readable non-ASCII stays
    (os.fsdecode(b"raw\xff.fits"), "raw\\xff.fits"),  # not UTF-8: printing it would crash
])
def test_terminal_text(raw, shown):
    assert safetext.terminal(raw) == shown
    shown.encode("utf-8")  # printable


def test_header_text_is_printable_ascii():
    assert safetext.header("f ☃.fits\x1b") == "f \\u2603.fits\\x1b"
    fits.Card("HISTORY", safetext.header("f ☃.fits\x1b"))  # astropy accepts it


def test_control_characters_in_a_header_are_escaped_when_read(tmp_path):
    path = tmp_path / "c.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32), fits.Header({"OBJECT": "abcdefgh", "OBSERVER": "plain"})).writeto(path)
    path.write_bytes(path.read_bytes().replace(b"abcdefgh", b"ab\x1b]0;xy"))
    with pytest.raises(Exception):
        fits.getheader(path)["OBJECT"]  # what astropy does alone
    frame = io.read_frame(path)
    assert frame.header["OBJECT"] == "ab\\x1b]0;xy" and frame.header["OBSERVER"] == "plain"
    info = io.frame_info(path)
    assert not info.error and info.header["OBJECT"] == "ab\\x1b]0;xy"
    out = tmp_path / "o.fits"
    io.write_fits_atomic(out, fits.HDUList([fits.PrimaryHDU(frame.data, frame.header)]))
    assert fits.getheader(out)["OBJECT"] == "ab\\x1b]0;xy"


# ---------------------------------------------------------------- crash logs


def test_crash_log_is_private_exclusive_and_follows_no_link(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(state))
    try:
        raise ValueError("boom")
    except ValueError as exc:
        err = exc
    log = crashlog.write(err)
    assert log.parent == state / "crash" and "ValueError: boom" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "crash").stat().st_mode) == 0o700
    # a planted link under the next name is never written through
    victim = tmp_path / "victim"
    victim.write_text("precious")
    nxt = log.with_name(log.stem + "-1.log")
    nxt.symlink_to(victim)
    log2 = crashlog.write(err)
    assert log2 not in (log, nxt) and victim.read_text() == "precious"


def test_crash_log_refuses_a_state_dir_that_is_a_link_or_shared(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "state").symlink_to(elsewhere)
    monkeypatch.setenv("TUI_STACK_STATE_DIR", str(tmp_path / "state" / "x"))
    (elsewhere / "x").mkdir(mode=0o777)
    os.chmod(elsewhere / "x", 0o777)
    assert crashlog.write(RuntimeError("x")) is None
    assert list((elsewhere / "x").iterdir()) == []


# ---------------------------------------------------------------- limits


def test_aperture_limits_name_the_number():
    with pytest.raises(InputError, match="radius = 1e.09 px: an aperture must fit on the 320x320 frame"):
        limits.check_photometry(1e9, None, (320, 320), 30, 256 * 2**20)
    with pytest.raises(InputError, match=r"annulus = \[25, 5000\]: outer radius 5000 px"):
        limits.check_photometry(20, (25, 5000), (320, 320), 30, 256 * 2**20)
    with pytest.raises(InputError, match="needs .* MB of memory, over the memory limit of 64.0 MB"):
        limits.check_photometry(100, (110, 150), (4096, 4096), 30, 64 * 2**20)
    limits.check_photometry(20, (25, 35), (4096, 4096), 30, 256 * 2**20)  # the defaults pass


def test_photometry_estimate_covers_what_it_takes():
    import tracemalloc

    from tui_stack.core import photometry

    data = np.zeros((600, 600), np.float32)
    pos = np.random.default_rng(1).uniform(150, 450, (30, 2))
    tracemalloc.start()
    photometry.measure_stars(data, np.zeros(data.shape, bool), pos, 50, 0.0, None, (55, 80))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    est = limits.photometry_bytes(50, 80, 30)
    assert peak <= est <= 3 * peak


def test_offsets_in_the_wrong_unit_are_refused():
    offs = np.array([[0, 0], [10_000_000, 0], [5, 3]])
    with pytest.raises(InputError, match="spread over 10000000 px in x, more than 3 frames of 320 px"):
        limits.check_offsets(offs, (320, 320))
    assert limits.check_offsets(np.array([[0, 0], [40, -7], [5, 3]]), (320, 320)) == (330, 360)


def test_disk_check(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(InputError, match="need .* but only .* are free"):
        limits.check_disk(tmp_path, free * 2)
    limits.check_disk(tmp_path / "not" / "yet", 1000)


# ---------------------------------------------------------------- resume


def test_fingerprint_sees_a_changed_frame(tmp_path):
    p = tmp_path / "f.fits"
    data = np.random.default_rng(3).normal(size=(400, 400)).astype(np.float32)
    fits.PrimaryHDU(data).writeto(p)
    fp = resume.fingerprint(p)
    assert resume.changed(p, fp) == ""
    data[300, 10] += 1  # one pixel, same size
    fits.PrimaryHDU(data).writeto(p, overwrite=True)
    os.utime(p, ns=(fp["mtime_ns"], fp["mtime_ns"] + 10**9))
    assert resume.changed(p, fp) == "contents changed"
    fits.PrimaryHDU(data[:200]).writeto(p, overwrite=True)
    assert resume.changed(p, fp) == "size changed"
    p.unlink()
    assert resume.changed(p, fp) == "missing"


def session(tmp_path, **over):
    d = tmp_path / "frames"
    data = {"version": "x", "step": 2, "config": f'[input]\ndirectory = "{d}"\npattern = "demo_*.fits"\n',
            "included": ["demo_000.fits"], "suggested_ref": 0, "star_xy": [10, 20],
            "run": {"files": [str(d / "demo_000.fits")], "shape": [320, 320], "ref_index": 0,
                    "comparison_stars": [[1, 2]], "frames": [{"path": str(d / "demo_000.fits")}]}}
    data.update(over)
    path = tmp_path / "session.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_session_checks(tmp_path):
    assert resume.load_session(tmp_path / "none.json") is None
    assert resume.load_session(session(tmp_path))["step"] == 2
    bad = session(tmp_path)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="session.json: saved session is not valid JSON"):
        resume.load_session(bad)
    for over, what in [({"step": "two"}, "step"), ({"run": {"files": []}}, "run.files"),
                       ({"run": {"files": ["/etc/passwd"], "frames": [{"path": "/etc/passwd"}], "ref_index": 0,
                                 "shape": [1, 1]}}, "not a demo_\\*.fits file")]:
        with pytest.raises(InputError, match=f"session.json: saved session is malformed .*{what}"):
            resume.load_session(session(tmp_path, **over))


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.write_text_atomic(tmp_path / "r.json", "{}")
        io.write_fits_atomic(tmp_path / "c.fits", fits.HDUList([fits.PrimaryHDU(np.ones((4, 4), np.float32))]))
        with io.FitsStream(tmp_path / "s.fits", fits.Header(), (4, 4)) as st:
            st.write(np.ones((4, 4), np.float32))
            st.finish()
    finally:
        os.umask(old)
    for n in ("r.json", "c.fits", "s.fits"):
        assert stat.S_IMODE((tmp_path / n).stat().st_mode) == mode


def test_fz_and_gz_outputs_are_what_their_names_say(tmp_path):
    data = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    io.write_fits_atomic(tmp_path / "s.fits.fz", fits.HDUList([fits.PrimaryHDU(data)]))
    with fits.open(tmp_path / "s.fits.fz") as h:
        assert isinstance(h[1], fits.CompImageHDU)
        np.testing.assert_array_equal(h[1].data, data)  # lossless
    io.write_fits_atomic(tmp_path / "s.fits.gz", fits.HDUList([fits.PrimaryHDU(data)]))
    assert (tmp_path / "s.fits.gz").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(io.read_frame(tmp_path / "s.fits.gz").data, data)  # not "truncated"
