"""The Files screen's calibration panel: the frames found grouped by type (IMAGETYP) and filter,
the proposed bias, dark and flat sets, and once built each master's statistics and a preview.

Hidden while the directory holds no calibration frames. The Files screen calls `scanned`
after each scan, `ready` before leaving, and forwards three keys: c (build the masters),
v (preview the next master), k (calibration on/off).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from tui_stack.errors import InputError
from tui_stack.fmt import fmt
from tui_stack.tui.preview import ImageView

CSS = """
CalibrationPanel { height: 11; display: none; border-top: solid $primary-darken-2; }
CalibrationPanel.shown { display: block; }
CalibrationPanel #cal-groups { height: 3; }
CalibrationPanel Horizontal { height: 1fr; }
CalibrationPanel #cal-masters { width: 1fr; }
CalibrationPanel #cal-preview { width: 30; height: 1fr; }
"""


def group_line(proposal) -> str:
    """'light V 30s x16 | bias x50 | dark 30s x20 | flat V 2s x20' (every group found)."""
    parts = []
    for g in proposal.groups:
        label = g["type"] + (f" {g['filter']}" if g["filter"] else "")
        if g["exptime"] is not None and g["type"] != "bias":
            label += f" {fmt(g['exptime'], 'g')}s"
        parts.append(f"{label} x{len(g['files'])}")
    return " | ".join(parts)


def sets_line(cfg) -> str:
    c = cfg.calibrate
    n = lambda v: 0 if not v else (len(v) if isinstance(v, list) else v)  # noqa: E731
    extra = "".join(f", {k} {v}" for k, v in (("overscan", c.overscan), ("trim", c.trim)) if v)
    return (f"calibrate with: bias {n(c.bias)}, dark {n(c.dark)}, flat {n(c.flat)} "
            f"({c.method}{'' if c.method in ('average', 'median') else f' {c.sigma:g}σ'}{extra})")


class CalibrationPanel(Vertical):
    DEFAULT_CSS = CSS

    def __init__(self, **kw):
        super().__init__(**kw)
        self.proposal = None
        self.saved_sets = None  # the sets while calibration is switched off
        self.calib = None  # core.calibrate.Calibration once built
        self.shown_master = 0

    def compose(self) -> ComposeResult:
        yield Static("", id="cal-groups", markup=False)
        with Horizontal():
            yield Static("", id="cal-masters", markup=False)
            view = ImageView(id="cal-preview")
            view.can_focus = False  # a picture of the master: nothing to do there with keys
            yield view

    # ------------------------------------------------------------ the screen's hooks

    def scanned(self, screen) -> None:
        """After a scan: group what was found and, the first time, propose the sets and narrow
        the lights to their IMAGETYP (and filter) so the table lists lights only."""
        from tui_stack.core import calibrate as cal

        ws = screen.ws
        cfg = ws.config
        if self.proposal is None:
            from tui_stack.pipeline import calibration

            frames = [(i.path, i.header, i.exptime, i.filter) for i in ws.infos if not i.error]
            try:  # only sets the masters' method can combine (as `n` would build them)
                params = calibration.options(cfg).flat_params
            except InputError:
                params = None  # said when the masters are built
            prop = cal.propose(frames, params)
            if not any(g["type"] in cal.KINDS for g in prop.groups):
                self.set_class(False, "shown")
                return
            self.proposal = prop
            if not cfg.calibrate.any:
                for kind in cal.KINDS:
                    files = getattr(prop, kind)
                    setattr(cfg.calibrate, kind, [str(p) for p in files] or None)
                cfg.calibrate.overscan, cfg.calibrate.trim = prop.overscan, prop.trim
            lights = set(prop.lights)
            types = {str(i.header.get("IMAGETYP", "")).strip() for i in ws.infos if i.path in lights}
            filters = {i.filter for i in ws.infos if i.path in lights}
            if len(types) == 1 and "" not in types:
                select = {"IMAGETYP": types.pop()}
                if len({i.filter for i in ws.infos if cal.classify(i.header) in ("light", "")}) > 1:
                    select["FILTER"] = filters.pop()
                from textual.widgets import Input

                screen.query_one("#filter", Input).value = ", ".join(f"{k}={v}" for k, v in select.items())
                self._show(screen)
                screen.call_after_refresh(screen.action_rescan)  # the table: lights only
                return
            prop.notes.append("the lights have no common IMAGETYP: narrow the glob to the lights")
        self._show(screen)

    def _show(self, screen) -> None:
        self.set_class(True, "shown")
        text = group_line(self.proposal) + "\n" + (sets_line(screen.ws.config) if screen.ws.config.calibrate.any
                                                   else "calibration off (k: on)")
        if self.proposal.notes:
            text += "\n" + "; ".join(self.proposal.notes)
        self.query_one("#cal-groups", Static).update(text)
        if self.calib is None:
            self.query_one("#cal-masters", Static).update("c: build the masters and see them here")

    @staticmethod
    def _none_found(screen) -> str:
        """Calibration frames are looked for among the files the header filter keeps."""
        select = screen.ws.config.input.select
        if not select:
            return "no bias, dark or flat frames in this directory"
        shown = ", ".join(f"{k}={v}" for k, v in select.items())
        return f"no bias, dark or flat frames pass the filter {shown} (/ edits it)"

    def ready(self, screen, then) -> bool:
        """Masters built for the current sets (or none asked for); else build them, then `then`."""
        from tui_stack.pipeline import calibration

        cfg = screen.ws.config
        if not cfg.calibrate.any or calibration.active(cfg) is not None:
            return True
        self.build(screen, then)
        return False

    def build(self, screen, then=None) -> None:
        from tui_stack import pipeline
        from tui_stack.pipeline import calibration

        ws = screen.ws
        if self.proposal is None:
            screen.status(self._none_found(screen))
            return
        if not ws.config.calibrate.any:
            screen.status("no calibration frames chosen (k: on)")
            return
        cfg = ws.config_for_run()
        lights = ws.selected_files()

        def work(progress):
            state = pipeline.RunState(config=cfg, files=lights)
            try:
                return calibration.calibrate(state, progress)
            except InputError as exc:  # a set that cannot be used: say how to go on without it
                raise InputError(f"{exc}; k turns calibration off") from None

        def done(calib):
            self.calib = calib
            self.shown_master = 0
            self.show_masters()
            if then is not None:
                then()

        screen.run_task("building the masters", work, done)

    def toggle(self, screen) -> None:
        from tui_stack.core import calibrate as cal

        if self.proposal is None:
            screen.status(self._none_found(screen))
            return
        c = screen.ws.config.calibrate
        if c.any:
            self.saved_sets = {k: getattr(c, k) for k in cal.KINDS}
            for k in cal.KINDS:
                setattr(c, k, None)
        elif self.saved_sets:
            for k, v in self.saved_sets.items():
                setattr(c, k, v)
        screen.ws.run = None
        self.calib = None
        self._show(screen)
        self.query_one("#cal-preview", ImageView).set_image(None)
        screen.status("calibration " + ("on" if c.any else "off"))

    def next_master(self) -> None:
        if self.calib is not None and self.calib.masters:
            self.shown_master = (self.shown_master + 1) % len(self.calib.masters)
            self.show_masters()

    # ------------------------------------------------------------ what is shown

    def show_masters(self) -> None:
        masters = self.calib.masters if self.calib is not None else []
        lines = [f"  {'master':<11}{'n':>4}{'level':>10}{'noise':>9}{'masked':>8}"]
        for k, m in enumerate(masters):
            s = m.summary()
            name = m.kind + (f" {m.filter}" if m.kind == "flat" else "") + (f" {fmt(m.exptime, 'g')}s" if m.kind == "dark" else "")
            masked = s.get("hot_pixels", s.get("dead_pixels", ""))
            lines.append(f"{'>' if k == self.shown_master else ' '} {name:<11}{s['n_frames']:>4}"
                         f"{fmt(s['level'], '.5g', ''):>10}{fmt(s['noise'], '.3g', ''):>9}{masked!s:>8}")
        lines.append("v: next master  k: calibration on/off")
        self.query_one("#cal-masters", Static).update("\n".join(lines))
        view = self.query_one("#cal-preview", ImageView)
        if masters and masters[self.shown_master].data is not None:
            view.set_image(masters[self.shown_master].data)
        else:
            view.set_image(None)
