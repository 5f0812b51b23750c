"""Side-by-side benchmark: tui-stack against ccdproc.combine, the lab's recipe, IRAF and Siril.

    python benchmarks/run.py                  # 20 frames of 4096^2 (1.3 GB, cached)
    python benchmarks/run.py --small          # 10 frames of 1024^2, a quick look
    python benchmarks/run.py --frames 100 --size 4096 --only ours
    python benchmarks/run.py --frames 16 --modes integer,subpixel,similarity --run-methods median,winsorized
                                              # the whole job per frame set and method, vs Siril

Every case runs as its own process; wall time and that process's peak RSS (os.wait4) are
recorded. The table is printed and written as JSON (benchmarks/results-<frames>x<size>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
METHODS = ("median", "average", "minmax", "sigmaclip", "sigclip", "avsigclip", "winsorized", "gesd")
CCDPROC_METHODS = ("median", "average", "minmax", "sigmaclip")
# The peers' nearest method: IRAF's sigclip (mclip) is the sigma clip of imcombine users.
IRAF_REJECT = {"median": "none", "average": "none", "minmax": "minmax", "sigmaclip": "sigclip", "sigclip": "sigclip",
               "avsigclip": "avsigclip"}
SIRIL_STACK = {"median": "med -nonorm", "average": "rej n -nonorm", "sigmaclip": "rej s 3 3 -nonorm",
               "winsorized": "rej w 3 3 -nonorm", "gesd": "rej g 0.3 0.05 -nonorm"}


# ------------------------------------------------------------------ frames


KINDS = ("integer", "subpixel", "similarity")


def make_frames(n: int, size: int, kind: str = "integer") -> tuple[Path, list[Path], dict]:
    """n float32 frames of size^2: one star field, shifts, transparencies, noise.

    `kind`: "integer" shifts (each frame a moved copy of one rendering: fast to make);
    "subpixel" shifts; "similarity": subpixel shifts and turns of up to 1 degree about the
    centre. The last two are rendered star by star where each frame sees them. Cached: made
    once per (n, size, kind).
    """
    from astropy.io import fits

    from tui_stack.core import synthetic

    d = CACHE / (f"{n}x{size}" if kind == "integer" else f"{n}x{size}-{kind}")
    truth_file = d / "truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        return d, [d / f for f in truth["files"]], truth
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    spec = synthetic.FieldSpec(shape=(size, size), n_stars=int(400 * (size / 1024) ** 2), sky=0.0)
    stars, ref_star, comps = synthetic.plan_field(spec)
    base = None
    if kind == "integer":
        base = np.zeros((size, size), np.float32)
        for x, y, f in stars:
            synthetic.add_star(base, x, y, f, spec.fwhm, spec.beta)
        shifts = np.round(rng.uniform(-8, 8, (n, 2))).astype(int)
    else:
        shifts = np.round(rng.uniform(-8, 8, (n, 2)), 3)
    shifts[0] = 0
    angles = np.round(rng.uniform(-1, 1, n), 3) if kind == "similarity" else np.zeros(n)
    angles[0] = 0
    transp = np.clip(rng.normal(0.92, 0.05, n), 0.7, 1.0)
    transp[0] = 1.0
    centre = (size - 1) / 2
    files = []
    for i in range(n):
        # frame i shows the field at position - shift (turned by angles[i] about the centre)
        if base is not None:
            img = np.roll(base, (-shifts[i, 1], -shifts[i, 0]), axis=(0, 1)) * np.float32(transp[i])
        else:
            img = np.zeros((size, size), np.float32)
            c, s_ = np.cos(np.radians(angles[i])), np.sin(np.radians(angles[i]))
            for x, y, f in stars:
                u, v = x - centre, y - centre
                synthetic.add_star(img, c * u - s_ * v + centre - shifts[i, 0], s_ * u + c * v + centre - shifts[i, 1],
                                   f * transp[i], spec.fwhm, spec.beta)
        img += np.float32(1000.0)
        img += rng.standard_normal((size, size), dtype=np.float32) * np.float32(12.0)
        np.minimum(img, 65535, out=img)
        path = d / f"frame_{i:03d}.fits"
        hdr = fits.Header({"EXPTIME": 30.0, "PICTTYPE": 1, "DATAMAX": 65535.0, "DATAMIN": 0.0})
        fits.PrimaryHDU(img, hdr).writeto(path, overwrite=True)
        files.append(path)
    truth = {
        "files": [p.name for p in files], "shifts": np.asarray(shifts, float).tolist(), "angles": angles.tolist(),
        "transparencies": transp.tolist(), "ref_star": list(ref_star), "comparison_stars": [list(c) for c in comps],
    }
    truth_file.write_text(json.dumps(truth))
    return d, files, truth


# ------------------------------------------------------------------ one measured process


def measure(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 2),
        # CPU time of the process and its threads: less at the mercy of a shared machine's load
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "ok": proc.returncode == 0,
        "output": out.decode(errors="replace")[-600:] if proc.returncode else "",
    }


CCDPROC_SCRIPT = """
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from astropy.nddata import CCDData
from ccdproc import combine
method, out, files = sys.argv[1], sys.argv[2], sys.argv[3:]
ccds = [CCDData.read(f, unit="adu") for f in files]
kw = {}
if method == "minmax":
    kw = dict(method="average", clip_extrema=True, nlow=3, nhigh=3)
elif method == "sigmaclip":
    kw = dict(method="average", sigma_clip=True, sigma_clip_low_thresh=3, sigma_clip_high_thresh=3,
              sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std)
else:
    kw = dict(method=method)
combine(ccds, output_file=out, overwrite_output=True, **kw)
"""

LAB_SCRIPT = """
# The lab's recipe, as the notebook does it: centroid_2dg in a 100 px box, order-0 shift with a
# -1000 fill, write the shifted frames, read them back, photometry, scale, ccdproc median.
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData
from ccdproc import combine
from photutils.centroids import centroid_2dg
from photutils.aperture import CircularAperture, aperture_photometry
from scipy.ndimage import shift
out_dir, x, y, stars = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), eval(sys.argv[4])
files = sys.argv[5:]
def box(d):
    return d[int(y) - 50:int(y) + 50, int(x) - 50:int(x) + 50]
ref = fits.getdata(files[0]).astype(float)
rx, ry = centroid_2dg(box(ref - np.median(ref)))
shifted = []
for f in files:
    d = fits.getdata(f).astype(float)
    d = d - np.median(d)
    cx, cy = centroid_2dg(box(d))
    s = shift(d, (round(ry - cy), round(rx - cx)), order=0, cval=-1000)
    name = f"{out_dir}/s{f.split('/')[-1]}"
    fits.writeto(name, s, overwrite=True)
    shifted.append(name)
ap = CircularAperture(stars, r=20)
ref_flux = aperture_photometry(fits.getdata(shifted[0]), ap)["aperture_sum"]
ccds = []
for name in shifted:
    d = fits.getdata(name)
    flux = aperture_photometry(d, ap)["aperture_sum"]
    ccds.append(CCDData(d * np.median(ref_flux / flux), unit="adu"))
combine(ccds, method="median", output_file=f"{out_dir}/combined.fits", overwrite_output=True)
"""


FLOOR_SCRIPT = """
# The floor: read every frame once and write one frame (a sum, so the reads are not skipped).
import sys
import numpy as np
from astropy.io import fits
out, files = sys.argv[1], sys.argv[2:]
acc = None
for f in files:
    d = fits.getdata(f, memmap=False)
    acc = d.astype(np.float32) if acc is None else acc + d
fits.writeto(out, acc, overwrite=True)
"""


STACK_SCRIPT = """
# The stack step alone on a frame set with its true geometry (no registration, scale 1): the
# frames read from disk, moved (slices for integer shifts, resampled inside the blocks
# otherwise) and combined, as the pipeline's stack step does after a run's registration.
import json, sys
import numpy as np
from tui_stack.core import combine
d, method, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
truth = json.load(open(d + "/truth.json"))
files = [d + "/" + f for f in truth["files"]]
from astropy.io import fits
h, w = fits.getheader(files[0])["NAXIS2"], fits.getheader(files[0])["NAXIS1"]
cx, cy = (w - 1) / 2, (h - 1) / 2
srcs = []
for f, (sx, sy), a in zip(files, truth["shifts"], truth.get("angles", [0.0] * len(files))):
    if a == 0 and float(sx).is_integer() and float(sy).is_integer():
        srcs.append(combine.FileSource(f, 0, (h, w), int(sx), int(sy), 1000.0))
    else:  # frame position = R(a) (ref - centre) + centre - shift
        c, s = np.cos(np.radians(a)), np.sin(np.radians(a))
        m = [c, -s, cx - c * cx + s * cy - sx, s, c, cy - s * cx - c * cy - sy]
        srcs.append(combine.WarpSource(f, 0, (h, w), m, 1000.0))
