"""The guided wizard: five screens from files to combined image, keyboard only, made for SSH."""

from __future__ import annotations

import sys

from pathlib import Path
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding

from tui_stack.config import Config, load_config
from tui_stack.core.io import resolved
from tui_stack.errors import InputError
from tui_stack.tui.common import STEPS, ConfirmScreen, crash_log, screen_bindings
from tui_stack.tui.state import WizardState


class StackApp(App):
    TITLE = "tui-stack"
    CSS_PATH = "app.tcss"
    ENABLE_COMMAND_PALETTE = True  # ctrl+p: every action of the screen by name
    BINDINGS = [
        Binding("q", "request_quit", "Quit (asks if measured work is not written)"),
        Binding("ctrl+q", "request_quit", show=False, priority=True),
        # Ctrl-C quits as `q` does (asking first if work is not written), exit code 130 as SPEC says
        Binding("ctrl+c", "request_quit(130)", "Quit as q does, exit code 130 (interrupted)", show=False,
                priority=True),
    ]

    def __init__(self, directory: Path, config: Config | None = None, resume: dict | None = None, engine=None):
        super().__init__()
        if config is None:
            # a fresh start: the suggested reference frame, stars picked on the screens
            # outputs go where the user is, not into the data directory (often an archive)
            config = Config()
            config.set("input", "directory", resolved(directory))
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

    @property
    def dashboard(self) -> str | None:
        return getattr(self._engine[1], "dashboard", None) if self._engine else None


    def get_driver_class(self):
        """Textual's terminal driver, sending only the cells that changed (tui/slim.py);
        TUI_STACK_FULL_REPAINT=1 sends what Textual writes, as it is (for comparison)."""
        import os

        from textual.drivers.linux_driver import LinuxDriver

        from tui_stack.tui.slim import slim_driver

        base = super().get_driver_class()
        if os.environ.get("TUI_STACK_FULL_REPAINT") or not issubclass(base, LinuxDriver):
            return base
        return slim_driver(base)

    def get_system_commands(self, screen) -> Iterable[SystemCommand]:
        """The command palette: every action of the wizard screen by its description."""
        target = screen if hasattr(screen, "STEP") else None
        if target is not None:
            for b in screen_bindings(target):
                owner = self if b in type(self).BINDINGS else target

                def run(action=b.action, owner=owner):
                    self.call_later(self.run_action, action, owner)

                yield SystemCommand(b.description, f"key {self.get_key_display(b)}", run)
        yield from super().get_system_commands(screen)

    def action_command_palette(self) -> None:
        super().action_command_palette()

        def still() -> None:  # a blinking cursor costs ~1.8 KB/s over SSH while the palette is open
            from textual.widgets import Input

            for field in self.screen.query(Input):
                field.cursor_blink = False

        self.call_after_refresh(still)

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
            loop.remove_signal_handler(s)  # which restores the default: a second signal would kill
            signals.signal.signal(s, signals.signal.SIG_IGN)  # the clean-up under way
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

    def save_session(self, step: int | None = None) -> None:
        from tui_stack.tui import session

        steps = [s for s in self.screen_stack if hasattr(s, "STEP")]  # under help or a question
        if step is None:
            if not steps:  # a save timer that fires as the app closes
                return
            step = steps[-1].STEP
        if self.ws.resume is not None:  # not while a saved session is being restored
            return
        if any(s.measuring for s in steps):
            # the tables are being measured (again): the last save, the setting with the tables
            # measured under it, stands; the task saves when it ends (tui/common.py run_task)
            return
        ui = dict(self.ws.ui_restore)  # screens not built yet keep what was restored
        for i, name in enumerate(STEPS):
            if self.is_screen_installed(name):
                screen = self.get_screen(name)
                if screen.is_mounted:
                    ui[str(i)] = screen.ui_state()
        saved = session.save(self.ws, step, ui)
        if saved is None and not self._session_warned:
            self._session_warned = True
            self._not_saved()

    _session_warned = False
    unsaved = ""  # why this wizard's session is not saved, shown in every step bar

    def _not_saved(self) -> None:
        """Another wizard holds the session (often one left behind by a dropped link that the
        server has not noticed yet): offer to take it over; else say so on every screen."""
        from tui_stack.tui import session

        path = session.session_path(self.ws.config.input.directory)
        pid = session.holder(path)

        def answer(take: bool | None) -> None:
            if take and session.claim(path, take=True):
                self._session_warned = False
                self.save_session()
                return
            self.unsaved = f"pid {pid} holds the session" if pid else "the session cannot be written"
            screen = self.screen
            if hasattr(screen, "STEP"):
                screen.mark_unsaved()
                screen.status(f"not saved: {self.unsaved}; quit that one, then `tui-stack --resume` saves "
                              "again", error=True)

        if pid is None:  # the state directory cannot be written
            answer(False)
            return
        self.push_screen(ConfirmScreen(
            f"Another tui-stack (pid {pid}) holds the session of this directory: what you do here is not "
            "saved.\nTake the session over? That one then stops saving (a wizard left by a dropped link)."), answer)

    def on_unmount(self) -> None:
        from tui_stack.tui import session

        session.release(session.session_path(self.ws.config.input.directory))
        if self._engine is not None and self._engine[1] is not self._given_engine:
            self._engine[1].close()

    def action_request_quit(self, code: int = 0) -> None:
        self.save_session()
        if not self.ws.dirty:
            self.exit(return_code=code)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.exit(return_code=code)

        self.push_screen(ConfirmScreen("Measured results are not written yet.\nQuit and lose them?"), answer)


def run_app(directory: Path, config_path: Path | None = None, resume: bool = False) -> int:
    from tui_stack import rundir

    rundir.clean_scratch()
    saved = None
    if resume:
        import tomllib

        from tui_stack.config import config_from_dict
        from tui_stack.tui import session

        given = Path(directory).resolve() != Path.cwd().resolve()
        saved = session.load(Path(directory) if given else None)
        if saved is None and not given:
            saved = session.load(Path(directory))
        if saved is None:
            where = session.session_path(directory) if given else session.state_dir()
            raise InputError(f"no saved session to resume ({where}: none found)")
        try:
            config = config_from_dict(tomllib.loads(saved["config"]))
        except InputError as exc:
            raise InputError(f"{saved['_path']}: saved session's config: {exc}") from None
    else:
        config = load_config(config_path) if config_path else None  # it names its own directory
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # without a terminal Textual waits for keys that never come, at full speed
        raise InputError("the wizard needs a terminal; without one use `tui-stack run CONFIG.toml` "
                         "(or `tui-stack demo --headless`)")
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
