"""The `tui-stack` command. Heavy libraries are imported inside the commands, so --help is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tui_stack import __version__
from tui_stack.errors import EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK  # noqa: F401 (re-exported)

SUBCOMMANDS = ("run", "demo", "combine")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tui-stack",
        description="Align, scale and combine astronomical CCD frames.\n"
        "With no command, opens the guided wizard on the FITS frames in DIR.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands (tui-stack COMMAND --help for each):\n"
        "  run CONFIG.toml [--out DIR]     the whole pipeline from a config, no UI\n"
        "  demo [--out DIR] [--headless]   a synthetic field with known truth, then\n"
        "                                  the wizard on it\n"
        "  combine FILE... --method M --out OUT.fits\n"
        "                                  combine aligned frames (as IRAF imcombine)\n"
        "  help [COMMAND]                  this help, or a command's",
    )
    p.add_argument("--version", action="version", version=f"tui-stack {__version__}")
    p.add_argument("directory", nargs="?", default=".", metavar="DIR", help="directory of FITS frames (default: current)")
    p.add_argument("--config", type=Path, help="start the wizard from this config")
    p.add_argument("--resume", action="store_true", help="back to the last wizard session, at the same step")
    return p


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tui-stack run", description="Run the whole pipeline from a config, no UI.")
    p.add_argument("config", type=Path, help="config file (TOML, see sample_configs/)")
    p.add_argument("--out", type=Path, help="output directory (overrides [output].directory)")
    p.add_argument("--memory-limit", help="bound on the combine's buffers, e.g. 256MB")
    p.add_argument("--quiet", action="store_true", help="no progress, summary only")
    _compute_args(p)
    return p


def _compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", choices=["local", "dask"], help="where the work runs (overrides [compute])")
    p.add_argument("--address", help="Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    p.add_argument("--workers", help="size of the local Dask cluster (default: one per core)")


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tui-stack demo", description="Write a synthetic star field with known shifts and scales, then reduce it."
    )
    p.add_argument("--out", type=Path, default=Path("tui-stack-demo"), help="directory (default ./tui-stack-demo)")
    p.add_argument("--headless", action="store_true", help="run the pipeline without UI and print the summary")
    p.add_argument("--frames", type=int, default=10, help="number of frames (default 10)")
    p.add_argument("--size", type=int, default=1024, help="frame size in pixels (default 1024)")
    return p


def _combine_parser() -> argparse.ArgumentParser:
    from tui_stack.core.combine_params import PARAMS

    p = argparse.ArgumentParser(
        prog="tui-stack combine",
        description="Combine frames that are already aligned (as IRAF imcombine / ccdproc.combine).",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="aligned FITS frames (globs as the shell expands them)")
    p.add_argument("--out", required=True, help="output FITS file")  # a str: 'dir/' keeps its slash
    # one flag per [combine] key, from the table that declares them; checked by standalone
    for param in PARAMS:
        if not param.cli and param.name != "method":
            continue
        if param.name == "method":
            from tui_stack.core.combine_params import METHODS

            p.add_argument("--method", required=True, choices=METHODS, metavar="M", help=", ".join(METHODS))
        elif param.default is True:
            p.add_argument("--no-" + param.flag[2:], dest=param.name, action="store_false", help=param.off or param.help)
        elif param.default is False:
            p.add_argument(param.flag, action="store_true", help=param.help)
        else:
            shown = param.default
            if param.name == "memory_limit":
                shown = f"{param.default // 2**20}MB"
            extra = "; or a file of one weight per frame" if param.name == "weights" else ""
            p.add_argument(param.flag, dest=param.name, default=param.default, metavar=param.name.upper(),
                           help=param.help + extra + (f" (default {shown})" if shown is not None else ""))
    p.add_argument("--exposure-keyword", dest="exposure_key", help=argparse.SUPPRESS)  # the old name
    p.add_argument("--scale", type=Path, help="file of one multiplicative scale per frame")
    p.add_argument("--scale-keyword", metavar="KEY",
                   help="scale by a header keyword, e.g. EXPTIME: scale = first frame's value / this frame's")
    p.add_argument("--zero", type=Path, help="file of one additive zero per frame, subtracted before scaling")
    p.add_argument("--offsets", type=Path, help="file of integer 'dx dy' per frame (added to the frame's position)")
    p.add_argument("--overwrite", action="store_true")
    _compute_args(p)
    return p


def _say(line: str) -> None:
    """One line on stderr, made safe for the terminal (a file name can hold escape sequences);
    a terminal that is gone (hang-up) is not an error of its own."""
    from tui_stack import safetext

    try:
        sys.stderr.write(safetext.terminal(line) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _error(msg: str) -> int:
    _say(f"tui-stack: error: {msg}")
    return EXIT_INPUT


def _crash_log(exc: BaseException) -> Path | None:
    """The traceback in a new file of the user's state directory (tui_stack.crashlog)."""
    from tui_stack import crashlog

    return crashlog.write(exc)


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """argparse prints the whole usage (17 lines for combine) before its error: one line instead."""
    def error(message):
        _say(f"tui-stack: error: {message} (see {parser.prog} --help)")
        raise SystemExit(EXIT_INPUT)

    parser.error = error
    return parser


