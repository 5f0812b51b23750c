"""What issue 20's safety costs: the resume digest against hashing whole frames, and putting a
run's outputs in place as one set (staging, fsync, renames) against writing them in place.

    .venv/bin/python benchmarks/safety.py [--frames 13] [--size 4096]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_stack import resume, rundir  # noqa: E402
from tui_stack.core import io  # noqa: E402


def full_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def best(fn, repeat=3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=13, help="outputs in the set (12 s-frames + combined)")
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    from astropy.io import fits

    data = np.random.default_rng(0).normal(1000, 10, (args.size, args.size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = tmp / "f.fits"
        fits.PrimaryHDU(data).writeto(frame)
        mb = frame.stat().st_size / 2**20
        print(f"resume digest of one {args.size}^2 frame ({mb:.0f} MB, file in the page cache):")
        print(f"  sampled (tui_stack.resume.digest)  {best(lambda: resume.digest(frame)) * 1e3:8.2f} ms")
        print(f"  whole file, blake2b                {best(lambda: full_digest(frame)) * 1e3:8.2f} ms")

        hdul = fits.HDUList([fits.PrimaryHDU(data)])
        names = [f"s{i:03d}.fits" for i in range(args.frames - 1)] + ["combined_median.fits"]

        def in_place():
            out = tmp / "plain"
            out.mkdir(exist_ok=True)
            for n in names:
                io.write_fits_atomic(out / n, hdul)

        def staged():
            with rundir.OutputDir(tmp / "staged") as od:
                for n in names:
                    io.write_fits_atomic(od.path(n), hdul)
                t = time.perf_counter()
                od.commit()
                staged.commit = time.perf_counter() - t

        a, b = best(in_place), best(staged)
        print(f"{args.frames} outputs of {mb:.0f} MB each (write + fsync each):")
        print(f"  written in place (atomic each)     {a:8.2f} s")
        print(f"  staged, put in place as one set    {b:8.2f} s  (of which the commit {staged.commit * 1e3:.0f} ms)")


if __name__ == "__main__":
    main()