combine.combine(srcs, combine.CombineParams(method), memory_limit=limit, maps=False)
"""


def tui_stack_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "tui-stack"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tui_stack"]


def write_config(path: Path, sections: dict) -> Path:
    """A tui-stack config written by tui-stack's own writer (what `run` reads back)."""
    from tui_stack.config import config_from_dict, config_to_toml

    path.write_text(config_to_toml(config_from_dict(sections)))
    return path


def run_config(frames_dir: Path, truth: dict, out: Path, method: str = "median", mode: str = "integer") -> Path:
    """`tui-stack run`'s config for a frame set: `mode` integer, or subpixel (shifts and, for a
    turned set, similarity transforms: [shift] transform = "auto" fits those it finds)."""
    return write_config(out / "bench.toml", {
        "input": {"directory": str(frames_dir), "pattern": "frame_*.fits"},
        "reference": {"frame": 0, "star": list(truth["ref_star"])},
        "shift": {"mode": "integer" if mode == "integer" else "subpixel"},
        "scale": {"stars": truth["comparison_stars"], "radius": 15.0, "saturation": 65000.0},
        "combine": {"method": method}, "output": {"directory": str(out / "run"), "write_shifted": False}})


# ------------------------------------------------------------------ IRAF and Siril (when installed)


def iraf_available() -> bool:
    return shutil.which("irafcl") is not None


def iraf_combine(files: list[Path], method: str, out: Path, work: Path) -> dict:
    """IRAF imcombine, headless. IRAF exits 0 even when a task fails: the output file decides."""
    work.mkdir(parents=True, exist_ok=True)
    lst = work / "in.lis"
    lst.write_text("\n".join(str(f) for f in files) + "\n")
    reject = IRAF_REJECT.get(method)
    if reject is None:
        return None
    combine = "median" if method == "median" else "average"
    out.unlink(missing_ok=True)
    script = work / "combine.cl"
    script.write_text(
        "images\nimmatch\n"
        f"imcombine @{lst} {out} combine={combine} reject={reject} nlow=3 nhigh=3 "
        "lsigma=3 hsigma=3 mclip=yes outtype=real\nlogout\n"
    )
    env = dict(os.environ, USER=os.environ.get("USER", "root"))
    res = measure(["bash", "-c", f"cd {work} && irafcl -c < {script}"], env=env)
    res["ok"] = res["ok"] and out.exists()
    return res


def siril_available() -> bool:
    return shutil.which("siril-cli") is not None


def siril_stack(files: list[Path], method: str, work: Path) -> dict:
    """Siril: convert (counted, as Siril needs its own copy) and stack. Siril mis-scales float32
    frames without DATAMAX, so the generated frames carry DATAMAX = 65535. No minmax in Siril."""
    stack = SIRIL_STACK.get(method)
    if stack is None:
        return None
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for f in files:
        os.symlink(f, work / f.name)
    script = work / "stack.ssf"
    script.write_text(f"requires 1.0.0\nconvert f -out={work}\nstack f_ {stack} -out=result\n")
    res = measure(["siril-cli", "-d", str(work), "-s", str(script)])
    res["ok"] = res["ok"] and any(work.glob("result*"))
    shutil.rmtree(work, ignore_errors=True)
    return res


def siril_register_stack(files: list[Path], work: Path, truth: dict, method: str = "median",
                         shifts: bool = True) -> dict | None:
    """Siril's own whole job on the same frames: convert, global star registration (its
    default: a similarity, so turned frames are turned back), stack by `method` (timed,
    default threads). Then, untimed, the registration again on one thread so
    its log can be read frame by frame: Siril 1.0.6 prints each frame's dx, dy (2 decimals;
    x negated and y as is against our convention, its rows run bottom-up) and keeps them
    nowhere else once it has written the registered frames."""
    def fresh(d: Path) -> Path:  # a registered sequence changes what a second register reports
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        for f in files:
            os.symlink(f, d / f.name)
        return d

    stack = SIRIL_STACK.get(method)
    if stack is None:
        return None
    d = fresh(work)
    (d / "all.ssf").write_text(f"requires 1.0.0\nconvert f -out={d}\nregister f_\nstack r_f_ {stack} -out=result\n")
    res = measure(["siril-cli", "-d", str(d), "-s", str(d / "all.ssf")])
    res["ok"] = res["ok"] and any(d.glob("result*"))
    if not shifts:
        shutil.rmtree(work, ignore_errors=True)
        return res
    d = fresh(work)
    (d / "shifts.ssf").write_text(f"requires 1.0.0\nconvert f -out={d}\nsetcpu 1\nregister f_ -noout\n")
    log = subprocess.run(["siril-cli", "-d", str(d), "-s", str(d / "shifts.ssf")], capture_output=True,
                         text=True).stdout
    shutil.rmtree(work, ignore_errors=True)
    res["shift_rms_px"] = _rms_vs_truth(_siril_shifts(log, len(files)), truth)
    return res


def registration_case(work: Path) -> list[dict]:
    """The precision race of issue #10 on its own kind of frames: 8 crowded 1024^2 frames,
    subpixel offsets, a star 3x brighter near the reference star, one frame at half
    transparency. tui-stack (many stars, stars = "auto") against Siril's global star
    alignment, shift only (-norot) and its default similarity; shift RMS against the truth,
    and tui-stack's scale error (Siril does not scale from stars)."""
    from astropy.io import fits

    from tui_stack.core import synthetic

    d = CACHE / "crowded"
    spec = synthetic.FieldSpec(n_frames=8, shape=(1024, 1024), n_stars=600, max_shift=10, seed=5,
                               bright_neighbour=40.0, transparencies=(1, 0.95, 0.9, 0.5, 1, 0.97, 0.92, 1.0))
    truth = synthetic.write_field(d, spec)
    t = {"shifts": truth.shifts.tolist()}
    out = []
    cfg = write_config(work / "crowded.toml", {
        "input": {"directory": str(d), "pattern": "demo_*.fits"},
        "reference": {"frame": 0, "star": [round(truth.ref_star[0], 1), round(truth.ref_star[1], 1)]},
        "shift": {"mode": "subpixel"}, "scale": {"stars": "auto", "radius": 12.0},
        "combine": {"method": "median"}, "output": {"directory": str(work / "crowded_out"), "write_shifted": False}})
    res = measure(tui_stack_cmd() + ["run", str(cfg), "--quiet"])
    rep = json.loads((work / "crowded_out" / "report.json").read_text())
    res["shift_rms_px"] = _rms_vs_truth([[f["shift_x"], f["shift_y"]] for f in rep["frames"]], t)
    scales = np.array([f["scale"] for f in rep["frames"]])
    res["scale_err_max"] = round(float(np.abs(scales / truth.scales - 1).max()), 5)
    out.append({"tool": "tui-stack", "case": "register 8x1024 crowded", **res})
    if siril_available():
        # Siril mis-scales float32 frames without DATAMAX: it gets a copy that has one
        conv = work / "crowded_siril_in"
        shutil.rmtree(conv, ignore_errors=True)
        conv.mkdir(parents=True)
        for f in truth.files:
            data, hdr = fits.getdata(f, header=True)
            hdr["DATAMAX"] = 65535.0
            fits.PrimaryHDU(data.astype(np.float32), hdr).writeto(conv / f.name)
        for label, opt in (("shift only", "-norot"), ("similarity", "")):
            w = work / "crowded_siril"
            shutil.rmtree(w, ignore_errors=True)
            w.mkdir()
            for f in truth.files:
                os.symlink(conv / f.name, w / f.name)
            (w / "r.ssf").write_text(f"requires 1.0.0\nconvert demo -out={w}\nsetcpu 1\nregister demo_ -noout {opt}\n")
            t0 = time.perf_counter()
            log = subprocess.run(["siril-cli", "-d", str(w), "-s", str(w / "r.ssf")], capture_output=True, text=True).stdout
            got = _siril_shifts(log, len(truth.files))
            out.append({"tool": "siril", "case": f"register ({label}, 1 thread)", "wall_s": round(time.perf_counter() - t0, 2),
                        "peak_rss_mb": None, "ok": bool(np.isfinite(got).all()), "output": "",
                        "shift_rms_px": _rms_vs_truth(got, t)})
            shutil.rmtree(w, ignore_errors=True)
    return out


