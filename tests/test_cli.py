"""Bad input named in SPEC.md: exit 2, one clear line on stderr, inputs untouched."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from tui_stack import cli
from tui_stack.config import config_to_toml

from conftest import checksums, make_config


def write_config(cfg, path: Path) -> Path:
    path.write_text(config_to_toml(cfg))
    return path


def run_cli(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


STAGE_LINE = r"tui-stack: [a-z][\w ]* (started|done \((\d+) of \2, \d+\.\d s\))"


def stage_lines(err: str) -> list[str]:
    """The progress lines `run` writes to a log (stderr not a terminal), one per stage start and end."""
    import re

    return [ln for ln in err.splitlines() if re.fullmatch(STAGE_LINE, ln)]


def assert_one_line_error(code, err, *words):
    """Exit 2 and one line saying what is wrong (after the stage lines of the work done before, if any)."""
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln not in stage_lines(err)]
    assert len(lines) == 1, err
    assert lines[0].startswith("tui-stack: error: ")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture()
def frames(field_integer, tmp_path):
    d = tmp_path / "frames"
    shutil.copytree(field_integer.files[0].parent, d)
    return d


def config_for(field_integer, frames, tmp_path, **over):
    cfg = make_config(field_integer, tmp_path / "out", **over)
    cfg.input.directory = frames
    return write_config(cfg, tmp_path / "c.toml")


def test_run_succeeds_and_prints_summary(field_integer, frames, tmp_path, capsys):
    code, out, err = run_cli(["run", config_for(field_integer, frames, tmp_path), "--quiet"], capsys)
    assert code == 0, err
    assert "combined (median)" in out and "demo_001.fits" in out
    assert (tmp_path / "out" / "report.json").exists()


def test_no_files_match(field_integer, frames, tmp_path, capsys):
    cfg = config_for(field_integer, frames, tmp_path, input__pattern="nothing_*.fits")
    assert_one_line_error(*run_cli(["run", cfg], capsys)[::2], "no files match", "nothing_*.fits")


def test_text_file_named_fits(field_integer, frames, tmp_path, capsys):
    (frames / "demo_000.fits").write_text("this is not a FITS file\n" * 200)
    before = checksums(frames.glob("*.fits"))
    cfg = config_for(field_integer, frames, tmp_path)
    assert_one_line_error(*run_cli(["run", cfg], capsys)[::2], "demo_000.fits", "not a readable FITS")
    assert checksums(frames.glob("*.fits")) == before


def test_truncated_fits(field_integer, frames, tmp_path, capsys):
    raw = (frames / "demo_002.fits").read_bytes()
    (frames / "demo_002.fits").write_bytes(raw[: len(raw) // 2])
    before = checksums(frames.glob("*.fits"))
    cfg = config_for(field_integer, frames, tmp_path)
    code, err = run_cli(["run", cfg], capsys)[::2]
    assert_one_line_error(code, err, "demo_002.fits")
    assert "truncated" in err
    assert checksums(frames.glob("*.fits")) == before


def test_frames_of_different_shapes(field_integer, frames, tmp_path, capsys):
    fits.PrimaryHDU(np.ones((100, 120), np.float32), fits.Header({"PICTTYPE": 1})).writeto(frames / "demo_009.fits")
    cfg = config_for(field_integer, frames, tmp_path)
    assert_one_line_error(*run_cli(["run", cfg], capsys)[::2], "demo_009.fits", "shape")


def test_frames_of_two_filters(field_integer, frames, tmp_path, capsys):
    """Trial 8 #2: V and R lights in one glob were stacked into one image labelled with the
    reference's filter, rc 0. Star ratios differ with each star's colour: one filter a stack."""
    for k, path in enumerate(sorted(frames.glob("demo_*.fits"))):
        with fits.open(path, mode="update") as h:
            h[0].header["FILTER"] = "R" if k % 3 == 0 else "V"
    cfg = config_for(field_integer, frames, tmp_path)
    code, err = run_cli(["run", cfg], capsys)[::2]
    assert_one_line_error(code, err, "2 filters", "R: 2, V: 4")
    assert 'select = { FILTER = "V" }' in err
    cfg = config_for(field_integer, frames, tmp_path, input__select={"FILTER": "V"})
    assert run_cli(["run", cfg, "--quiet"], capsys)[0] == 0


def test_star_not_in_box(field_integer, frames, tmp_path, capsys):
    cfg = config_for(field_integer, frames, tmp_path, reference__star=(3.0, 3.0), reference__box=5)
    assert_one_line_error(*run_cli(["run", cfg], capsys)[::2], "no star found", "[reference].star")


def test_every_comparison_star_saturated(field_integer, frames, tmp_path, capsys):
    stars = [(80.0, 240.0), (250.0, 60.0)]
    for path, (dx, dy) in zip(sorted(frames.glob("demo_*.fits")), field_integer.shifts):
        with fits.open(path, mode="update") as h:
            for x, y in stars:
                for ddx in range(-6, 7):
                    for ddy in range(-6, 7):
                        synthetic_peak = 60000.0 * np.exp(-(ddx**2 + ddy**2) / 8.0) + 1000.0
                        h[0].data[int(y - dy) + ddy, int(x - dx) + ddx] = min(65535.0, 1.3 * synthetic_peak)
    cfg = config_for(field_integer, frames, tmp_path, scale__stars=[list(s) for s in stars])
    assert_one_line_error(*run_cli(["run", cfg], capsys)[::2], "no usable comparison star", "saturated")


def test_output_would_overwrite_input(field_integer, frames, tmp_path, capsys):
    shutil.copy(frames / "demo_001.fits", frames / "sdemo_001.fits")
    before = checksums(frames.glob("*.fits"))
    cfg = make_config(field_integer, frames, input__pattern="*demo_00*.fits")
    cfg.input.directory = frames
    path = write_config(cfg, tmp_path / "c.toml")
    assert_one_line_error(*run_cli(["run", path], capsys)[::2], "sdemo_001.fits", "overwrite an input")
    assert checksums(frames.glob("*.fits")) == before


def test_unknown_key_and_wrong_type(tmp_path, capsys):
    p = tmp_path / "c.toml"
    p.write_text('[input]\npattern = "*.fits"\n[combine]\nmethod = "median"\nnlowww = 3\n')
    assert_one_line_error(*run_cli(["run", p], capsys)[::2], "[combine].nlowww", "unknown key")
    p.write_text('[input]\npattern = "*.fits"\n[reference]\nbox = "big"\n')
    assert_one_line_error(*run_cli(["run", p], capsys)[::2], "[reference].box", "integer")
    p.write_text('[reference]\nbox = 10\n')
    assert_one_line_error(*run_cli(["run", p], capsys)[::2], "missing section [input]")
    assert_one_line_error(*run_cli(["run", tmp_path / "nope.toml"], capsys)[::2], "not found")


def test_run_logs_a_line_per_stage_when_stderr_is_not_a_terminal(field_integer, frames, tmp_path):
    """Trial 6: `run ... 2>log` wrote nothing until the summary; a batch job's log shows each
    stage starting and ending (no bars), and --quiet none."""
    import re

    cfg = config_for(field_integer, frames, tmp_path, combine__method="average")
    with open(tmp_path / "log", "w") as log:
        r = subprocess.run([sys.executable, "-m", "tui_stack", "run", str(cfg)], stdout=subprocess.PIPE, stderr=log,
                           text=True)
    assert r.returncode == 0 and "combined (average)" in r.stdout
    lines = (tmp_path / "log").read_text().splitlines()
    assert [re.sub(r"\(\d+ of \d+, \d+\.\d s\)", "(...)", ln) for ln in lines] == [
        f"tui-stack: {stage} {what}" for stage in ("register", "scale", "combine average")
        for what in ("started", "done (...)")]
    assert lines == stage_lines("\n".join(lines)) and "(6 of 6," in lines[1] and "(320 of 320," in lines[5]
    with open(tmp_path / "log", "w") as log:
        r = subprocess.run([sys.executable, "-m", "tui_stack", "run", str(cfg), "--quiet"], stdout=subprocess.PIPE,
                           stderr=log, text=True)
    assert r.returncode == 0 and (tmp_path / "log").read_text() == ""


def test_console_script_exit_codes(tmp_path):
    """The real entry point: --version, --help and a bad config through `python -m tui_stack`."""
    r = subprocess.run([sys.executable, "-m", "tui_stack", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("tui-stack ")
    r = subprocess.run([sys.executable, "-m", "tui_stack", "run", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "CONFIG" in r.stdout.upper()
    p = tmp_path / "bad.toml"
    p.write_text("[input\n")
    r = subprocess.run([sys.executable, "-m", "tui_stack", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "not valid TOML" in r.stderr and "Traceback" not in r.stderr


def test_combine_command_matches_engine(field_integer, tmp_path, capsys):
    files = field_integer.files[:4]
    scale = tmp_path / "scales.txt"
    scale.write_text("1\n1.1\n0.9\n1.2\n")
    offsets = tmp_path / "off.txt"
    offsets.write_text("0 0\n3 -2\n0 0\n1 1\n")
    out = tmp_path / "c.fits"
    code, _, err = run_cli(["combine", *files, "--method", "average", "--out", out, "--scale", scale,
                            "--offsets", offsets], capsys)
    assert code == 0, err
    data = fits.getdata(out)
    assert data.shape == (320 + 3, 320 + 3)  # IRAF style: the output holds every offset frame
    f1 = fits.getdata(files[1]).astype(np.float64) * 1.1
    # pixel (y=0+.., x=3..) of frame 1 sits at output (y+0, x+3) where only frame 1 and 3 reach
    assert np.isfinite(data).sum() > 0
    assert np.isclose(data[0, 322], f1[0, 319], rtol=1e-5)  # only frame 1 covers the top-right corner
    # as imcombine: the first frame's header and WCS, its reference pixel moved with the frame
    # (offset 0, 2 on the output grid); the provenance after it
    first, hdr = fits.getheader(files[0]), fits.getheader(out)
    assert hdr["CTYPE1"] == first["CTYPE1"] and hdr["CRVAL2"] == first["CRVAL2"] and hdr["EXPTIME"] == first["EXPTIME"]
    assert (hdr["CRPIX1"], hdr["CRPIX2"]) == (first["CRPIX1"], first["CRPIX2"] + 2)
    assert hdr["NCOMBINE"] == 4 and hdr["IMCMB002"] == files[1].name
    code, _, err = run_cli(["combine", *files, "--method", "median", "--out", files[0]], capsys)
    assert_one_line_error(code, err, "overwrite an input")


def test_combine_maps_as_extensions(field_integer, tmp_path, capsys):
    out = tmp_path / "m.fits"
    code, _, err = run_cli(["combine", *field_integer.files, "--method", "minmax", "--nlow", "1", "--nhigh", "1",
                            "--out", out, "--maps"], capsys)
    assert code == 0, err
    with fits.open(out) as h:
        assert [x.name for x in h] == ["PRIMARY", "NUSED", "NREJECTED", "SIGMA"]
        assert np.all(h["NUSED"].data + h["NREJECTED"].data == 6)
        assert np.all(h["NUSED"].data == 4)
        assert np.isfinite(h["SIGMA"].data).all()


def test_combine_scale_by_keyword_and_zero(tmp_path, capsys):
    files = []
    for i, (t, level) in enumerate([(30.0, 100.0), (60.0, 210.0), (15.0, 45.0)]):
        p = tmp_path / f"e{i}.fits"
        fits.PrimaryHDU(np.full((8, 8), level, np.float32), fits.Header({"EXPTIME": t})).writeto(p)
        files.append(p)
    zero = tmp_path / "zero.txt"
    zero.write_text("0\n10\n-5\n")
    out = tmp_path / "o.fits"
    code, _, err = run_cli(["combine", *files, "--method", "average", "--out", out,
                            "--scale-keyword", "exptime", "--zero", zero], capsys)
    assert code == 0, err
    # (210 - 10) * 30/60 = 100, (45 + 5) * 30/15 = 100
    assert np.allclose(fits.getdata(out), 100.0)
    bad = tmp_path / "nokey.fits"
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(bad)
    code, _, err = run_cli(["combine", files[0], bad, "--method", "average", "--out", tmp_path / "x.fits",
                            "--scale-keyword", "EXPTIME"], capsys)
    assert_one_line_error(code, err, "nokey.fits", "EXPTIME")


def test_combine_weights_exposure_noise_and_file(tmp_path, capsys):
    rng = np.random.default_rng(8)
    files = []
    for i, (t, sd) in enumerate([(30.0, 5.0), (60.0, 10.0), (15.0, 20.0)]):
        p = tmp_path / f"w{i}.fits"
        fits.PrimaryHDU((100.0 * (i + 1) + rng.normal(0, sd, (64, 64))).astype(np.float32),
                        fits.Header({"EXPTIME": t})).writeto(p)
        files.append(p)
    stack = np.array([fits.getdata(f).astype(np.float64) for f in files])

    def combined(*extra):
        out = tmp_path / "o.fits"
        code, _, err = run_cli(["combine", *files, "--method", "average", "--out", out, "--overwrite", *extra], capsys)
        assert code == 0, err
        return fits.getdata(out), fits.getheader(out)

    data, hdr = combined("--weights", "exposure")
    np.testing.assert_allclose(data, np.average(stack, axis=0, weights=[30, 60, 15]), rtol=1e-5)
    assert hdr["TSWEIGHT"] == "exposure" and "weight=0.28571" in str(hdr["HISTORY"])
    from astropy.stats import mad_std

    data, _ = combined("--weights", "noise")  # inverse variance of the sky noise: ~1/25, 1/100, 1/400
    noise = np.array([mad_std(f) for f in stack])
    assert np.allclose(noise, [5, 10, 20], rtol=0.05)
    np.testing.assert_allclose(data, np.average(stack, axis=0, weights=1 / noise**2), rtol=1e-5)
    wfile = tmp_path / "w.txt"
    wfile.write_text("1\n0\n1\n")
    code, _, err = run_cli(["combine", *files, "--method", "average", "--out", tmp_path / "x.fits",
                            "--weights", wfile], capsys)
    assert_one_line_error(code, err, "weights must be positive")
    code, _, err = run_cli(["combine", *files, "--method", "median", "--out", tmp_path / "x.fits",
                            "--weights", "exposure"], capsys)
    assert_one_line_error(code, err, "not to median")


def test_combine_gesd_and_sigclip_record_their_parameters(field_integer, tmp_path, capsys):
    for method, extra, cards in [("gesd", ["--gesd-alpha", "0.01"], {"TSGESDA": 0.01, "TSGESDF": 0.3}),
                                 ("sigclip", ["--nkeep", "-2", "--no-mclip"], {"TSNKEEP": -2, "TSMCLIP": False})]:
        out = tmp_path / f"{method}.fits"
        code, _, err = run_cli(["combine", *field_integer.files, "--method", method, "--out", out, *extra], capsys)
        assert code == 0, err
        hdr = fits.getheader(out)
        assert hdr["TSMETHOD"] == method
        assert {k: hdr[k] for k in cards} == cards


def test_combine_says_when_it_made_the_output_folder(field_integer, tmp_path, capsys):
    """A folder made for OUT is named in the summary, so a mistyped path shows at once."""
    files = [str(p) for p in field_integer.files[:3]]
    out = tmp_path / "new" / "deeper" / "m.fits"
    assert cli.main(["combine", *files, "--method", "median", "--out", str(out)]) == 0
    said = capsys.readouterr().out.replace("\n", "")
    assert out.exists() and "made the folder" in said and "deeper" in said
    assert cli.main(["combine", *files, "--method", "median", "--out", str(out), "--overwrite"]) == 0
    assert "made the folder" not in capsys.readouterr().out


def test_help_names_every_command_within_80_columns(capsys):
    """`tui-stack --help` lists each command with a line of what it does, DIR as the usage says,
    every line within 80 columns; combine's help gives sizes as sizes and the weights file."""
    import os

    os.environ["COLUMNS"] = "80"
    try:
        for args in (["--help"], ["combine", "--help"]):
            with pytest.raises(SystemExit) as ex:
                cli.main(args)
            assert ex.value.code == 0
            out = capsys.readouterr().out
            assert all(len(line) <= 80 for line in out.splitlines()), out
            if args == ["--help"]:
                assert "[DIR]" in out and all(f"  {c} " in out for c in ("run", "demo", "combine", "help"))
            else:
                text = " ".join(out.split())
                assert "(default 256MB)" in text and "a file of one weight per frame" in text
    finally:
        del os.environ["COLUMNS"]


