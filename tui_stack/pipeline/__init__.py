"""The lab's steps over one run state: select, reference, register, shift, scale, stack, outputs,
report. `tui-stack run` calls `run`; the wizard calls the steps one by one on the same RunState,
and `tui-stack combine` the stack step's parameters and weights, so every decision has one owner:

- which files: select.select (and select.scan for the wizard's table, with the same filter rule)
- which reference frame and star: reference.choose_reference, reference.reference_star
- which frames are used: register (flags) and RunState.set_used (the user's choice)
- which parameters are valid: config.SCHEMA and core.combine_params.PARAMS
"""

from __future__ import annotations

from tui_stack import compute
from tui_stack.config import Config
from tui_stack.errors import InputError
from tui_stack.pipeline import calibration
from tui_stack.pipeline.outputs import other_input, planned_outputs, write_combined, write_outputs
from tui_stack.pipeline.reference import assess, choose_reference, measure_frame, reference_star, sky_subtracted, \
    suggested_reference
from tui_stack.pipeline.register import register
from tui_stack.pipeline.report import report_dict
from tui_stack.pipeline.scale import comparison_star_at, comparison_stars, measure_scales
from tui_stack.pipeline.select import excluded_indices, resolve_reference, scan, select
from tui_stack.pipeline.shift import prepared_frame, write_shifted, write_shifted_frames
from tui_stack.pipeline.stack import changed_since, combine_frames, combine_params, exposure_times, frame_weights, header_number
from tui_stack.pipeline.state import UNMEASURABLE, CombinedResult, FrameResult, Progress, RunState, measurable, noop

__all__ = [
    "CombinedResult", "FrameResult", "Progress", "RunState", "UNMEASURABLE", "assess", "choose_reference",
    "combine_frames", "combine_params", "comparison_star_at", "comparison_stars", "excluded_indices", "exposure_times", "frame_weights",
    "header_number", "measurable", "measure_frame", "measure_scales", "noop", "other_input", "planned_outputs", "prepared_frame",
    "reference_star", "register", "report_dict", "resolve_reference", "run", "scan", "select", "sky_subtracted",
    "suggested_reference", "write_combined", "write_outputs", "write_shifted", "write_shifted_frames",
]


def run(cfg: Config, progress: Progress = noop) -> RunState:
    """The whole pipeline, writing the outputs of SPEC.md.

    Sizes are checked before a pixel is read (tui_stack.limits). The outputs are staged inside
    the output directory, under its lock, and put in place as one set at the end
    (tui_stack.rundir): if the run stops half-way (a signal, disk full, a bad frame) the
    directory holds what it held before, and no other file in it is touched.
    """
    from tui_stack import limits, rundir

    state = RunState(config=cfg)
    skipped = []
    state.set_files(select(cfg, skipped))
    state.skipped = skipped
    ref = resolve_reference(cfg, state.files) if cfg.reference.frame != "auto" else 0
    need = limits.check_run(cfg, state.files, state.files[ref])
    with rundir.OutputDir(cfg.output.directory, "tui-stack run", protect=state.files) as od:
        state.output_notes = [r for r in od.recovered if r.startswith("could not")]
        od.check_names(planned_outputs(state))
        other = other_input(state)
        if other is not None:  # a rerun replaces its own set; another data set's is not this run's to drop
            raise InputError(f"{cfg.output.directory} holds the results of {other}: give another [output] directory "
                             "(or --out), or remove its report.json to replace them")
        od.check_space(need)
        engine = None
        if cfg.compute.scheduler != compute.current().name:
            engine = compute.open_compute(cfg.compute.scheduler, cfg.compute.address, cfg.compute.workers)
        try:
            with compute.using(engine or compute.current()):
                _run_steps(state, od, progress)
        finally:
            if engine is not None:
                engine.close()  # before the staging folder goes: no worker still writing into it
        od.commit()
    for c in state.combined:
        c.path = od.final(c.path.name)
    return state


def _run_steps(state: RunState, od, progress: Progress) -> None:
    cfg = state.config
    if cfg.calibrate.any:  # masters first, staged with the outputs; then only the lights' corrections kept
        calibration.calibrate(state, progress)
        calibration.write_masters(state, od.staging)
        calibration.release(state)
    choose_reference(state, progress)
    register(state, progress)
    # Shifted frames are written (when asked) in the photometry pass: one read of each frame.
    # The combine reads the original frames and resamples inside its blocks: no scratch files
    # (quarter turns and mirrors in integer mode too: copied exactly inside the blocks).
    shifted_dir = od.staging if cfg.output.write_shifted else None
    measure_scales(state, progress, shifted_dir)
    combine_frames(state, cfg.combine.method, None, progress)
    write_outputs(state, od.staging, progress, shifted_written=True)
