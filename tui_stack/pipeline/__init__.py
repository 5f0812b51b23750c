"""The lab's steps over one run state: select, reference, register, shift, scale, stack, outputs,
report. `tui-stack run` calls `run`; the wizard calls the steps one by one on the same RunState,
and `tui-stack combine` the stack step's parameters and weights, so every decision has one owner:

- which files: select.select (and select.scan for the wizard's table, with the same filter rule)
- which reference frame and star: reference.choose_reference, reference.reference_star
- which frames are used: register (flags) and RunState.set_used (the user's choice)
- which parameters are valid: config.SCHEMA and core.combine_params.PARAMS
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tui_stack import compute
from tui_stack.config import Config
from tui_stack.pipeline.outputs import prepare_output_dir, write_combined, write_outputs
from tui_stack.pipeline.reference import assess, choose_reference, measure_frame, reference_star, sky_subtracted, \
    suggested_reference
from tui_stack.pipeline.register import register
from tui_stack.pipeline.report import report_dict
from tui_stack.pipeline.scale import comparison_star_at, comparison_stars, measure_scales
from tui_stack.pipeline.select import excluded_indices, resolve_reference, scan, select
from tui_stack.pipeline.shift import prepared_frame, write_shifted, write_shifted_frames
from tui_stack.pipeline.stack import combine_frames, combine_params, exposure_times, frame_weights, header_number
from tui_stack.pipeline.state import UNMEASURABLE, CombinedResult, FrameResult, Progress, RunState, measurable, noop

__all__ = [
    "CombinedResult", "FrameResult", "Progress", "RunState", "UNMEASURABLE", "assess", "choose_reference",
    "combine_frames", "combine_params", "comparison_star_at", "comparison_stars", "excluded_indices", "exposure_times", "frame_weights",
    "header_number", "measurable", "measure_frame", "measure_scales", "noop", "prepare_output_dir", "prepared_frame",
    "reference_star", "register", "report_dict", "resolve_reference", "run", "scan", "select", "sky_subtracted",
    "suggested_reference", "write_combined", "write_outputs", "write_shifted", "write_shifted_frames",
]


def _output_names(out: Path) -> set:
    return {p.name for p in out.iterdir() if p.name.startswith(("s", "combined_", "report.json"))}


def run(cfg: Config, progress: Progress = noop) -> RunState:
    """The whole pipeline, writing the outputs of SPEC.md.

    If it stops half-way (Ctrl-C, disk full, bad frame), the outputs it had written are
    removed again: what is left in the output directory is a whole run or nothing new.
    """
    state = RunState(config=cfg)
    state.set_files(select(cfg))
    out = prepare_output_dir(state)
    before = _output_names(out)
    inputs = {p.name for p in state.files if p.parent == out}
    tmp = None
    engine = None
    if cfg.compute.scheduler != compute.current().name:
        engine = compute.open_compute(cfg.compute.scheduler, cfg.compute.address, cfg.compute.workers)
    try:
        with compute.using(engine or compute.current()):
            tmp = _run_steps(state, out, progress)
    except BaseException:
        for name in _output_names(out) - before - inputs:
            (out / name).unlink(missing_ok=True)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if engine is not None:
            engine.close()
    return state


def _run_steps(state: RunState, out: Path, progress: Progress):
    cfg = state.config
    tmp = None
    try:
        choose_reference(state, progress)
        register(state, progress)
        if cfg.output.write_shifted:
            shifted_dir = out
        elif cfg.shift.mode == "subpixel":
            tmp = Path(tempfile.mkdtemp(prefix=".tui-stack-tmp-", dir=out))
            shifted_dir = tmp
        else:
            shifted_dir = None
        # Shifted frames are written in the photometry pass: one read of each frame, not two.
        measure_scales(state, progress, shifted_dir)
        combine_frames(state, cfg.combine.method, shifted_dir, progress)
        write_outputs(state, out, progress, shifted_written=True)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp
