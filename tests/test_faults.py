"""Messy data, faults and interruptions: exit code, one clear message, inputs untouched."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tui_stack.core import synthetic

from conftest import checksums, make_config, small_spec
from test_cli import assert_one_line_error, run_cli, write_config


@pytest.fixture()
def field(tmp_path):
    truth = synthetic.write_field(tmp_path / "frames", small_spec(n_frames=5, seed=17, subpixel=False))
    return truth, tmp_path / "frames"


def run_case(truth, frames, tmp_path, capsys, **over):
    cfg = make_config(truth, tmp_path / "out", **over)
    cfg.input.directory = frames
    before = checksums(p for p in frames.iterdir() if p.is_file())
    code, out, err = run_cli(["run", write_config(cfg, tmp_path / "c.toml"), "--quiet"], capsys)
    assert checksums(p for p in frames.iterdir() if p.is_file()) == before  # inputs never touched
    return code, out, err


def report(tmp_path):
    import json

    return json.loads((tmp_path / "out" / "report.json").read_text())


# ---------------------------------------------------------------- files


def test_empty_file(field, tmp_path, capsys):
    truth, frames = field
    (frames / "demo_000.fits").write_bytes(b"")
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert_one_line_error(code, err, "demo_000.fits", "empty")


def test_cube_is_refused_by_name(field, tmp_path, capsys):
    truth, frames = field
    fits.PrimaryHDU(np.zeros((3, 320, 320), np.float32)).writeto(frames / "demo_009.fits")
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert_one_line_error(code, err, "demo_009.fits", "3 axes")


def test_unreadable_file_named_in_exclude_is_skipped(field, tmp_path, capsys):
    truth, frames = field
    (frames / "demo_000.fits").write_text("junk" * 100)
    code, _, err = run_case(truth, frames, tmp_path, capsys, input__exclude=["demo_000.fits"])
    assert code == 0, err
    assert [f["file"] for f in report(tmp_path)["frames"]][0] == "demo_001.fits"


def broken_copies(src: Path, where: Path) -> dict:
    """Files whose header reads and whose data does not, made from the frame `src`: the kinds
    the trial found (a half-copied frame, BITPIX 17, a BITPIX saying -64 over float32 data, a
    header claiming 100000^2 pixels). Returns {name: what the error must say}."""
    raw = src.read_bytes()
    head = raw.index(b"END" + b" " * 77) + 80
    head = -(-head // 2880) * 2880
    bitpix = b"BITPIX  =                  -32"
    assert bitpix in raw[:head]
    (where / "trunc.fits").write_bytes(raw[: head + 287 * 320 * 4 + 100])  # 287 rows and a bit of one
    with fits.open(src) as h:  # BITPIX 17 over 16-bit data, as the trial's
        fits.PrimaryHDU(h[0].data.astype(np.int16), h[0].header).writeto(where / "bitpix17.fits")
    raw16 = (where / "bitpix17.fits").read_bytes()
    (where / "bitpix17.fits").write_bytes(raw16.replace(b"BITPIX  =                   16", b"BITPIX  =                   17", 1))
    (where / "wrongbitpix.fits").write_bytes(raw.replace(bitpix, b"BITPIX  =                  -64", 1))
    hdr = fits.Header([("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", 100000), ("NAXIS2", 100000)])
    (where / "huge.fits").write_bytes(hdr.tostring().encode() + bytes(2880))
    return {"trunc.fits": "holds rows 0-286 of 320", "bitpix17.fits": "BITPIX = 17",
            "wrongbitpix.fits": "holds rows 0-159 of 320", "huge.fits": "holds none of its rows of 100000"}


def test_excluded_frame_whose_data_cannot_be_read_is_skipped(field, tmp_path, capsys):
    """Trial 6 #2: a header that reads over data that does not blocked `run` even when the file
    was named in [input] exclude (it was still registered)."""
    truth, frames = field
    broken = broken_copies(truth.files[2], frames)
    code, out, err = run_case(truth, frames, tmp_path, capsys, input__pattern="*.fits", input__exclude=sorted(broken),
                              combine__method="average")
    assert code == 0, err
    rep = report(tmp_path)
    assert [f["file"] for f in rep["frames"]] == [p.name for p in truth.files]
    assert rep["combined"]["n_frames"] == 5
    skipped = {s["file"]: s for s in rep["skipped"]}
    assert sorted(skipped) == sorted(broken)
    for name, why in broken.items():
        assert why in skipped[name]["reason"], skipped[name]
        assert skipped[name]["flags"] == ["excluded", "unreadable"]
    assert "trunc.fits: excluded and unreadable, skipped" in out


@pytest.mark.parametrize("name", ["trunc.fits", "bitpix17.fits", "wrongbitpix.fits", "huge.fits"])
def test_frame_whose_data_cannot_be_read_is_named_before_any_work(field, tmp_path, capsys, name):
    truth, frames = field
    why = broken_copies(truth.files[2], frames)[name]
    for other in {"trunc.fits", "bitpix17.fits", "wrongbitpix.fits", "huge.fits"} - {name}:
        (frames / other).unlink()
    code, _, err = run_case(truth, frames, tmp_path, capsys, input__pattern="*.fits")
    assert_one_line_error(code, err, name, why)
    assert not (tmp_path / "out").exists()  # refused at the selection: no output folder made


def test_combine_names_a_file_whose_data_cannot_be_read(field, tmp_path, capsys):
    """Trial 6 #7, #15: `combine` on a BITPIX 17 file was an internal error (KeyError: 17), and a
    file holding 287 of 320 rows said "rows 0-320 missing"."""
    truth, frames = field
    broken = broken_copies(truth.files[2], frames)
    good = [str(p) for p in truth.files[:3]]
    for name, why in broken.items():
        code, _, err = run_cli(["combine", *good, str(frames / name), "--method", "median", "--out",
                                str(tmp_path / "c.fits")], capsys)
        assert_one_line_error(code, err, name, why)
        assert not (tmp_path / "c.fits").exists()


def test_combine_help_says_what_the_flags_do(capsys):
    with pytest.raises(SystemExit):
        run_cli(["combine", "--help"], capsys)
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-mclip sigclip, avsigclip, ccdclip: clip about the mean of the values less the lowest and highest, " \
           "not about the median (the default" in text
    assert "--weights WEIGHTS weights of the average: none, exposure (the exposure time) or noise" in text


def test_cube_of_one_plane_is_a_frame(field, tmp_path, capsys):
    """Trial 6 #15: NAXIS3 = 1 (as many cameras write a single frame) was refused as 3 axes.
    Every frame as such a cube, plain, in an extension and tile-compressed: the same outputs."""
    truth, frames = field
    (tmp_path / "flat").mkdir(), (tmp_path / "cube").mkdir()
    code, _, err = run_case(truth, frames, tmp_path / "flat", capsys, combine__method="average")
    assert code == 0, err
    for i, path in enumerate(sorted(frames.glob("demo_*.fits"))):
        with fits.open(path) as h:
            data, hdr = h[0].data.copy(), h[0].header.copy()
        path.unlink()
        hdr.remove("NAXIS1"), hdr.remove("NAXIS2")
        cube = data[None]
        if i % 3 == 0:
            fits.PrimaryHDU(cube, hdr).writeto(path)
        elif i % 3 == 1:
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube, hdr)]).writeto(path)
        else:
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(cube, hdr, compression_type="GZIP_2",
                                                               quantize_level=0)]).writeto(path)
        assert fits.getheader(path, int(i % 3 > 0))["NAXIS"] == 3
    code, _, err = run_case(truth, frames, tmp_path / "cube", capsys, combine__method="average",
                            output__write_shifted=True)
    assert code == 0, err
    a = fits.getdata(tmp_path / "flat" / "out" / "combined_average.fits")
    b = fits.getdata(tmp_path / "cube" / "out" / "combined_average.fits")
    np.testing.assert_array_equal(a, b)
    assert fits.getdata(tmp_path / "cube" / "out" / "sdemo_001.fits").ndim == 2
    # the standalone combine reads them too (rows of a plain, an extension and a compressed cube)
    files = [str(p) for p in sorted(frames.glob("demo_*.fits"))]
    code, _, err = run_cli(["combine", *files[:3], "--method", "average", "--out", str(tmp_path / "c.fits")], capsys)
    assert code == 0, err
    assert fits.getdata(tmp_path / "c.fits").shape == (320, 320)


def test_image_in_extension_and_compressed_frames_are_used(field, tmp_path, capsys):
    truth, frames = field
    for i, path in enumerate(sorted(frames.glob("demo_*.fits"))):
        with fits.open(path) as h:
            data, hdr = h[0].data.copy(), h[0].header.copy()
        path.unlink()
        if i % 2:  # image in an extension, empty primary
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, hdr, name="SCI")]).writeto(path)
        else:  # tile-compressed (.fits.fz style), lossless
            fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, hdr, compression_type="GZIP_2",
                                                               quantize_level=0)]).writeto(path)
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert code == 0, err
    shifts = [(f["applied_shift_x"], f["applied_shift_y"]) for f in report(tmp_path)["frames"]]
    assert shifts == [tuple(int(v) for v in s) for s in truth.shifts]


def test_nan_and_inf_pixels_are_masked(field, tmp_path, capsys):
    truth, frames = field
    with fits.open(frames / "demo_002.fits", mode="update") as h:
        h[0].data[100:110, 100:110] = np.nan
        h[0].data[200, 50:60] = np.inf
    code, _, err = run_case(truth, frames, tmp_path, capsys, combine__method="average")
    assert code == 0, err
    comb = fits.getdata(tmp_path / "out" / "combined_average.fits")
    assert np.isfinite(comb).all()  # the other frames cover those pixels; nothing propagates


def test_all_zero_frame_is_flagged_and_left_out(field, tmp_path, capsys):
    truth, frames = field
    with fits.open(frames / "demo_004.fits", mode="update") as h:
        h[0].data[:] = 0
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert code == 0, err
    f = report(tmp_path)["frames"][3]
    assert not f["used"] and "no_data" in f["flags"]
    assert report(tmp_path)["combined"]["n_frames"] == 4


def test_duplicate_frame_is_flagged_and_left_out(field, tmp_path, capsys):
    truth, frames = field
    shutil.copy(frames / "demo_002.fits", frames / "demo_002_copy.fits")
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert code == 0, err
    rep = report(tmp_path)
    dup = [f for f in rep["frames"] if f["file"] == "demo_002_copy.fits"][0]
    assert not dup["used"] and "duplicate" in dup["flags"]
    assert rep["combined"]["n_frames"] == 5


def deny(monkeypatch, path: Path, mode: int) -> None:
    """Take away permissions on `path`: chmod, and for root (who ignores file modes, as in
    CI) the same answer from the OS calls the program makes."""
    import errno
    import tempfile

    path.chmod(mode)
    if os.geteuid() != 0:
        return
    real_access = os.access

    def access(p, m, *a, **kw):
        if Path(p) == path:
            return False
        return real_access(p, m, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    real_ntf = tempfile.NamedTemporaryFile

    def ntf(*a, dir=None, **kw):
        if dir is not None and Path(dir) == path:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_ntf(*a, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", ntf)


def test_unreadable_permissions(field, tmp_path, capsys, monkeypatch):
    truth, frames = field
    deny(monkeypatch, frames / "demo_003.fits", 0o000)
    try:
        code, _, err = run_case(truth, frames, tmp_path, capsys)
    finally:
        (frames / "demo_003.fits").chmod(0o644)
    assert_one_line_error(code, err, "demo_003.fits", "permission denied")


# ---------------------------------------------------------------- science


def test_reference_star_at_the_edge(field, tmp_path, capsys):
    truth, frames = field
    code, _, err = run_case(truth, frames, tmp_path, capsys, reference__star=(1.0, 160.0), reference__box=5)
    assert_one_line_error(code, err, "no star found")


def test_reference_star_off_the_frame(field, tmp_path, capsys):
    truth, frames = field
    code, _, err = run_case(truth, frames, tmp_path, capsys, reference__star=(5000.0, 160.0))
    assert_one_line_error(code, err, "outside the 320x320 reference frame")


def test_saturated_reference_star(field, tmp_path, capsys):
    truth, frames = field
    code, _, err = run_case(truth, frames, tmp_path, capsys, scale__saturation=5000.0)
    assert_one_line_error(code, err, "saturated", "fainter star")


def test_frame_of_another_field_is_flagged(field, tmp_path, capsys):
    truth, frames = field
    # another field: as many stars, none where the reference has them
    rng = np.random.default_rng(99)
    img = np.full((320, 320), 1000.0, np.float32)
    for _ in range(70):
        synthetic.add_star(img, rng.uniform(5, 315), rng.uniform(5, 315), rng.uniform(5e3, 3e5), 3.5, 3.0)
    img += rng.normal(0, 15, img.shape).astype(np.float32)
    fits.PrimaryHDU(img, fits.Header({"PICTTYPE": 1})).writeto(frames / "demo_006.fits")
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert code == 0, err
    f = report(tmp_path)["frames"][5]
    assert not f["used"] and "no_match" in f["flags"]


# ---------------------------------------------------------------- outputs


def test_output_directory_not_writable(field, tmp_path, capsys, monkeypatch):
    truth, frames = field
    locked = tmp_path / "out"
    locked.mkdir()
    deny(monkeypatch, locked, 0o555)
    try:
        code, _, err = run_case(truth, frames, tmp_path, capsys)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, "output directory is not writable")


def test_disk_full_mid_write_leaves_nothing(field, tmp_path, capsys, monkeypatch):
    import errno

    truth, frames = field
    real = fits.HDUList.writeto

    def full_disk(self, name, *a, **kw):
        if "combined_" in str(name):
            Path(name).write_bytes(b"SIMPLE  =" + b" " * 100)  # half a file on disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(fits.HDUList, "writeto", full_disk)
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert_one_line_error(code, err, "combined_median.fits", "no space left")
    assert not (tmp_path / "out").exists()  # no half FITS, no s-frames, not even the folder it made


def test_ctrl_c_during_combine_exit_130_nothing_left(field, tmp_path, capsys, monkeypatch):
    from tui_stack.core import combine

    truth, frames = field
    real = combine.combine_rows

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(combine, "combine_rows", interrupted)
    code, _, err = run_case(truth, frames, tmp_path, capsys)
    assert code == 130 and "interrupted" in err
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(combine, "combine_rows", real)


def test_real_sigint_exit_130_nothing_partial(tmp_path):
    truth = synthetic.write_field(tmp_path / "frames", small_spec(n_frames=12, shape=(1024, 1024), n_stars=300))
    cfg = make_config(truth, tmp_path / "out")
    path = write_config(cfg, tmp_path / "c.toml")
    proc = subprocess.Popen([sys.executable, "-m", "tui_stack", "run", str(path), "--quiet"],
                            stderr=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and any(out.glob(".tui-stack-staging-*/sdemo_*.fits"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 130 and "Traceback" not in err
    assert not out.exists()  # staged outputs, the staging folder and the folder the run made: all gone


def test_combine_command_streams_its_output_and_leaves_nothing_on_a_full_disk(field, tmp_path, capsys, monkeypatch):
    """tui-stack combine writes the image block by block (never whole in memory); a disk that
    fills up half-way leaves neither the output nor its temporary file."""
    import errno

    from tui_stack.core import combine

    truth, _ = field
    frames = truth.files
    out = tmp_path / "c.fits"
    writes = []
    real = fits.StreamingHDU.write

    def counting(self, data):
        writes.append(len(data))
        return real(self, data)

    monkeypatch.setattr(fits.StreamingHDU, "write", counting)
    monkeypatch.setattr(combine, "rows_per_block", lambda *a, **k: 16)
    code, _, err = run_cli(["combine", *frames, "--method", "median", "--out", out, "--maps"], capsys)
    assert code == 0, err
    assert len(writes) > 4 and sum(writes) == fits.getheader(out)["NAXIS2"]
    want = np.median(np.array([fits.getdata(f).astype(np.float64) for f in frames]), axis=0)
    np.testing.assert_allclose(fits.getdata(out), want, rtol=2e-6)
    with fits.open(out) as h:
        assert [x.name for x in h] == ["PRIMARY", "NUSED", "NREJECTED", "SIGMA"]

    calls = []

    def full_disk(self, data):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(fits.StreamingHDU, "write", full_disk)
    out2 = tmp_path / "full" / "c.fits"
    out2.parent.mkdir()
    code, _, err = run_cli(["combine", *frames, "--method", "median", "--out", out2], capsys)
    assert_one_line_error(code, err, "c.fits", "no space left")
    assert list(out2.parent.iterdir()) == []