def test_run_flags_and_sizes_are_named_as_given(field_integer, tmp_path, capsys):
    """A bad --memory-limit or --workers names the flag (not the config key); a [reference].box
    larger than the frame is refused (it used to be accepted and ignored); a file given twice
    to combine is named."""
    from conftest import make_config

    cfg = write_config(make_config(field_integer, tmp_path / "out"), tmp_path / "c.toml")
    for flag, value in (("--memory-limit", "0"), ("--workers", "-2")):
        code, _, err = run_cli(["run", cfg, flag, value], capsys)
        assert_one_line_error(code, err, flag)
        assert "config" not in err
    big = write_config(make_config(field_integer, tmp_path / "out", reference__box=10**20), tmp_path / "b.toml")
    assert_one_line_error(*run_cli(["run", big], capsys)[::2], "[reference].box", "larger than")
    f = field_integer.files
    code, _, err = run_cli(["combine", f[0], f[1], f"{f[0].parent}/./{f[0].name}", "--method", "median",
                            "--out", tmp_path / "c.fits"], capsys)
    assert_one_line_error(code, err, f[0].name, "twice")


def test_run_does_not_replace_another_data_sets_results(field_integer, frames, tmp_path, capsys):
    """Trial 8 #10 (the helper's note): `run` into a folder holding another input directory's
    results replaced them as its own set, rc 0. A rerun of the same data set still replaces."""
    cfg = config_for(field_integer, frames, tmp_path)
    assert run_cli(["run", cfg, "--quiet"], capsys)[0] == 0
    assert run_cli(["run", cfg, "--quiet"], capsys)[0] == 0  # the same frames again: its own set
    other = tmp_path / "other"
    shutil.copytree(frames, other)
    cfg2 = config_for(field_integer, other, tmp_path)
    before = (tmp_path / "out" / "report.json").read_text()
    assert_one_line_error(*run_cli(["run", cfg2], capsys)[::2], "holds the results of", str(frames))
    assert (tmp_path / "out" / "report.json").read_text() == before