GEOMETRY_SETS = {
    # name: (size, [(rotation, scale, mirror, binning, other field)]), frame 0 the reference
    "rotated": (1024, [(0.4, 1, 0, 1, 0), (-1.3, 1, 0, 1, 0), (2.7, 1, 0, 1, 0), (17.0, 1, 0, 1, 0),
                       (123.4, 1, 0, 1, 0), (-45.0, 1, 0, 1, 0), (0.0, 1, 0, 1, 1)]),
    "flip+turn": (1024, [(182.9, 1, 0, 1, 0), (179.5, 1, 0, 1, 0), (90.0, 1, 0, 1, 0), (270.0, 1, 0, 1, 0),
                         (1.1, 1, 0, 1, 0)]),
    "mirrored": (1024, [(0.0, 1, 1, 1, 0), (35.0, 1, 1, 1, 0), (180.3, 1, 1, 1, 0), (90.0, 1, 1, 1, 0)]),
    "rescaled": (1024, [(1.5, 0.9, 0, 1, 0), (-2.0, 0.95, 0, 1, 0), (3.0, 1.05, 0, 1, 0), (0.5, 1.1, 0, 1, 0),
                        (0.0, 1, 0, 2, 0), (181.0, 1, 0, 2, 0)]),
    "rotated 4k": (4096, [(0.1, 1, 0, 1, 0), (0.3, 1, 0, 1, 0), (0.5, 1, 0, 1, 0), (0.7, 1, 0, 1, 0),
                          (0.9, 1, 0, 1, 0)]),
    "flip/mirror/binned 4k": (4096, [(180.7, 1, 0, 1, 0), (0.2, 1, 1, 1, 0), (90.0, 1, 0, 1, 0),
                                     (0.4, 1, 0, 2, 0), (-0.6, 1.05, 0, 1, 0)]),
}


def geometry_set(name: str):
    """A registration set of GEOMETRY_SETS written once into the cache: (directory, truth)."""
    from tui_stack.core import synthetic

    size, frames = GEOMETRY_SETS[name]
    rng = np.random.default_rng(len(name))
    geos = [synthetic.FrameGeometry()]
    for rot, scale, mirror, binning, other in frames:
        geos.append(synthetic.FrameGeometry(rotation=rot, scale=scale, mirror=bool(mirror), binning=binning,
                                            shift=tuple(rng.uniform(-15, 15, 2)),
                                            field_offset=(7 * size, 5 * size) if other else None))
    d = CACHE / "geometry" / name.replace(" ", "_").replace("/", "-").replace("+", "-")
    stamp = d / "truth.json"
    if stamp.exists():
        return d, json.loads(stamp.read_text())
    shutil.rmtree(d, ignore_errors=True)
    spec = synthetic.FieldSpec(shape=(size, size), n_stars=int(400 * (size / 1024) ** 2), seed=7 + size)
    truth = synthetic.write_geometry_field(d, spec, geos)
    t = {"files": [str(f) for f in truth.files], "transforms": truth.transforms,
         "other": [g.field_offset is not None for g in geos], "shape": [size, size]}
    stamp.write_text(json.dumps(t))
    return d, t


def transform_errors(est, true, ref_shape) -> dict:
    """How far a transform (registration.Affine or None) is from the truth: rotation and scale
    error, and the largest position error over the frame's corners and centre (frame px)."""
    from tui_stack.core.registration import Affine

    if est is None:
        return {"registered": False}
    tr = Affine.from_list(true)
    h, w = ref_shape
    pts = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]], float)
    drot = (est.rotation - tr.rotation + 180) % 360 - 180
    return {"registered": True, "mirror_ok": est.mirrored == tr.mirrored, "rot_err_deg": abs(drot),
            "scale_err": abs(est.scale / tr.scale - 1), "pos_err_px": float(np.abs(est.apply(pts) - tr.apply(pts)).max())}


def _summary(tool: str, name: str, per_frame: list[dict], other: list[bool], wall: float, **extra) -> dict:
    """One row: frames registered (of those of the field), frames of another field refused,
    worst rotation, scale and position error over the frames registered."""
    good = [e for e, o in zip(per_frame, other) if not o]
    reg = [e for e in good if e.get("registered") and e.get("mirror_ok", True)]
    refused = sum(1 for e, o in zip(per_frame, other) if o and not e.get("registered"))

    def worst(k, nd):
        v = [e[k] for e in reg if k in e]
        return round(max(v), nd) if v else None

    return {"tool": tool, "case": name, "registered": f"{len(reg)}/{len(good)}",
            "other_field_refused": f"{refused}/{sum(other)}" if any(other) else "-",
            "rot_err_deg": worst("rot_err_deg", 5), "scale_err": worst("scale_err", 6), "pos_err_px": worst("pos_err_px", 3),
            "wall_s": round(wall, 2), **extra}


def ours_geometry(files: list[Path], truth: dict) -> dict:
    """tui-stack's core on one set, in this process: read, sky, stars, then the pattern guess
    and the many-star fit for each frame (what the register step runs where a shift alone is
    not confident). Times: the whole loop, and the pattern search alone (worst frame)."""
    from tui_stack.core import background, io, quality, registration

    def measure_one(path):
        fr = io.read_frame(path)
        sky = background.estimate_sky(fr.data, fr.mask, "median")
        sub = fr.data - np.float32(sky.level)
        return fr, sky, sub, quality.find_stars(sub, fr.mask, sky.noise)

    t0 = time.perf_counter()
    rf, rsky, rsub, rst = measure_one(files[0])
    fwhm = float(np.nanmedian(rst.fwhm[:30]))
    reg = np.array(quality.pick_comparison_stars(rst, rf.shape, rsky.level, 65535.0, 6, 80))
    reg = registration.match_stars(rsub, rf.mask, rsky.noise, reg, 0, 0, search=7, box=registration.star_box(fwhm),
                                   method="2dg")[1]
    iy, ix = np.round(reg[:, 1]).astype(int), np.round(reg[:, 0]).astype(int)
    weights = np.clip(rsub[iy, ix], 1.0, None)
    from tui_stack.core import patterns

    patterns.match_patterns(np.c_[rst.x, rst.y], np.c_[rst.x, rst.y])  # imports and caches out of the timing
    per, pattern_s = [], []
    for k, path in enumerate(files[1:], 1):
        fr, sky, sub, st = measure_one(path)
        # solve_geometry's two steps, timed apart
        t1 = time.perf_counter()
        m = patterns.match_patterns(np.c_[rst.x, rst.y], np.c_[st.x, st.y])
        pattern_s.append(time.perf_counter() - t1)
        est = None
        if m is not None:
            fit = registration.refine_transform(sub, fr.mask, sky.noise, reg, m.transform, weights=weights,
                                                box=registration.star_box(fwhm * m.transform.scale))
            est = fit.transform if fit.ok else m.transform
        per.append(transform_errors(est, truth["transforms"][k], truth["shape"]))
    wall = time.perf_counter() - t0
    return {"per": per, "wall": wall, "pattern_ms_max": round(1e3 * max(pattern_s), 1)}


def run_geometry(d: Path, truth: dict, work: Path) -> dict:
    """`tui-stack run` on one set as a new user would run it (stars = "auto", subpixel, transform
    "auto"): its own process, wall time and peak RSS; each frame's transform from report.json."""
    from tui_stack.core.registration import Affine

    out = work / "geometry_run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = write_config(out / "geo.toml", {
        "input": {"directory": str(d), "pattern": "geo_*.fits"}, "reference": {"frame": 0, "star": "auto"},
        "shift": {"mode": "subpixel"}, "scale": {"stars": "auto", "radius": 10.0},
        "combine": {"method": "median"}, "output": {"directory": str(out / "run"), "write_shifted": False}})
    res = measure(tui_stack_cmd() + ["run", str(cfg), "--quiet"])
    per = []
    if (out / "run" / "report.json").exists():
        rep = json.loads((out / "run" / "report.json").read_text())
        for k, f in enumerate(rep["frames"][1:], 1):
            if not f["used"]:
                est = None
            elif f["transform"] is not None:
                est = Affine.from_list(f["transform"])
            else:
                est = Affine.shift(f["shift_x"], f["shift_y"])
                if f["flipped"]:
                    h, w = truth["shape"]
                    est = est.then(Affine(-np.eye(2), np.array([w - 1.0, h - 1.0])))
            per.append(transform_errors(est, truth["transforms"][k], truth["shape"]))
    shutil.rmtree(out, ignore_errors=True)
    return {"per": per, "wall": res["wall_s"], "peak_rss_mb": res.get("peak_rss_mb"), "ok": res["ok"]}


