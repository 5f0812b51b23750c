"""The short rich summary that `run` and `demo --headless` print."""

from __future__ import annotations


from tui_stack.fmt import fmt as _fmt


def _safe(text) -> str:
    """A name shown as it is (no rich markup: '[red]' in a name is a name) with control
    characters escaped (tui_stack.safetext)."""
    from rich.markup import escape

    from tui_stack import safetext

    return escape(safetext.terminal(text))


NAME_WIDTH = 24  # a longer file name is cut in the middle: the numbers keep their columns at 80


def print_summary(state, console) -> None:
    from rich import box
    from rich.table import Table

    from tui_stack import safetext

    t = Table(title=f"{len(state.frames)} frames, reference {_safe(state.files[state.ref_index].name)}",
              title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    for col in ("#", "file", "shift x", "shift y", "sky", "scale", "used"):
        t.add_column(col, no_wrap=True, justify="left" if col == "file" else "right")
    t.add_column("flags", ratio=1, overflow="fold")  # a long flag goes on below, never cut
    for i, fr in enumerate(state.frames):
        t.add_row(
            str(i), safetext.markup_name(fr.name, NAME_WIDTH, suffix=True), _fmt(fr.shift_x), _fmt(fr.shift_y), _fmt(fr.sky, ".0f"), _fmt(fr.scale, ".4f"), "yes" if fr.used else "no", " ".join(fr.flags),
        )
    console.print(t)
    for path, why in getattr(state, "skipped", ()):
        console.print(f"{safetext.terminal(path.name)}: excluded and unreadable, skipped ({safetext.terminal(why)})",
                      markup=False)
    for note in getattr(state, "output_notes", ()):
        console.print(f"{safetext.terminal(str(state.config.output.directory))}: {safetext.terminal(note)}", markup=False)
    for fr in state.frames:
        if fr.message:  # what to do about a frame left out, where the flag alone does not say
            console.print(f"{fr.name}: {fr.message}", markup=False)
    calib = getattr(state, "calibration", None)
    if calib is not None:  # [calibrate]: which masters, how many pixels masked in every light
        parts = [f"{m.kind}{' ' + m.filter if m.kind == 'flat' and m.filter else ''} ({len(m.files)})" for m in calib.masters]
        console.print(f"calibrated: {_safe(', '.join(parts))}; {calib.report()['masked_pixels']} pixels masked (hot, dead)")
    for c in state.combined:
        r = Table(title=f"combined ({c.method})", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
        for col in ("file", "frames", "median", "std [{}:{},{}:{}]".format(*c.stats.region), "flux / ref"):
            r.add_column(col, no_wrap=True)
        r.add_row(
            _safe(c.path.name if c.path else "-"), str(c.n_frames), _fmt(c.stats.median, ".3f"),
            _fmt(c.stats.std, ".3f"), _fmt(c.photometry.ratio_median, ".4f"),
        )
        console.print(r)
    if state.combined and state.combined[-1].path is not None:
        console.print(f"outputs in {_safe(state.combined[-1].path.parent)}")
