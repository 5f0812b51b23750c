"""`tui-stack demo`: a synthetic field on disk with its config and its truth."""

from __future__ import annotations

import os
from pathlib import Path

from tui_stack.config import Config, config_from_dict, config_to_toml
from tui_stack.core import synthetic
from tui_stack.core.io import resolved


def demo_spec(n_frames: int = 10, size: int = 1024) -> synthetic.FieldSpec:
    return synthetic.FieldSpec(n_frames=n_frames, shape=(size, size), n_stars=int(400 * (size / 1024) ** 2), with_flat=True)


def demo_config(truth: synthetic.FieldTruth, frames_dir: Path, out_dir: Path) -> Config:
    return config_from_dict({
        "input": {"directory": str(frames_dir), "pattern": "demo_*.fits", "select": {"PICTTYPE": 1}},
        "reference": {"frame": truth.ref_index, "star": [round(truth.ref_star[0]), round(truth.ref_star[1])],
                      "box": 100, "centroid": "2dg"},
        "shift": {"mode": "integer"},
        "scale": {"stars": [[round(x), round(y)] for x, y in truth.comparison_stars], "radius": 15.0,
                  "saturation": 60000.0},
        "combine": {"method": "median"},
        "output": {"directory": str(out_dir)},
    }, resolve=False)


def write_truth_csv(truth: synthetic.FieldTruth, path: Path) -> None:
    lines = ["file,shift_x,shift_y,transparency,scale"]
    for f, (dx, dy), t, s in zip(truth.files, truth.shifts, truth.transparencies, truth.scales):
        lines.append(f"{f.name},{dx:.4f},{dy:.4f},{t:.4f},{s:.5f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_demo(directory: Path, n_frames: int = 10, size: int = 1024) -> Path:
    """Frames in DIR/frames, truth in DIR/frames/truth.csv, config DIR/demo.toml (outputs to DIR/out).

    The frames are drawn into a hidden folder in DIR and moved into place once all are written:
    interrupted (a signal, a full or read-only disk) it removes what it wrote and the folders it
    made, so DIR is left as it was."""
    import shutil
    import tempfile

    from tui_stack import rundir, signals
    from tui_stack.core import io

    directory = resolved(directory)
    made = [p for p in (directory, *directory.parents) if not p.exists()]  # deepest first
    staging, done = None, False
    try:
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tui-stack-demo-", dir=directory))
        truth = synthetic.write_field(staging, demo_spec(n_frames, size))
        write_truth_csv(truth, staging / "truth.csv")
        frames = directory / "frames"
        cfg = demo_config(truth, Path("frames"), Path("out"))
        path = directory / "demo.toml"
        with signals.deferred():  # the set in place whole, or not at all
            frames.mkdir(exist_ok=True)
            for p in sorted(staging.iterdir()):
                os.replace(p, frames / p.name)
            io.write_text_atomic(path, "# tui-stack demo: synthetic field, truth in frames/truth.csv\n"
                                 + config_to_toml(cfg))
        done = True
        return path
    except OSError as exc:
        raise rundir.cannot_write(directory, exc) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for p in made if not done else ():  # the folders this call made, if empty
            try:
                p.rmdir()
            except OSError:
                break