def astroalign_geometry(files: list[Path], truth: dict, star_lists: bool) -> dict | None:
    """astroalign 2.6 (if installed): its own detection on the images, or (star_lists) on
    the same star lists as ours, to compare the matchers alone."""
    try:
        import astroalign
    except ImportError:
        return None
    from astropy.io import fits

    from tui_stack.core import background, quality
    from tui_stack.core.registration import Affine

    def stars(img):
        sky = background.estimate_sky(img, None, "median")
        st = quality.find_stars(img - np.float32(sky.level), None, sky.noise)
        return np.c_[st.x, st.y][:50]

    t0 = time.perf_counter()
    ref = fits.getdata(files[0]).astype(np.float32)
    src = stars(ref) if star_lists else ref
    per = []
    for k, path in enumerate(files[1:], 1):
        img = fits.getdata(path).astype(np.float32)
        try:
            T, _ = astroalign.find_transform(src, stars(img) if star_lists else img)
            p = T.params
            est = Affine(p[:2, :2], p[:2, 2])
        except Exception:  # its MaxIterError and friends: not found
            est = None
        per.append(transform_errors(est, truth["transforms"][k], truth["shape"]))
    return {"per": per, "wall": time.perf_counter() - t0}


def siril_geometry(files: list[Path], truth: dict, work: Path) -> dict | None:
    """Siril 1.0.6's global star registration on one thread (its default transform; 1.0.6 has no
    -transf option: that came with 1.2), each frame's matrix read from its log. Its matrix H
    maps the frame to the reference in its own pixels, whose rows run bottom-up."""
    if not siril_available():
        return None
    from astropy.io import fits

    from tui_stack.core.registration import Affine

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    heights = []
    for f in files:  # Siril mis-scales float32 frames without DATAMAX
        data, hdr = fits.getdata(f, header=True)
        hdr["DATAMAX"] = 65535.0
        heights.append(data.shape[0])
        fits.PrimaryHDU(data.astype(np.float32), hdr).writeto(work / f.name)
    prefix = files[0].name.split("_")[0] + "_"
    (work / "r.ssf").write_text(f"requires 1.0.0\nconvert {prefix} -out={work}\nsetcpu 1\nregister {prefix} -noout\n")
    t0 = time.perf_counter()
    log = subprocess.run(["siril-cli", "-d", str(work), "-s", str(work / "r.ssf")], capture_output=True,
                         text=True).stdout
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    lines = log.splitlines()
    found, current = {}, None
    for n, line in enumerate(lines):
        if "Reading FITS: file" in line:
            current = int(line.split("Reading FITS: file")[1].split()[0].rsplit("_", 1)[1].split(".")[0]) - 1
        elif line.startswith("Transformation Matrix") and current:
            rows = [list(map(float, lines[n + i].split())) for i in (1, 2)]
            found[current] = np.array(rows)
        elif "Matching stars in image" in line and "done" not in line:
            found.pop(current, None)  # matching failed: the matrix printed was not this frame's
    per = []
    hr = heights[0]
    for k in range(1, len(files)):
        est = None
        if k in found:
            h = found[k]
            s_ref = Affine(np.diag([1.0, -1.0]), np.array([0.0, hr - 1.0]))
            s_frame = Affine(np.diag([1.0, -1.0]), np.array([0.0, heights[k] - 1.0]))
            est = s_ref.then(Affine(h[:, :2], h[:, 2]).inverse()).then(s_frame.inverse())
        per.append(transform_errors(est, truth["transforms"][k], truth["shape"]))
    return {"per": per, "wall": wall}


def geometry_case(work: Path, names: list[str]) -> list[dict]:
    """Issue #17's race: turned, flipped, mirrored and rescaled sets with known transforms."""
    rows = []
    for name in names:
        d, truth = geometry_set(name)
        files = [Path(f) for f in truth["files"]]
        other = truth["other"][1:]
        r = run_geometry(d, truth, work)
        rows.append(_summary("tui-stack run", name, r["per"] or [{"registered": False}] * len(other), other,
                             r["wall"], peak_rss_mb=r["peak_rss_mb"]))
        r = ours_geometry(files, truth)
        rows.append(_summary("tui-stack core", name, r["per"], other, r["wall"], pattern_ms_max=r["pattern_ms_max"]))
        for lists in (False, True):
            r = astroalign_geometry(files, truth, lists)
            if r is not None:
                rows.append(_summary("astroalign" + (" (our star lists)" if lists else ""), name, r["per"], other,
                                     r["wall"]))
        r = siril_geometry(files, truth, work / "siril_geometry")
        if r is not None:
            rows.append(_summary("siril 1.0.6 (1 thread)", name, r["per"], other, r["wall"]))
        for row in rows[-5:]:
            if row["case"] == name:
                print(json.dumps(row), flush=True)
    return rows


def first_paint(directory: Path, runs: int = 5) -> dict | None:
    """Seconds from typing `tui-stack DIR` in a shell in tmux (80x24) until the wizard's step
    bar is on the screen, polled every 5 ms; the median of `runs`. None without tmux."""
    if shutil.which("tmux") is None:
        return None
    sock = "tui-stack-paint"

    def tmux(*a):
        return subprocess.run(["tmux", "-L", sock, *a], capture_output=True, text=True)

    exe = " ".join(tui_stack_cmd())
    times = []
    for _ in range(runs):
        tmux("kill-server")
        tmux("new-session", "-d", "-s", sock, "-x", "80", "-y", "24", "bash --norc")
        time.sleep(0.3)
        t0 = time.perf_counter()
        tmux("send-keys", "-t", sock, f"{exe} {directory}", "Enter")
        while time.perf_counter() - t0 < 20:
            if "1 Files" in tmux("capture-pane", "-p", "-t", sock).stdout:
                times.append(time.perf_counter() - t0)
                break
            time.sleep(0.005)
        tmux("kill-server")
    return {"wall_s": round(float(np.median(times)), 3) if times else None, "peak_rss_mb": None,
            "ok": len(times) == runs, "output": ""}


def wizard_bytes() -> dict | None:
    """The bytes the wizard sends over one walk of the demo through all five screens at 80x24
    (benchmarks/wizard_walk.py; tests/test_tmux.py holds it to 150 KB). None without tmux."""
    if shutil.which("tmux") is None:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import wizard_walk

    rows = wizard_walk.walk(80, 24, work=CACHE / "walk")
    total = sum(r["bytes"] for r in rows)
    return {"table": wizard_walk.table(rows),
            "row": {"wall_s": None, "peak_rss_mb": None, "ok": total <= 150 * 1024, "output": "",
                    "kbytes": round(total / 1024, 1), "steps": rows}}


def _siril_shifts(log: str, n: int) -> np.ndarray:
    """Per-frame (x, y) shifts in our convention from Siril 1.0.6's one-thread register log."""
    shifts, current, dx = {}, None, None
    for line in log.splitlines():
        if "Processing image" in line:
            # "Processing image N (...)" comes before the dx, dy of 0-based image N (checked
            # against the truth: its own file name in that line is one behind)
            current = int(line.split("Processing image")[1].split()[0])
        elif line.startswith("log: dx:"):
            dx = float(line.split()[2])
        elif line.startswith("log: dy:") and current is not None and dx is not None:
            shifts[current] = (-dx, float(line.split()[2]))
            current = dx = None
    return np.array([shifts.get(i, (np.nan, np.nan)) if i else (0.0, 0.0) for i in range(n)])


def _rms_vs_truth(shifts: np.ndarray, truth: dict) -> float | None:
    err = np.asarray(shifts, float)[1:] - np.asarray(truth["shifts"], float)[1:]
    return None if not np.isfinite(err).all() else round(float(np.sqrt(np.mean(np.sum(err**2, axis=1)))), 4)


# ------------------------------------------------------------------ calibration (issue 21)

CALIB_COUNTS = {"bias": 50, "dark": 20, "flat": 20, "light": 16}

# A thread samples the process's resident memory while each step runs: one process, one
# peak per step. Shared by the tui-stack and ccdproc scripts below.
STEP_SAMPLER = """
import json, sys, threading, time
_steps, _cur = {}, [None, 0, 0.0]
def _rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
def _watch():
    while True:
        if _cur[0] is not None:
            _cur[1] = max(_cur[1], _rss())
        time.sleep(0.02)
threading.Thread(target=_watch, daemon=True).start()
class step:
    def __init__(self, name):
        self.name = name
    def __enter__(self):
        _cur[:] = [self.name, _rss(), time.perf_counter()]
    def __exit__(self, *a):
        _steps[self.name] = {"wall_s": round(time.perf_counter() - _cur[2], 2), "peak_rss_mb": max(_cur[1], _rss())}
        _cur[0] = None
def done():
    print("STEPS " + json.dumps(_steps))
"""

