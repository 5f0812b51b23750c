"""Step 7, outputs: the output directory checked, the stacks written with provenance, report.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tui_stack import __version__, safetext
from tui_stack.core import combine, io
from tui_stack.errors import InputError
from tui_stack.pipeline import calibration
from tui_stack.pipeline.report import report_dict
from tui_stack.pipeline.shift import reference_header, write_shifted_frames
from tui_stack.pipeline.stack import combine_params
from tui_stack.pipeline.state import CombinedResult, Progress, RunState, noop


def write_combined(state: RunState, combined: CombinedResult, out_dir: Path) -> Path:
    from astropy.io import fits

    ref_hdr = reference_header(state)
    hdr = fits.Header()
    if ref_hdr is not None:
        hdr.extend(ref_hdr, unique=True)
    hdr["TSVERS"] = (__version__, "tui-stack version")
    params = combined.params or combine_params(state.config, combined.method, state.files[state.ref_index])
    for key, _, value, comment in combine.method_parameters(params):
        hdr[key] = (value, comment)
    hdr["NCOMBINE"] = (combined.n_frames, "frames combined")
    hdr["TSREF"] = (safetext.header(state.files[state.ref_index].name), "reference frame")
    hdr["TSMODE"] = (state.config.shift.mode, "shift mode")
    hdr["TSWEIGHT"] = (state.config.combine.weights if combined.weights else "none", "weights of the average")
    calib = calibration.active(state.config) if state.config.calibrate.any else None
    if calib is not None:  # the first step of the provenance: what every frame was calibrated with
        hdr["TSCALIB"] = (calib.steps(), "tui-stack calibration of each frame")
        for m in calib.masters:
            hdr.add_history(f"calibrated with {m.file_name} ({len(m.files)} {m.kind} frames)")
    used = [fr for fr in state.frames if fr.used]
    weights = combined.weights or [None] * len(used)
    for k, (fr, wt) in enumerate(zip(used, weights), 1):
        hdr[f"IMCMB{k:03d}"] = safetext.header(fr.name)  # cards are ASCII: report.json has the real name
        hdr.add_history(
            f"{safetext.header(fr.name)} shift=({fr.applied_shift_x:g},{fr.applied_shift_y:g}) sky={fr.sky:.2f} scale={fr.scale:.5f}"
            + (f" weight={wt:.5f}" if wt is not None else "")
        )
    path = out_dir / f"combined_{combined.method}.fits"
    hdus = [fits.PrimaryHDU(combined.data.astype(np.float32), hdr)] + (io.map_hdus(combined.maps) if combined.maps else [])
    io.write_fits_atomic(path, fits.HDUList(hdus))
    combined.path = path
    return path



def planned_outputs(state: RunState, methods=None) -> list[str]:
    """The names a run writes into its output directory (rundir.OutputDir checks them first).
    Exit 2 if one would be read as a frame by the next run: written among the inputs, its name
    matching their glob."""
    import fnmatch

    cfg = state.config
    names = [f"combined_{m}.fits" for m in (methods or [cfg.combine.method])] + ["report.json"]
    if cfg.output.write_shifted:
        names += [f"s{p.name}" for p in state.files]
    names += calibration.planned_masters(cfg, state.files)
    if io.resolved(cfg.output.directory) == io.resolved(cfg.input.directory):
        caught = [n for n in names if fnmatch.fnmatch(n, cfg.input.pattern)]
        if caught and not {p.name for p in state.files} & set(names):  # else "would overwrite an input" (rundir)
            raise InputError(f"[output] directory is the input directory and {caught[0]} matches the input pattern "
                             f"{cfg.input.pattern!r}: the next run would take it for a frame; choose another output "
                             "directory (or a narrower pattern)")
    return names


def other_input(state: RunState) -> str | None:
    """What the set in the output directory was made from, when that is another input
    directory than this run's (its report.json says which; one written before it said so:
    frames none of which is this run's); None when it is this run's or there is none. A rerun
    of the same job replaces its own set (rundir); another data set's is asked about first."""
    cfg = state.config
    try:
        rep = json.loads((Path(cfg.output.directory) / "report.json").read_text(encoding="utf-8"))
        given = rep.get("input", {}).get("directory")
        names = {str(f["file"]) for f in rep.get("frames") or []}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None  # none, or not ours: rundir refuses to overwrite a file it did not write
    if isinstance(given, str):
        same = os.path.realpath(given) == os.path.realpath(cfg.input.directory)
        return None if same else given
    if names and not names & {p.name for p in state.files}:
        return f"other frames ({sorted(names)[0]}, ...)"
    return None


def write_outputs(state: RunState, out: Path, progress: Progress = noop, shifted_written: bool = False) -> None:
    """Shifted frames (if asked and not yet written), every combined image, report.json."""
    if state.config.output.write_shifted and not shifted_written:
        write_shifted_frames(state, out, progress)
    calibration.write_masters(state, out)  # unless `run` wrote them already and let them go
    for c in state.combined:
        write_combined(state, c, out)
    io.write_text_atomic(out / "report.json", json.dumps(report_dict(state), indent=2) + "\n")
