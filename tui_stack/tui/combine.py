"""Step 5: combine method and parameters, run with progress and cancel, results side by side, write."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Static

from tui_stack import safetext
from tui_stack.core.combine import METHODS
from tui_stack.core.io import resolved
from tui_stack.errors import InputError
from tui_stack.fmt import fmt
from tui_stack.tui.common import Field, PreviewScreen, fixed_table
from tui_stack.tui.preview import ImageView


class CombineScreen(PreviewScreen):
    STEP = 4
    KEYS = "[b]m[/] method  [b]tab[/] fields  [b]c[/] combine  [b]w[/] write"
    HELP = ("Combine the shifted, scaled frames. m cycles the method; tab reaches nlow, nhigh, sigma, the "
            "results table, the photometry table and the output directory. In a field every letter, ? "
            "and q included, is typed into it (the key line shows the field's keys): enter applies it, escape "
            "or tab leaves it, F1 is help. "
            "c combines (escape cancels); each method's result is kept side by side "
            "(flux/ref: median photometry ratio against the reference); w writes the outputs and "
            "tui-stack.toml, from which `tui-stack run` gives the same result. With few frames IRAF's "
            "sigclip (sigma from the pixel's own values) can hardly reject: one outlier among 10 is at most "
            "3 of those sigmas from the median, so sigma 3 keeps it; sigmaclip and avsigclip estimate sigma "
            "otherwise and reject it.")
    BINDINGS = [
        Binding("m", "method", "Next combine method"),
        Binding("c", "combine", "Combine with the method and parameters shown"),
        Binding("w", "write", "Write the outputs and tui-stack.toml"),
    ]

    def compose_body(self) -> ComposeResult:
        cfg = self.ws.config
        with Horizontal(classes="params"):
            yield Static(f"method [b]{cfg.combine.method}[/] (m)", id="method")
            yield Label("nlow")
            yield Field(str(cfg.combine.nlow), id="nlow", type="integer")
            yield Label("nhigh")
            yield Field(str(cfg.combine.nhigh), id="nhigh", type="integer")
            yield Label("sigma")
            yield Field(str(cfg.combine.sigma), id="sigma", type="number")
        with Horizontal(classes="main"):
            yield ImageView(id="preview", classes="preview")
            with Vertical(classes="side-wide"):
                # every method's name whole, with the * of a result from before a resume
                yield fixed_table("results", (("method", max(map(len, METHODS)) + 1), ("n", 3), ("median", 8), ("std", 8), ("flux/ref", 8)))
                yield fixed_table("phot", (("star", 4), ("ref flux", 10), ("combined", 10), ("ratio", 7)))
                yield Field(str(cfg.output.directory), id="outdir", placeholder="output directory")

    def on_screen_resume(self) -> None:
        if self.back_from_dialog():
            return
        self._method_label()
        self.query_one("#results", DataTable).focus()
        self._fill()
        self.restore_ui()
        if self.ws.run is None or not self.ws.run.comparison_stars:
            self.status("measure the scales first (b: back)", error=True)
        else:
            self.status(f"method {self.ws.config.combine.method}: c combines, w writes; ? lists every key")

    def _method_label(self) -> None:
        self.query_one("#method", Static).update(f"method [b]{self.ws.config.combine.method}[/] (m)")

    def action_method(self) -> None:
        cfg = self.ws.config
        cfg.combine.method = METHODS[(METHODS.index(cfg.combine.method) + 1) % len(METHODS)]
        self._method_label()
        self.save_soon()

    def _read_params(self) -> bool:
        from tui_stack.config import parse_value
        from tui_stack.errors import ConfigError

        cfg = self.ws.config
        try:  # the config's own checks, as for a config file
            for key in ("nlow", "nhigh", "sigma"):
                cfg.set("combine", key, parse_value(self.query_one(f"#{key}", Input).value))
        except ConfigError as exc:
            self.status(str(exc).removeprefix("config: "), error=True)
            return False
        text = self.query_one("#outdir", Input).value.strip()
        if not text:  # not the current directory, silently: a user types where the outputs go
            self.status("type an output directory (tab to the field under the tables)", error=True)
            return False
        try:
            cfg.output.directory = resolved(Path(text).expanduser())
        except InputError as exc:
            self.status(str(exc), error=True)
            return False
        return True

    def on_input_submitted(self, event) -> None:
        """enter in a field applies it: the config's checks speak now, not at c or w."""
        if not self._read_params():
            event.prevent_default()  # stays in the field to mend it
            return
        c = self.ws.config.combine
        self.status(f"nlow {c.nlow}, nhigh {c.nhigh}, sigma {c.sigma:g}, output "
                    f"{self.ws.config.output.directory}/: c combines, w writes")

    def action_combine(self) -> None:
        from tui_stack import pipeline

        ws = self.ws
        if ws.run is None or not ws.run.comparison_stars or not self._read_params():
            return
        run = ws.run
        run.config = ws.config_for_run()
        method = ws.config.combine.method

        def work(progress):
            return pipeline.combine_frames(run, method, None, progress)  # resampled inside its blocks

        self.run_task(f"combining ({method})", work, self._combined)

    def _combined(self, result) -> None:
        self.ws.dirty = True
        self._fill(result.method)
        self.preview().set_image(result.data)
        n, p = result.n_frames, result.params
        if p is not None and result.method == "minmax" and p.nlow == p.nhigh and 0 < n - p.nlow - p.nhigh <= 2:
            kept = n - p.nlow - p.nhigh
            self.status(f"combining (minmax): done; the middle {kept} of {n} kept, as the median would")
        else:  # the std column's region (SPEC: the lab's [400:500,400:500] where it fits)
            self.status(f"combining ({result.method}): done; std of [{'{}:{},{}:{}'.format(*result.stats.region)}]; "
                        "w writes")

    def _fill(self, method: str | None = None) -> None:
        run = self.ws.run
        if run is None:
            return
        table = self.query_one("#results", DataTable)
        table.clear()
        for c in run.combined:
            table.add_row(c.method, str(c.n_frames), fmt(c.stats.median, ".3f"), fmt(c.stats.std, ".3f"),
                          fmt(c.photometry.ratio_median, ".4f"), key=c.method)
        done = {c.method for c in run.combined}
        for c in self.ws.restored_combined:  # from before a resume: numbers only, c recomputes
            if c["method"] not in done:
                table.add_row(f"{c['method']}*", str(c["n_frames"]), fmt(c["median"], ".3f"), fmt(c["std"], ".3f"),
                              fmt(c["ratio_median"], ".4f"), key=f"saved-{c['method']}")
        chosen = [c for c in run.combined if c.method == method] or run.combined[-1:]
        if chosen:
            self._fill_phot(chosen[0])

    def _fill_phot(self, c) -> None:
        phot = self.query_one("#phot", DataTable)
        phot.clear()
        for k, (rf, cf) in enumerate(zip(c.photometry.reference_flux, c.photometry.combined_flux)):
            ratio = cf / rf if rf and rf == rf and rf > 0 else float("nan")
            phot.add_row(str(k), fmt(rf, ".0f"), fmt(cf, ".0f"), fmt(ratio, ".4f"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        run = self.ws.run
        if event.data_table.id != "results" or event.row_key is None or run is None:
            return
        for c in run.combined:
            if c.method == event.row_key.value:
                self._fill_phot(c)
                view = self.preview()
                view.set_image(c.data, keep_view=view.image is not None and view.image.shape == c.data.shape)

    def action_write(self, replace: bool = False) -> None:
        """w: write the outputs; replace: the user said yes to replacing another data set's."""
        from tui_stack import pipeline
        from tui_stack.core.io import write_text_atomic

        ws = self.ws
        run = ws.run
        if run is None or not run.combined:
            self.status("combine first (c)", error=True)
            return
        if not self._read_params():
            return
        run.config = ws.config_for_run()
        changed = pipeline.changed_since(run, run.config)
        if changed:
            method, key = changed[0]
            self.status(f"{key} is not what the {method} stack was made with: c combines again", error=True)
            return
        other = None if replace else pipeline.other_input(run)
        if other is not None:  # another night's results: rundir would replace them as this job's own
            self.ask(f"{safetext.markup(run.config.output.directory)} holds the results of {safetext.markup(other)}."
                     "\nReplace them with this set? (n: type another output directory in the field under the "
                     "tables; tab reaches it)",
                     lambda yes: self.action_write(replace=True) if yes else self.status(
                         "not written: type another output directory (tab to the field under the tables), then w",
                         error=True))
            return
        if ws.config.combine.method not in [c.method for c in run.combined]:
            ws.config.combine.method = run.combined[-1].method
            self._method_label()

        def work(progress):
            from tui_stack import rundir

            # staged and put in place as one set, under the output directory's lock (as `run`)
            with rundir.OutputDir(run.config.output.directory, "tui-stack wizard", protect=run.files) as od:
                methods = [c.method for c in run.combined]
                od.check_names(pipeline.planned_outputs(run, methods))
                pipeline.write_outputs(run, od.staging, progress)
                od.commit()
            for c in run.combined:
                c.path = od.final(c.path.name)
            # the config is not one of the outputs: `tui-stack run` from it must not remove it
            # when it puts its own set in place; a new `w` replaces it, as a save does
            write_text_atomic(od.directory / "tui-stack.toml", ws.config_toml())
            return od.directory

        self.run_task("writing outputs", work, self._written)

    def _written(self, out: Path) -> None:
        self.ws.dirty = False
        self.ws.written_to = out
        self.status(f"written to {out}/ with tui-stack.toml (for tui-stack run); q quits")