OURS_CALIB_SCRIPT = STEP_SAMPLER + """
from pathlib import Path
import numpy as np
from tui_stack import __version__
from tui_stack.core import calibrate as cal, io
src, out = Path(sys.argv[1]), Path(sys.argv[2])
kinds = {k: sorted(src.glob(k + "_*.fits")) for k in ("bias", "dark", "flat", "light")}
opts = cal.Options()
infos = {k: [cal.read_info(p) for p in v] for k, v in kinds.items()}
geo = cal.resolve_geometry(infos["light"][0], None, None)
c = cal.Calibration(opts, geo, infos["light"][0].shape)
def save(m):
    io.write_fits_atomic(out / m.file_name, cal.master_hdul(m, __version__, geo))
with step("master bias"):
    c.bias = cal.build_bias(infos["bias"], geo, opts)
    save(c.bias)
with step("master dark"):
    c.dark = cal.build_dark(infos["dark"], geo, opts, c.bias)
    save(c.dark)
with step("master flat"):
    c.flats["V"] = cal.build_flat(infos["flat"], geo, opts, c.bias, c.dark, "V")
    save(c.flats["V"])
def write_light(p):
    r = c.reader(p)
    h = r.shape[0]
    with io.FitsStream(out / ("c" + p.name), c.calibrated_header(infos["light"][0].header), r.shape) as s:
        for y0 in range(0, h, 256):
            s.write(r.rows(y0, min(h, y0 + 256)))
        s.finish()
    r.close()
with step("calibrate lights"):
    from concurrent.futures import ThreadPoolExecutor
    c.prepare(kinds["light"])
    with ThreadPoolExecutor(2) as ex:  # two lights at a time, as the combine uses both cores
        list(ex.map(write_light, kinds["light"]))
done()
"""

CCDPROC_CALIB_SCRIPT = STEP_SAMPLER + """
# ccdproc's reduction guide: each frame calibrated and written, then combined from the files
# with mem_limit (350 MB, the guide's), average with 5-sigma clipping about the median.
import warnings
warnings.simplefilter("ignore")
from pathlib import Path
import numpy as np
import astropy.units as u
from astropy.nddata import CCDData
import ccdproc as ccdp
src, out = Path(sys.argv[1]), Path(sys.argv[2])
red = out / "reduced"
red.mkdir(exist_ok=True)
kinds = {k: sorted(src.glob(k + "_*.fits")) for k in ("bias", "dark", "flat", "light")}
clip = dict(method="average", sigma_clip=True, sigma_clip_low_thresh=5, sigma_clip_high_thresh=5,
            sigma_clip_func=np.ma.median, sigma_clip_dev_func=np.ma.std, mem_limit=350e6, dtype=np.float32)
with step("master bias"):
    bias = ccdp.combine([str(p) for p in kinds["bias"]], unit="adu", **clip)
    bias.write(out / "master_bias.fits", overwrite=True)
with step("master dark"):
    names = []
    for p in kinds["dark"]:
        ccd = ccdp.subtract_bias(CCDData.read(p, unit="adu"), bias)
        ccd.write(red / p.name, overwrite=True)
        names.append(str(red / p.name))
    dark = ccdp.combine(names, **clip)
    dark.meta["EXPTIME"] = CCDData.read(kinds["dark"][0], unit="adu").header["EXPTIME"]
    dark.write(out / "master_dark.fits", overwrite=True)
kw = dict(exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
with step("master flat"):
    names = []
    for p in kinds["flat"]:
        ccd = ccdp.subtract_dark(ccdp.subtract_bias(CCDData.read(p, unit="adu"), bias), dark, **kw)
        ccd.write(red / p.name, overwrite=True)
        names.append(str(red / p.name))
    flat = ccdp.combine(names, scale=lambda a: 1 / np.ma.median(a), **clip)
    norm = float(np.median(flat.data))
    flat.data = flat.data / norm
    flat.write(out / "master_flat_V.fits", overwrite=True)
with step("calibrate lights"):
    for p in kinds["light"]:
        ccd = ccdp.subtract_dark(ccdp.subtract_bias(CCDData.read(p, unit="adu"), bias), dark, **kw)
        ccdp.flat_correct(ccd, flat, norm_value=1.0).write(out / ("c" + p.name), overwrite=True)
done()
"""

# Siril 1.0.6 (its `preprocess` is `calibrate` from 1.2 on): no overscan and no scaling of darks by exposure (the generated darks have the
# lights' exposure); 5-sigma rejection (Siril's is iterative); flats normalised by multiplication.
SIRIL_CALIB_STEPS = {  # step: (the kind of frame it converts, script)
    "master bias": ("bias", "convert bias -out={w}\ncd {w}\nstack bias_ rej s 5 5 -nonorm -out={w}/master_bias\n"),
    "master dark": ("dark", "convert dark -out={w}\ncd {w}\npreprocess dark_ -bias={w}/master_bias\n"
                    "stack pp_dark_ rej s 5 5 -nonorm -out={w}/master_dark\n"),
    "master flat": ("flat", "convert flat -out={w}\ncd {w}\npreprocess flat_ -bias={w}/master_bias\n"
                    "stack pp_flat_ rej s 5 5 -norm=mul -out={w}/master_flat\n"),
    "calibrate lights": ("light", "convert light -out={w}\ncd {w}\n"
                         "preprocess light_ -bias={w}/master_bias -dark={w}/master_dark -flat={w}/master_flat\n"),
}


def make_calib_frames(size: int) -> tuple[Path, dict]:
    """Raw 16-bit frames (BZERO 32768) of one camera with known truth, cached: 50 bias, 20 darks
    and 20 flats, 16 lights of a star field with integer shifts and transparencies. The camera
    of core/synthetic_calib (bias pattern, dark current, hot pixels, vignetting, dust, dead
    pixels); noise Gaussian (sqrt of the signal) for speed."""
    from astropy.io import fits

    from tui_stack.core import synthetic, synthetic_calib

    d = CACHE / f"calib{size}"
    truth_file = d / "truth.json"
    if truth_file.exists():
        return d, json.loads(truth_file.read_text())
    d.mkdir(parents=True, exist_ok=True)
    spec = synthetic_calib.RawSpec(shape=(size, size), n_hot=int(400 * (size / 1024) ** 2),
                                   n_dead=int(100 * (size / 1024) ** 2), n_dust=6)
    rng = np.random.default_rng(21)
    pattern, rate, _, flat, _ = synthetic_calib.camera(spec, rng)
    pattern, rate, flat = (a.astype(np.float32) for a in (pattern, rate, flat))
    texp = 30.0

    def write(name, signal, kind, exptime, **extra):
        img = signal + pattern + np.float32(spec.bias_level + rng.uniform(-6, 6))
        noise = np.sqrt(np.maximum(signal, 0) / spec.gain + (spec.read_noise / spec.gain) ** 2)
        img += rng.standard_normal(img.shape, dtype=np.float32) * noise
        data = np.clip(np.round(img), 0, 65535).astype(np.uint16)
        hdr = fits.Header({"IMAGETYP": kind, "EXPTIME": exptime, "FILTER": "V", "GAIN": spec.gain,
                           "RDNOISE": spec.read_noise, **extra})
        fits.PrimaryHDU(data, hdr).writeto(d / name, overwrite=True)

    zero = np.zeros((size, size), np.float32)
    for i in range(CALIB_COUNTS["bias"]):
        write(f"bias_{i:03d}.fits", zero, "Bias Frame", 0.0)
    for i in range(CALIB_COUNTS["dark"]):
        write(f"dark_{i:03d}.fits", rate * np.float32(texp), "Dark Frame", texp)
    for i in range(CALIB_COUNTS["flat"]):
        write(f"flat_{i:03d}.fits", flat * np.float32(20000 * rng.uniform(0.9, 1.1)) + rate * np.float32(2.0),
              "Flat Field", 2.0)
    fspec = synthetic.FieldSpec(shape=(size, size), n_stars=int(400 * (size / 1024) ** 2), sky=0.0)
    stars, ref_star, comps = synthetic.plan_field(fspec)
    base = np.zeros((size, size), np.float32)
    for x, y, f in stars:
        synthetic.add_star(base, x, y, f, fspec.fwhm, fspec.beta)
    n = CALIB_COUNTS["light"]
    shifts = np.round(rng.uniform(-8, 8, (n, 2))).astype(int)
    shifts[0] = 0
    transp = np.clip(rng.normal(0.92, 0.05, n), 0.7, 1.0)
    transp[0] = 1.0
    for i in range(n):
        sky = np.roll(base, (-shifts[i, 1], -shifts[i, 0]), axis=(0, 1)) * np.float32(transp[i]) + np.float32(800)
        write(f"light_{i:03d}.fits", sky * flat + rate * np.float32(texp), "Light Frame", texp)
    truth = {"shifts": shifts.tolist(), "transparencies": transp.tolist(), "ref_star": list(ref_star),
             "comparison_stars": [list(c) for c in comps]}
    truth_file.write_text(json.dumps(truth))
    return d, truth


def _steps_of(res: dict) -> dict:
    for line in res.pop("stdout", "").splitlines():
        if line.startswith("STEPS "):
            return json.loads(line[6:])
    return {}