def _quiet_astropy() -> None:
    """Astropy's warnings (header fixes, fits not converging) are noise in a summary table."""
    import warnings

    from astropy import log
    from astropy.utils.exceptions import AstropyWarning

    warnings.simplefilter("ignore", AstropyWarning)
    log.setLevel("ERROR")


def main(argv: list[str] | None = None) -> int:
    if argv is not None:  # a call from Python (tests): return the code
        return _main(list(argv), whole_process=False)
    # The steps already run frames on both cores; OpenBLAS's own threads (the PSF fit's small
    # batched products) then wait actively for the other core: 16 x 4096^2 with `growth`
    # 2.6-3.4 s and 3.9-4.3 s of CPU, one BLAS thread 2.3-2.7 s and 2.8-3.1 s (`fixed`, the
    # turned set: no slower). Set before numpy is first imported; a user's own setting stays.
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    code = _main(sys.argv[1:], whole_process=True)
    from tui_stack import signals

    # The interpreter's shut-down (freeing large arrays, joining pool threads: up to ~0.3 s)
    # resets the signal handlers first, so a SIGHUP in it killed the process with no word
    # (11 of 30 late signals in the trial): leave now.
    signals.exit_now(code)


def _main(argv: list[str], whole_process: bool) -> int:
    from tui_stack import signals
    from tui_stack.errors import InputError, exit_code_of

    from tui_stack import rundir

    rundir.COMMITTED.clear()
    if argv[:1] == ["help"]:  # `tui-stack help [COMMAND]` is help, not the wizard on a folder named help
        if argv[1:2] and argv[1] not in SUBCOMMANDS:
            return _error(f"no command {argv[1]!r} to help with; the commands are {', '.join(SUBCOMMANDS)}")
        argv = [*argv[1:2], "--help"]
    try:
        with signals.handled(_late_signal if whole_process else None):
            if argv and argv[0] in SUBCOMMANDS:
                cmd = argv[0]
                handler = {"run": cmd_run, "demo": cmd_demo, "combine": cmd_combine}[cmd]
                parser = {"run": _run_parser, "demo": _demo_parser, "combine": _combine_parser}[cmd]()
                args = _one_line_errors(parser).parse_args(argv[1:])
                _quiet_astropy()
                return handler(args)
            _unknown_command(argv)
            return cmd_wizard(_one_line_errors(_parser()).parse_args(argv))
    except InputError as exc:
        return _error(str(exc))
    except KeyboardInterrupt as exc:  # Ctrl-C, and SIGHUP / SIGTERM (errors.Interrupted)
        what = getattr(exc, "what", "interrupted")
        if rundir.COMMITTED:  # the signal came as the outputs were put in place: they are complete
            _say(f"tui-stack: {what} after the outputs were complete in {rundir.COMMITTED[-1]}")
        else:
            left = getattr(exc, "left", "the output directory was left as it was before this run")
            _say(f"tui-stack: {what}; {left}")
        if getattr(exc, "signum", None) == signals.signal.SIGHUP:
            signals.detach_stdio()
        return exit_code_of(exc)
    except BrokenPipeError:
        signals.detach_stdio()
        return EXIT_OK
    except Exception as exc:  # a bug: say where the details are, not a wall of traceback
        return _bug(exc)


def _late_signal(signum: int) -> str:
    """What a SIGHUP or SIGTERM after the command's work says (it exits 128 + signum)."""
    from tui_stack import rundir
    from tui_stack.errors import Interrupted

    what = Interrupted(signum).what
    if rundir.COMMITTED:
        return f"tui-stack: {what} after the outputs were complete in {rundir.COMMITTED[-1]}"
    return f"tui-stack: {what} as the command ended"


