"""The guided wizard: five screens from files to combined image, keyboard only, made for SSH."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, ProgressBar, Static

from tui_stack import safetext
from tui_stack.config import Config, load_config
from tui_stack.errors import InputError
from tui_stack.tui.state import WizardState

STEPS = ("Files", "Reference", "Shifts", "Scales", "Combine")


def crash_log(exc: BaseException) -> Path | str:
    """The traceback in a new private file of the user's state directory (tui_stack.crashlog)."""
    from tui_stack import crashlog

    return crashlog.write(exc) or "nowhere (the state directory is not writable)"


def fixed_table(id: str, columns):
    """A row-cursor table with fixed column widths: no reflow (and no extra bytes over SSH)
    when rows arrive."""
    from textual.widgets import DataTable

    table = DataTable(id=id, cursor_type="row", classes="small-table")
    for label, width in columns:
        table.add_column(label, width=width)
    return table


class StepBar(Static):
    """Where the user is: ' 1 Files > 2 Reference > ...' with the current step highlighted."""

    def __init__(self, step: int):
        parts = []
        for i, name in enumerate(STEPS):
            label = f" {i + 1} {name} "
            parts.append(f"[reverse bold]{label}[/]" if i == step else f"[dim]{label}[/]" if i > step else label)
        super().__init__(" > ".join(parts))


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Static("\n[b]y[/] yes    [b]n[/] no")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class WizardScreen(Screen):
    """A step of the wizard: step bar, body, progress line, status line, footer."""

    STEP = 0
    BINDINGS = [
        Binding("n,ctrl+n", "next", "Next"),
        Binding("b,ctrl+b", "back", "Back"),
    ]

    @property
    def ws(self) -> WizardState:
        return self.app.ws

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP)
        yield from self.compose_body()
        yield ProgressBar(id="progress", show_eta=False, classes="idle")
        yield Static("", id="status", classes="status", markup=False)
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def status(self, text: str, error: bool = False) -> None:
        st = self.query_one("#status", Static)
        st.update(safetext.markup(text))  # messages name files: any name is shown as it is
        st.set_class(error, "error")

    # ------------------------------------------------------------ long work in a thread

    def run_task(self, label: str, fn: Callable, done: Callable | None = None) -> None:
        """Run fn(progress) in a worker thread; progress(stage, k, n) drives the bar; errors become
        messages (a bug also writes a log); done(result) runs on the UI thread."""
        bar = self.query_one("#progress", ProgressBar)
        bar.remove_class("idle")
        bar.update(total=100, progress=0)
        self.status(f"{label}…")
        last = [-1]

        def progress(stage, k, n):
            worker = self._worker
            if worker is not None and worker.is_cancelled:
                from tui_stack.core.combine import Cancelled

                raise Cancelled()
            pct = int(100 * k / max(n, 1))
            if pct != last[0]:  # at most 101 repaints per step: cheap over SSH
                last[0] = pct
                self.app.call_from_thread(self._progress, stage, pct)

        def work():
            from tui_stack import compute
            from tui_stack.core.combine import Cancelled

            try:
                with compute.using(self.app.engine()):
                    result = fn(progress)
            except Cancelled:
                self.app.call_from_thread(self._finish, None, f"{label}: cancelled", False)
                return
            except InputError as exc:
                self.app.call_from_thread(self._finish, None, str(exc), True)
                return
            except Exception as exc:  # a bug: keep the app alive, keep the evidence
                log = crash_log(exc)
                self.app.call_from_thread(
                    self._finish, None, f"internal error ({type(exc).__name__}: {exc}); details in {log}", True
                )
                return
            self.app.call_from_thread(self._finish, (done, result), f"{label}: done", False)

        self._worker = self.run_worker(work, thread=True, exclusive=True, group="step")

    _worker = None

    def _progress(self, stage: str, pct: int) -> None:
        self.query_one("#progress", ProgressBar).update(progress=pct)
        dashboard = self.app.dashboard
        self.status(f"{stage}… {pct}%" + (f"  Dask dashboard: {dashboard}" if dashboard else ""))

    def _finish(self, payload, message: str, error: bool) -> None:
        self._worker = None
        self.app.save_session(self.STEP)
        self.query_one("#progress", ProgressBar).add_class("idle")
        self.status(message, error)
        if error:
            self.notify(safetext.terminal(message), severity="error", timeout=12, markup=False)
        if payload is not None:
            done, result = payload
            if done is not None:
                done(result)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def action_cancel_task(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    # ------------------------------------------------------------ navigation

    def can_leave(self) -> bool:
        """Checked before going to the next step; say why not with self.status."""
        return True

    def action_next(self) -> None:
        if self.busy:
            self.status("still working; wait or press escape to cancel")
            return
        if self.STEP + 1 < len(STEPS) and self.can_leave():
            self.app.goto(self.STEP + 1)

    def action_back(self) -> None:
        if self.STEP > 0 and not self.busy:
            self.app.goto(self.STEP - 1)


class StackApp(App):
    TITLE = "tui-stack"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "request_quit", "Quit"),
        Binding("ctrl+c,ctrl+q", "request_quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, directory: Path, config: Config | None = None, resume: dict | None = None, engine=None):
        super().__init__()
        if config is None:
            # a fresh start: the suggested reference frame, stars picked on the screens
            # outputs go where the user is, not into the data directory (often an archive)
            config = Config()
            config.set("input", "directory", Path(directory).resolve())
            config.set("output", "directory", Path.cwd() / "tui-stack-out")
            config.set("reference", "frame", "auto")
        self.ws = WizardState(config=config, resume=resume)
        cfg = self.ws.config
        self._engine = ((cfg.compute.scheduler, cfg.compute.address, cfg.compute.workers), engine) if engine is not None else None
        self._given_engine = engine  # closed by whoever opened it

    def engine(self):
        """Where the long work runs ([compute] of the config). A Dask engine is opened by
        run_app before the app starts (its worker processes cannot be started once Textual
        holds the terminal's stderr); anything else is opened here on first use."""
        from tui_stack import compute

        cfg = self.ws.config
        want = (cfg.compute.scheduler, cfg.compute.address, cfg.compute.workers)
        if self._engine is None or self._engine[0] != want:
            if self._engine is not None:
                self._engine[1].close()
            self._engine = (want, compute.open_compute(*want))
        return self._engine[1]

    def on_unmount(self) -> None:
        if self._engine is not None and self._engine[1] is not self._given_engine:
            self._engine[1].close()

    @property
    def dashboard(self) -> str | None:
        return getattr(self._engine[1], "dashboard", None) if self._engine else None


    def on_mount(self) -> None:
        import asyncio

        from tui_stack import signals
        from tui_stack.tui.files import FilesScreen

        # A dropped SSH link (SIGHUP) or a kill (SIGTERM) ends the wizard as `q` would: the
        # session is already saved, the screens' scratch files go; exit 129 / 143.
        loop = asyncio.get_running_loop()
        for sig in signals.HANDLED:
            loop.add_signal_handler(sig, self._signalled, sig)

        self.install_screen(FilesScreen(), name=STEPS[0])
        self.push_screen(STEPS[0])

    def _signalled(self, sig: int) -> None:
        import asyncio

        from tui_stack import signals

        loop = asyncio.get_running_loop()
        for s in signals.HANDLED:
            loop.remove_signal_handler(s)
        self.signalled = sig
        if sig == signals.signal.SIGHUP:
            signals.detach_stdio()  # the terminal is gone: Textual's last writes go nowhere, not to EIO
        signals.exit_soon(128 + sig)
        self.exit(return_code=128 + sig)

    signalled = None

    def _screen_for(self, step: int) -> str:
        """Screens are built when first visited: the first one paints without numpy's import."""
        name = STEPS[step]
        if not self.is_screen_installed(name):
            from tui_stack.tui.combine import CombineScreen
            from tui_stack.tui.reference import ReferenceScreen
            from tui_stack.tui.scales import ScalesScreen
            from tui_stack.tui.shifts import ShiftsScreen

            cls = {1: ReferenceScreen, 2: ShiftsScreen, 3: ScalesScreen, 4: CombineScreen}[step]
            self.install_screen(cls(), name=name)
        return name

    def _handle_exception(self, error: Exception) -> None:
        """A bug: keep the traceback in a log file and say where, instead of printing it."""
        log = crash_log(error)
        self._return_code = 1
        if self._exception is None:  # the test pilot re-raises it
            self._exception = error
            self._exception_event.set()
        self.exit(return_code=1, message=f"tui-stack: internal error ({type(error).__name__}: {error}); details in {log}")

    def goto(self, step: int) -> None:
        self.switch_screen(self._screen_for(step))
        self.save_session(step)

    def save_session(self, step: int) -> None:
        from tui_stack.tui import session

        if self.ws.resume is None:  # not while a saved session is being restored
            session.save(self.ws, step)

    def action_request_quit(self) -> None:
        if not self.ws.dirty:
            self.exit(0)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.exit(0)

        self.push_screen(ConfirmScreen("Measured results are not written yet.\nQuit and lose them?"), answer)


def run_app(directory: Path, config_path: Path | None = None, resume: bool = False) -> int:
    from tui_stack import rundir

    rundir.clean_scratch()
    saved = None
    if resume:
        import tomllib

        from tui_stack.config import config_from_dict
        from tui_stack.tui import session

        saved = session.load()
        if saved is None:
            raise InputError(f"no saved session to resume ({session.session_path()} not found)")
        try:
            config = config_from_dict(tomllib.loads(saved["config"]))
        except InputError as exc:
            raise InputError(f"{session.session_path()}: saved session's config: {exc}") from None
    else:
        config = load_config(config_path) if config_path else None  # it names its own directory
    engine = None
    if config is not None and config.compute.scheduler != "local":
        from tui_stack import compute

        engine = compute.open_compute(config.compute.scheduler, config.compute.address, config.compute.workers)
    try:
        app = StackApp(Path(directory), config, resume=saved, engine=engine)
        app.run()
        return app.return_code or 0
    finally:
        if engine is not None:
            engine.close()