def _measure_steps(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    ok = os.waitstatus_to_exitcode(status) == 0
    return {"wall_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "ok": ok,
            "output": "" if ok else out[-800:], "stdout": out}


def _read_master(path: Path) -> np.ndarray | None:
    from astropy.io import fits

    for p in (path, path.with_suffix(".fit"), Path(str(path) + ".fit")):
        if p.exists():
            return fits.getdata(p).astype(np.float64)
    return None


def _difference(ours: np.ndarray | None, ref: np.ndarray | None, relative: bool = False):
    """(max, median) of |ours - ref| over the pixels both have, in ADU or relative to ref's median
    level (per pixel would blow up at the dead pixels, near 0 in a flat)."""
    if ours is None or ref is None or ours.shape != ref.shape:
        return None
    ok = np.isfinite(ours) & np.isfinite(ref)
    d = np.abs(ours[ok] - ref[ok])
    if relative:
        d = d / np.median(np.abs(ref[ok]))
    return float(np.max(d)), float(np.median(d))


def calibration_case(size: int, only: str) -> list[dict]:
    """50 bias, 20 dark, 20 flat and 16 lights of size^2: masters and calibrated lights written by
    tui-stack's core, by ccdproc as its guide does it, and by Siril; time and peak memory per
    step and in all, and each tool's masters and lights against ccdproc's."""
    if not (CACHE / f"calib{size}" / "truth.json").exists():
        # made in a process of its own: a forked child's peak RSS counts its parent's pages
        subprocess.run([sys.executable, __file__, "--make-calibration-frames", "--size", str(size)], check=True)
    src, truth = make_calib_frames(size)
    work = CACHE / "work" / "calib"
    rows = []
    tools = [("tui-stack", [sys.executable, "-c", OURS_CALIB_SCRIPT])]
    if only == "all":
        tools.append(("ccdproc", [sys.executable, "-c", CCDPROC_CALIB_SCRIPT]))
    for tool, cmd in tools:
        out = work / tool
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        res = _measure_steps(cmd + [str(src), str(out)])
        steps = _steps_of(res)
        rows.append({"tool": tool, "step": "all", **res})
        rows += [{"tool": tool, "step": k, "ok": res["ok"], **v} for k, v in steps.items()]
    if only == "all" and siril_available():
        out = work / "siril"
        shutil.rmtree(out, ignore_errors=True)
        total = {"wall_s": 0.0, "peak_rss_mb": 0.0, "ok": True}
        for kind in ("bias", "dark", "flat", "light"):
            k = out / kind
            k.mkdir(parents=True)
            for f in sorted(src.glob(f"{kind}_*.fits")):
                os.symlink(f, k / f.name)
        for name, (kind, body) in SIRIL_CALIB_STEPS.items():
            script = out / f"{kind}.ssf"
            script.write_text("requires 1.0.0\n" + body.format(w=out))
            res = measure(["siril-cli", "-d", str(out / kind), "-s", str(script)])
            rows.append({"tool": "siril", "step": name, **res})
            total["wall_s"] = round(total["wall_s"] + res["wall_s"], 2)
            total["peak_rss_mb"] = max(total["peak_rss_mb"], res["peak_rss_mb"])
            total["ok"] = total["ok"] and res["ok"]
        rows.append({"tool": "siril", "step": "all", **total, "output": ""})
    # the whole job: `tui-stack run` on the raw lights with [calibrate] (calibrated as they are
    # read), against `tui-stack run` on ccdproc's calibrated lights
    if (work / "ccdproc" / "clight_000.fits").exists() or only != "all":
        base = {"reference": {"frame": 0, "star": list(truth["ref_star"])},
                "scale": {"stars": truth["comparison_stars"], "radius": 15.0, "saturation": 65000.0},
                "combine": {"method": "median"}}
        cfg_raw = write_config(work / "run_raw.toml", {
            **base, "input": {"directory": str(src), "pattern": "light_*.fits"},
            "calibrate": {k: str(src / f"{k}_*.fits") for k in ("bias", "dark", "flat")},
            "output": {"directory": str(work / "run_raw"), "write_shifted": False}})
        res = measure(tui_stack_cmd() + ["run", str(cfg_raw), "--quiet"])
        rows.append({"tool": "tui-stack", "step": "run raw + [calibrate]", **res})
        if (work / "ccdproc" / "clight_000.fits").exists():
            cfg_cal = write_config(work / "run_cal.toml", {
                **base, "input": {"directory": str(work / "ccdproc"), "pattern": "clight_*.fits"},
                "output": {"directory": str(work / "run_cal"), "write_shifted": False}})
            res = measure(tui_stack_cmd() + ["run", str(cfg_cal), "--quiet"])
            rows.append({"tool": "tui-stack", "step": "run on ccdproc-calibrated", **res})
            a = _read_master(work / "run_raw" / "combined_median.fits")
            b = _read_master(work / "run_cal" / "combined_median.fits")
            if a is not None and b is not None:
                ok = np.isfinite(a) & np.isfinite(b)
                d = np.abs(a[ok] - b[ok])  # ADU of sky-subtracted images; the max is at hot and dead pixels,
                # which ccdproc keeps and we mask
                rows[-2].update(diff_max=round(float(d.max()), 5), diff_median=round(float(np.median(d)), 7),
                                diff_p9999=round(float(np.percentile(d, 99.99)), 5), diff_unit="ADU",
                                sky_noise_adu=round(float(1.4826 * np.median(np.abs(b[ok] - np.median(b[ok])))), 3))
        shutil.rmtree(work / "run_raw", ignore_errors=True)
        shutil.rmtree(work / "run_cal", ignore_errors=True)
    # differences to ccdproc: masters (ADU, a flat relative) and the calibrated lights (relative)
    ref_dir = work / "ccdproc"
    if (ref_dir / "master_bias.fits").exists():
        refs = {"master bias": _read_master(ref_dir / "master_bias.fits"),
                "master dark": _read_master(ref_dir / "master_dark.fits"),
                "master flat": _read_master(ref_dir / "master_flat_V.fits"),
                "calibrate lights": _read_master(ref_dir / "clight_000.fits")}
        ours = {"master bias": _read_master(work / "tui-stack" / "master_bias.fits"),
                "master dark": _read_master(work / "tui-stack" / "master_dark.fits"),
                "master flat": _read_master(work / "tui-stack" / "master_flat_V.fits"),
                "calibrate lights": _read_master(work / "tui-stack" / "clight_000.fits")}
        siril = {}
        if (work / "siril").exists():
            sd = work / "siril"
            siril = {"master bias": _read_master(sd / "master_bias.fit"), "master dark": _read_master(sd / "master_dark.fit"),
                     "master flat": _read_master(sd / "master_flat.fit"),
                     "calibrate lights": _read_master(sd / "pp_light_00001.fit")}
            for k, v in siril.items():  # Siril keeps 32-bit results in [0, 1] of the 16-bit range
                if v is not None and k != "master flat" and np.nanmax(v) <= 2:
                    siril[k] = v * 65535
            if siril.get("master flat") is not None:
                siril["master flat"] = siril["master flat"] / np.nanmedian(siril["master flat"])
            lights, ref = siril.get("calibrate lights"), refs.get("calibrate lights")
            if lights is not None and ref is not None:  # its flat is normalised otherwise: one overall factor
                siril["calibrate lights"] = lights * np.nanmedian(ref / lights)
        for r in rows:
            got = {"tui-stack": ours, "siril": siril}.get(r["tool"], {}).get(r["step"])
            rel = r["step"] in ("master flat", "calibrate lights")
            diff = _difference(got, refs.get(r["step"]), rel)
            if diff is not None:
                r["diff_max"], r["diff_median"] = round(diff[0], 7), round(diff[1], 7)
                r["diff_unit"] = "relative" if rel else "ADU"
    by = {(r["tool"], r["step"]): r for r in rows}
    for r in rows:
        o = by.get(("tui-stack", r["step"]))
        if r["tool"] != "tui-stack" and o and o["ok"] and r["ok"] and o["wall_s"]:
            r["time_ratio"] = round(r["wall_s"] / o["wall_s"], 1)
            r["memory_ratio"] = round(r["peak_rss_mb"] / o["peak_rss_mb"], 1)
    return rows


# ------------------------------------------------------------------ main


def _scale_errors(ts, work: Path, d: Path, truth: dict, method: str, name: str) -> tuple[dict, np.ndarray | None]:
    """One `tui-stack run` on a seeing set; its scales' errors against the truth (frames 1..)."""
    out = work / f"scales_{name}_{method}"
    cfg = write_config(work / f"scales_{name}_{method}.toml", {
        "input": {"directory": str(d), "pattern": "demo_*.fits"},
        "reference": {"frame": 0, "star": [round(v) for v in truth["ref_star"]]},
        "scale": {"stars": "auto", "method": method},
        "output": {"directory": str(out), "write_shifted": False}})
    res = measure(ts + ["run", str(cfg), "--quiet"])
    if not res["ok"]:
        return res, None
    frames = json.loads((out / "report.json").read_text())["frames"]
    err = (np.array([f["scale"] for f in frames]) / np.array(truth["scales"]) - 1)[1:]
    res["rms_pct"] = round(100 * float(np.sqrt(np.mean(err ** 2))), 3)
    res["worst_pct"] = round(100 * float(np.abs(err).max()), 3)
    return res, err


def _seeing_frames(kind: str, noise_draw: int = 0) -> tuple[Path, dict]:
    from tui_stack.core import synthetic

    d = CACHE / (f"seeing_{kind}" + (f"_noise{noise_draw}" if noise_draw else ""))
    truth_file = d / "truth.json"
    if not truth_file.exists():
        spec, fw, be = synthetic.seeing_set(kind)
        t = synthetic.write_seeing_field(d, spec, fw, be, noise_draw=noise_draw)
        truth_file.write_text(json.dumps({"scales": t.scales.tolist(), "ref_star": list(t.ref_star),
                                          "fwhm": list(fw), "beta": list(be)}))
    return d, json.loads(truth_file.read_text())


def noise_case(work: Path, draws: int) -> list[dict]:
    """How much of growth's error on the seeing sets is the sets' own noise: the same frames
    (stars, PSFs, transparencies) with the noise drawn `draws` times. The mean error over the
    draws is what a method gets wrong (systematic), their scatter what the noise moves."""
    ts = tui_stack_cmd()
    rows = []
    for kind in ("sparse", "crowded"):
        errs = []
        for k in range(draws):
            d, truth = _seeing_frames(kind, k)
            res, err = _scale_errors(ts, work, d, truth, "growth", f"{kind}_noise{k}")
            rows.append({"tool": "tui-stack", "case": f"{kind} noise draw {k} growth", **res})
            if err is not None:
                errs.append(err)
        if len(errs) > 1:
            e = np.array(errs)
            rows.append({"tool": "tui-stack", "case": f"{kind} over {len(e)} noise draws", "ok": True,
                         "wall_s": "-", "peak_rss_mb": "-",
                         "systematic_rms_pct": round(100 * float(np.sqrt(np.mean(e.mean(0) ** 2))), 3),
                         "noise_rms_pct": round(100 * float(np.sqrt(np.mean(e.var(0, ddof=1)))), 3)})
    return rows


def scales_case(work: Path, repeat: int = 1) -> list[dict]:
    """Issue 22: [scale] method "growth" (each frame's aperture sums corrected by its own Moffat
    PSF) against the lab's "fixed" aperture. Accuracy: 8 frames of 1024^2 with known
    transparency (synthetic.seeing_set: FWHM 2.5-6 px and beta 2-4.5 varying per frame, 400 or
    1,500 stars; or one PSF throughout), stars = "auto". Time: a whole `run` on 16 frames of
    4096^2 (stars = "auto"), the two methods taking turns `repeat` times, medians."""
    from tui_stack.core import synthetic

    ts = tui_stack_cmd()
    rows = []
    for kind in synthetic.SEEING_SETS:
        d, truth = _seeing_frames(kind)
        for method in ("growth", "fixed"):
            res, _ = _scale_errors(ts, work, d, truth, method, kind)
            rows.append({"tool": "tui-stack", "case": f"{kind} 8x1024 {method}", **res})
    frames_dir, files, truth = make_frames(16, 4096)
    runs = {m: [] for m in ("fixed", "growth")}
    for _ in range(max(1, repeat)):
        for method in runs:
            cfg = write_config(work / f"scales_time_{method}.toml", {
                "input": {"directory": str(frames_dir), "pattern": "frame_*.fits"},
                "reference": {"frame": 0, "star": list(truth["ref_star"])},
                "scale": {"stars": "auto", "method": method},
                "output": {"directory": str(work / f"scales_time_{method}"), "write_shifted": False}})
            runs[method].append(measure(ts + ["run", str(cfg), "--quiet"]))
    for method, results in runs.items():
        res = dict(sorted(results, key=lambda r: r["wall_s"])[len(results) // 2])
        res["walls_s"] = [r["wall_s"] for r in results]
        res["ok"] = all(r["ok"] for r in results)
        rows.append({"tool": "tui-stack", "case": f"run 16x4096 {method}", **res})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--small", action="store_true", help="10 frames of 1024^2")
    ap.add_argument("--only", choices=["ours", "all"], default="all")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--memory-limit", default="256MB")
    ap.add_argument("--dask", action="store_true", help="add the median combine on a local Dask cluster")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the whole-job cases (tui-stack run, Siril, the lab) in turn this many times; medians")
    ap.add_argument("--modes", default="integer",
                    help="frame sets for the whole job: integer, subpixel (subpixel shifts), similarity (turned <= 1 deg)")
    ap.add_argument("--run-methods", default="median", help="combine methods of the whole-job runs")
    ap.add_argument("--pure", action="store_true",
                    help="also the subpixel and turned runs with the numpy resampling passes (TUI_STACK_PURE=1)")
    ap.add_argument("--skip-combine", action="store_true", help="only the whole-job runs (no combine-only cases)")
    ap.add_argument("--stack", action="store_true",
                    help="also the stack step alone per frame set, with the true geometry (resampling cost)")
    ap.add_argument("--peers", default="ccdproc,iraf,siril,lab",
                    help="which peers run (ccdproc needs 5-10 GB for 16 frames of 4096^2)")
    ap.add_argument("--registration", action="store_true",
                    help="only the registration race: 8 crowded 1024^2 frames with subpixel offsets, vs Siril; then "
                         "the turned, flipped, mirrored and rescaled sets (GEOMETRY_SETS)")
    ap.add_argument("--sets", default=",".join(GEOMETRY_SETS),
                    help="with --registration: which geometry sets (comma-separated; '' for none)")
    ap.add_argument("--scales", action="store_true",
                    help="only the scale race (issue 22): [scale] method growth vs fixed on frames of varied "
                         "seeing with known transparency, and the run time of 16 frames of 4096^2")
    ap.add_argument("--noise-draws", type=int, default=0,
                    help="with --scales: also the sparse and crowded sets with the noise drawn this many times "
                         "(what of growth's error is the sets' own noise)")
    ap.add_argument("--calibration", action="store_true",
                    help="only the calibration case: 50 bias, 20 dark, 20 flat, 16 lights of --size^2, vs ccdproc and Siril")
    ap.add_argument("--make-calibration-frames", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_calibration_frames:
        make_calib_frames(args.size)
        return 0
    if args.scales:
        work = CACHE / "work"
        work.mkdir(parents=True, exist_ok=True)
        rows = scales_case(work, args.repeat) + (noise_case(work, args.noise_draws) if args.noise_draws else [])
        for r in rows:
            print(f"{r['case']:28s} {r['wall_s']!s:>7} s {r['peak_rss_mb']!s:>7} MB  {'ok' if r['ok'] else 'FAILED'}"
                  + (f"  scale error rms {r['rms_pct']}%  worst {r['worst_pct']}%" if "rms_pct" in r else "")
                  + (f"  runs {r['walls_s']}" if "walls_s" in r else "")
                  + (f"  systematic rms {r['systematic_rms_pct']}%  noise rms {r['noise_rms_pct']}%"
                     if "noise_rms_pct" in r else ""))
        (HERE / "results-scales.json").write_text(json.dumps(rows, indent=2))
        return 0
    if args.calibration:
        rows = calibration_case(args.size, args.only)
        for r in rows:
            print(f"{r['tool']:10s} {r['step']:17s} {r['wall_s']!s:>8} s {r['peak_rss_mb']!s:>8} MB "
                  f"{'ok' if r['ok'] else 'FAILED ' + r.get('output', '')[-300:]}"
                  + (f"  x{r['time_ratio']} time, x{r['memory_ratio']} memory" if "time_ratio" in r else "")
                  + (f"  diff to ccdproc max {r['diff_max']:.3g} median {r['diff_median']:.3g} {r['diff_unit']}"
                     if "diff_max" in r else ""))
        (HERE / f"results-calibration-{args.size}.json").write_text(json.dumps(rows, indent=2))
        return 0 if all(r["ok"] for r in rows) else 1
    if args.registration:
        work = CACHE / "work"
        work.mkdir(parents=True, exist_ok=True)
        names = [n for n in args.sets.split(",") if n]
        for n in names:
            if n not in GEOMETRY_SETS:
                print(f"--sets: unknown set {n!r}; use {', '.join(GEOMETRY_SETS)}", file=sys.stderr)
                return 2
        geo_rows = geometry_case(work, names)
        (HERE / "results-geometry.json").write_text(json.dumps(geo_rows, indent=2))
        rows = registration_case(work)
        for r in rows:
            print(f"{r['tool']:10s} {r['case']:34s} {r['wall_s']!s:>6} s  shift rms {r['shift_rms_px']} px"
                  + (f"  scale error max {r['scale_err_max']}" if "scale_err_max" in r else ""))
        (HERE / "results-registration.json").write_text(json.dumps(rows, indent=2))
        return 0
    if args.small:
        args.frames, args.size = 10, 1024
    methods = [m for m in args.methods.split(",") if m]
    peers = set(args.peers.split(","))
    frames_dir, files, truth = make_frames(args.frames, args.size)
    work = CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def add(tool, case, res):
        rows.append({"tool": tool, "case": case, **res})
        print(f"{tool:10s} {case:10s} {res['wall_s']!s:>8} s {res['peak_rss_mb']!s:>8} MB "
              f"cpu {res.get('cpu_s', '')!s:>6} s {'ok' if res['ok'] else 'FAILED'}"
              + (f"  turns {res['walls_s']} s, cpu {res['cpus_s']} s" if "walls_s" in res else ""), flush=True)

    ts = tui_stack_cmd()
    paint = None if args.skip_combine else first_paint(frames_dir)
    if paint is not None:
        add("tui-stack", "first paint", paint)
        walk = wizard_bytes()
        if walk is not None:
            print(walk["table"])
            add("tui-stack", "wizard walk KB", walk["row"])
    add("floor", "read+write", measure([sys.executable, "-c", FLOOR_SCRIPT, str(work / "floor.fits"), *map(str, files)]))
    for m in [] if args.skip_combine else methods:
        add("tui-stack", m, measure(ts + ["combine", *map(str, files), "--method", m, "--out", str(work / f"ours_{m}.fits"),
                                          "--overwrite", "--memory-limit", args.memory_limit]))
        if args.only == "all" and "ccdproc" in peers and m in CCDPROC_METHODS:
            add("ccdproc", m, measure([sys.executable, "-c", CCDPROC_SCRIPT, m, str(work / f"ccdproc_{m}.fits"),
                                       *map(str, files)]))
        if args.only == "all":
            if "iraf" in peers and iraf_available() and m in IRAF_REJECT:
                add("iraf", m, iraf_combine(files, m, work / f"iraf_{m}.fits", work / "iraf"))
            if "siril" in peers and siril_available():
                res = siril_stack(files, m, work / "siril")
                if res is not None:
                    add("siril", m, res)
    if args.dask:
        try:
            import distributed  # noqa: F401

            add("tui-stack", "median dask", measure(ts + ["combine", *map(str, files), "--method", "median", "--out",
                                                          str(work / "ours_dask.fits"), "--overwrite", "--scheduler",
                                                          "dask", "--workers", str(os.cpu_count() or 1)]))
        except ImportError:
            print("dask column skipped: pip install 'tui-stack[dask]'")
    pure = dict(os.environ, TUI_STACK_PURE="1")  # --pure: the numpy resampling passes

    def ours_run(frames_dir, truth, mode, method, env=None):
        cfg = run_config(frames_dir, truth, work, method, mode)
        shutil.rmtree(work / "run", ignore_errors=True)  # a fresh output directory: the run owns it
        res = measure(ts + ["run", str(cfg), "--quiet", "--memory-limit", args.memory_limit], env=env)
        report = work / "run" / "report.json"
        if res["ok"] and report.exists():
            frames = json.loads(report.read_text())["frames"]
            res["shift_rms_px"] = _rms_vs_truth([[f["shift_x"], f["shift_y"]] for f in frames], truth)
        return res

    def lab_run():
        lab_out = work / "lab"
        lab_out.mkdir(exist_ok=True)
        res = measure([sys.executable, "-c", LAB_SCRIPT, str(lab_out), str(truth["ref_star"][0]),
                       str(truth["ref_star"][1]), repr(truth["comparison_stars"]), *map(str, files)])
        shutil.rmtree(lab_out, ignore_errors=True)
        return res

    # The whole job per mode (frame set) and method: `tui-stack run` and Siril's convert +
    # register + stack on the same frames. The cases take turns `--repeat` times and each
    # keeps its median: on a shared machine the load changes from minute to minute, and a
    # ratio of two runs minutes apart misleads.
    modes = [m for m in args.modes.split(",") if m]
    run_methods = [m for m in args.run_methods.split(",") if m]
    cases = []
    for mode in modes:
        mdir, mfiles, mtruth = make_frames(args.frames, args.size, mode)
        label = "" if modes == ["integer"] and run_methods == ["median"] else f" {mode}"
        for k, method in enumerate(run_methods):
            case = "run" + label + ("" if run_methods == ["median"] else f" {method}")
            cases.append(("tui-stack", case, lambda a=(mdir, mtruth, mode, method): ours_run(*a)))
            if args.pure and mode != "integer":
                cases.append(("tui-stack numpy", case, lambda a=(mdir, mtruth, mode, method): ours_run(*a, env=pure)))
            if args.only == "all" and "siril" in peers and siril_available() and method in SIRIL_STACK:
                cases.append(("siril", case, lambda a=(mfiles, work / "siril_run", mtruth, method, k == 0):
                              siril_register_stack(*a)))
    if args.stack:
        from tui_stack.core.combine_params import parse_size

        for mode in modes:
            mdir = make_frames(args.frames, args.size, mode)[0]
            for method in run_methods:
                cases.append(("tui-stack", f"stack {mode} {method}", lambda a=(str(mdir), method): measure(
                    [sys.executable, "-c", STACK_SCRIPT, *a, str(parse_size(args.memory_limit))])))
                if args.pure and mode != "integer":
                    cases.append(("tui-stack numpy", f"stack {mode} {method}", lambda a=(str(mdir), method): measure(
                        [sys.executable, "-c", STACK_SCRIPT, *a, str(parse_size(args.memory_limit))], env=pure)))
    if args.only == "all" and "lab" in peers and "integer" in modes:
        cases.append(("lab", "run" if modes == ["integer"] else "run integer median", lab_run))
    runs = {(tool, case): [] for tool, case, _ in cases}
    for _ in range(max(1, args.repeat)):
        for tool, case, fn in cases:
            res = fn()
            if res is not None:
                runs[(tool, case)].append(res)
    for tool, case, _ in cases:
        if not runs[(tool, case)]:
            continue
        results = sorted(runs[(tool, case)], key=lambda r: r["wall_s"])
        res = dict(results[len(results) // 2])
        res["ok"] = all(r["ok"] for r in results)
        res["walls_s"] = [r["wall_s"] for r in runs[(tool, case)]]
        res["cpus_s"] = [r.get("cpu_s") for r in runs[(tool, case)]]
        add(tool, case, res)

    # ratios: each reference tool against tui-stack on the same case
    ours = {r["case"]: r for r in rows if r["tool"] == "tui-stack"}
    floor = next(r for r in rows if r["tool"] == "floor")
    for r in rows:
        if (r["tool"] == "tui-stack" and not r["case"].startswith("run") and r.get("wall_s") is not None
                and r["case"] != "first paint" and floor["ok"]):  # the wizard walk's row has bytes, no time
            r["x_floor"] = round(r["wall_s"] / floor["wall_s"], 2)
        o = ours.get(r["case"] if r["tool"] != "lab" else r["case"].replace("run integer median", "run"))
        if r["tool"] == "lab" and o is None:
            o = ours.get("run integer median")
        if r["tool"] not in ("tui-stack", "floor") and o and r["ok"] and o["ok"] and r["wall_s"]:
            r["time_ratio"] = round(r["wall_s"] / o["wall_s"], 1)
            r["memory_ratio"] = round(r["peak_rss_mb"] / o["peak_rss_mb"], 1)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    result = {"frames": args.frames, "size": args.size, "machine": machine, "memory_limit": args.memory_limit, "rows": rows}
    out = HERE / f"results-{args.frames}x{args.size}.json"
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"written {out}")
    return 0 if all(r["ok"] for r in rows) else 1


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{result['frames']} frames of {result['size']}² float32 ({result['machine']})")
    for col in ("tool", "case", "wall s", "peak RSS MB", "x floor", "x slower than tui-stack", "x more memory",
                "shift rms px"):
        t.add_column(col, justify="left" if col in ("tool", "case") else "right")
    for r in result["rows"]:
        t.add_row(r["tool"], r["case"], str(r["wall_s"]), str(r["peak_rss_mb"]), str(r.get("x_floor", "")),
                  str(r.get("time_ratio", "")), str(r.get("memory_ratio", "")), str(r.get("shift_rms_px", "")))
    Console().print(t)


if __name__ == "__main__":
    sys.exit(main())