def _unknown_command(argv: list[str]) -> None:
    """`tui-stack runn x.toml`: a mistyped command, not the wizard on a folder named runn."""
    import difflib

    from tui_stack.errors import InputError

    if argv and not argv[0].startswith("-") and not Path(argv[0]).exists():
        near = difflib.get_close_matches(argv[0], SUBCOMMANDS + ("help",), n=1, cutoff=0.6)
        if near:
            raise InputError(f"unknown command {argv[0]!r}; did you mean {near[0]!r}? (tui-stack --help)")


def _bug(exc: BaseException) -> int:
    log = _crash_log(exc)
    where = f"details in {log}" if log else "no log could be written to the state directory"
    _say(f"tui-stack: internal error ({type(exc).__name__}: {exc}); {where}")
    return EXIT_BUG


def _stage_lines():
    """The pipeline's (stage, done, total) callback for a log file (stderr not a terminal): a
    line as each stage starts and one as it ends, with its time; no bars, no blank lines."""
    import time

    started, ended = {}, set()

    def cb(stage, done, total):
        if stage not in started:
            started[stage] = time.monotonic()
            _say(f"tui-stack: {stage} started")
        if done >= total and stage not in ended:
            ended.add(stage)
            _say(f"tui-stack: {stage} done ({total} of {total}, {time.monotonic() - started[stage]:.1f} s)")

    return cb


def _progress_runner(quiet: bool):
    """A rich progress bar fed by the pipeline's (stage, done, total) callback; on a log file,
    a line per stage start and end (_stage_lines)."""
    from contextlib import contextmanager

    @contextmanager
    def runner():
        if quiet:
            yield lambda stage, done, total: None
            return
        if not sys.stderr.isatty():
            yield _stage_lines()
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), transient=True, console=_console(stderr=True),
        ) as prog:
            tasks = {}

            def cb(stage, done, total):
                if stage not in tasks:
                    tasks[stage] = prog.add_task(stage, total=total)
                prog.update(tasks[stage], completed=done, total=total)

            yield cb

    return runner()


def _console(stderr=False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def apply_overrides(cfg, args) -> None:
    """Command-line overrides of the config, through the config's own validators."""
    from tui_stack.config import parse_value

    if getattr(args, "out", None):
        from tui_stack.core.io import resolved

        cfg.set("output", "directory", resolved(args.out), "--out")
    if getattr(args, "memory_limit", None) is not None:
        cfg.set("combine", "memory_limit", args.memory_limit, "--memory-limit")
    if args.address and not args.scheduler:
        args.scheduler = "dask"
    for key in ("scheduler", "address", "workers"):
        value = getattr(args, key)
        if value is not None:
            cfg.set("compute", key, parse_value(value) if key == "workers" else value, f"--{key}")
    cfg.check()


def cmd_run(args) -> int:
    from tui_stack import pipeline, summary
    from tui_stack.config import load_config

    cfg = load_config(args.config)
    apply_overrides(cfg, args)
    with _progress_runner(args.quiet) as cb:
        state = pipeline.run(cfg, cb)
    summary.print_summary(state, _console())
    return EXIT_OK


def cmd_demo(args) -> int:
    from tui_stack import demo, limits
    from tui_stack.core.io import resolved

    if args.frames < 3 or args.size < 256:
        from tui_stack.errors import InputError

        raise InputError("demo: use at least 3 frames and a size of at least 256 px")
    limits.check_demo(args.size, args.frames, resolved(args.out), args.headless)
    config_path = demo.write_demo(args.out, n_frames=args.frames, size=args.size)
    if args.headless:
        from tui_stack import pipeline, safetext, summary
        from tui_stack.config import load_config

        cfg = load_config(config_path)
        try:
            with _progress_runner(False) as cb:
                state = pipeline.run(cfg, cb)
        except KeyboardInterrupt as exc:  # the frames are written: say so, not that nothing changed
            exc.left = (f"the demo's frames stay in {config_path.parent / 'frames'} and its output directory "
                        f"{cfg.output.directory} was left as it was before this run")
            raise
        console = _console()
        summary.print_summary(state, console)
        out = safetext.markup(args.out)
        console.print(f"demo frames and config in {out}/ ; truth in {out}/frames/truth.csv")
        return EXIT_OK
    return _open_wizard(config_path.parent / "frames", config_path)


def cmd_combine(args) -> int:
    from tui_stack import standalone

    standalone.combine_files(args, _console())
    return EXIT_OK


def cmd_wizard(args) -> int:
    return _open_wizard(Path(args.directory), args.config, args.resume)


def _open_wizard(directory: Path, config: Path | None, resume: bool = False) -> int:
    from tui_stack.tui.app import run_app

    return run_app(directory, config, resume)
