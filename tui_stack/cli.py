"""The `tui-stack` command. Heavy libraries are imported inside the commands, so --help is instant."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tui_stack import __version__

EXIT_OK, EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
SUBCOMMANDS = ("run", "demo", "combine")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tui-stack",
        description="Align, scale and combine astronomical CCD frames. "
        "With no command, opens the guided wizard on the FITS frames in DIR.",
        epilog="commands: run CONFIG.toml | demo [--headless] | combine FILE... --method M --out OUT.fits "
        "(tui-stack COMMAND --help for each)",
    )
    p.add_argument("--version", action="version", version=f"tui-stack {__version__}")
    p.add_argument("directory", nargs="?", default=".", help="directory of FITS frames (default: current)")
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
    p.add_argument("--workers", type=int, help="size of the local Dask cluster (default: one per core)")


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
    p = argparse.ArgumentParser(
        prog="tui-stack combine",
        description="Combine frames that are already aligned (as IRAF imcombine / ccdproc.combine).",
    )
    p.add_argument("files", nargs="+", type=Path)
    from tui_stack.config import COMBINE_METHODS

    p.add_argument("--method", required=True, choices=COMBINE_METHODS)
    p.add_argument("--out", type=Path, required=True, help="output FITS file")
    p.add_argument("--nlow", type=int, default=3)
    p.add_argument("--nhigh", type=int, default=3)
    p.add_argument("--sigma", type=float, default=3.0)
    p.add_argument("--maxiters", type=int, default=1)
    p.add_argument("--lsigma", type=float, help="low clipping limit (default: --sigma)")
    p.add_argument("--hsigma", type=float, help="high clipping limit (default: --sigma)")
    p.add_argument("--pclip", type=float, default=-0.5, help="pclip: rank of the spread estimate (IRAF)")
    p.add_argument("--gain", default="GAIN", help="ccdclip: e-/ADU or a header keyword (default GAIN)")
    p.add_argument("--rdnoise", default="RDNOISE", help="ccdclip: e- or a header keyword (default RDNOISE)")
    p.add_argument("--snoise", type=float, default=0.0, help="ccdclip: fractional sensitivity noise")
    p.add_argument("--nkeep", type=int, default=1,
                   help="IRAF clipping: keep at least N values; negative: reject at most -N (default 1)")
    p.add_argument("--no-mclip", dest="mclip", action="store_false",
                   help="sigclip/avsigclip/ccdclip: clip about the mean without min and max, not the median")
    p.add_argument("--gesd-outliers", type=float, default=0.3, help="gesd: largest fraction of outliers (0.3)")
    p.add_argument("--gesd-alpha", type=float, default=0.05, help="gesd: significance (0.05)")
    p.add_argument("--weights", default="none", metavar="none|exposure|noise|FILE",
                   help="weights of the average: exposure time, 1/(sky noise x scale)^2, or a file of one per frame")
    p.add_argument("--exposure-keyword", default="EXPTIME", metavar="KEY",
                   help="header keyword of the exposure time (default EXPTIME)")
    p.add_argument("--scale", type=Path, help="file of one multiplicative scale per frame")
    p.add_argument("--scale-keyword", metavar="KEY",
                   help="scale by a header keyword, e.g. EXPTIME: scale = first frame's value / this frame's")
    p.add_argument("--zero", type=Path, help="file of one additive zero per frame, subtracted before scaling")
    p.add_argument("--offsets", type=Path, help="file of integer 'dx dy' per frame (added to the frame's position)")
    p.add_argument("--memory-limit", default="256MB")
    p.add_argument("--maps", action="store_true", help="add NUSED, NREJECTED and SIGMA extensions (as IRAF)")
    p.add_argument("--overwrite", action="store_true")
    _compute_args(p)
    return p


def _error(msg: str) -> int:
    sys.stderr.write(f"tui-stack: error: {msg}\n")
    return EXIT_INPUT


def _crash_log(exc: BaseException) -> Path:
    import tempfile
    import traceback

    log = Path(tempfile.gettempdir()) / f"tui-stack-crash-{os.getpid()}.log"
    log.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    return log


def _quiet_astropy() -> None:
    """Astropy's warnings (header fixes, fits not converging) are noise in a summary table."""
    import warnings

    from astropy import log
    from astropy.utils.exceptions import AstropyWarning

    warnings.simplefilter("ignore", AstropyWarning)
    log.setLevel("ERROR")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from tui_stack.errors import InputError

    try:
        if argv and argv[0] in SUBCOMMANDS:
            cmd = argv[0]
            handler = {"run": cmd_run, "demo": cmd_demo, "combine": cmd_combine}[cmd]
            parser = {"run": _run_parser, "demo": _demo_parser, "combine": _combine_parser}[cmd]()
            args = parser.parse_args(argv[1:])
            _quiet_astropy()
            return handler(args)
        return cmd_wizard(_parser().parse_args(argv))
    except InputError as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        sys.stderr.write("tui-stack: interrupted; no partial output was left behind\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug: say where the details are, not a wall of traceback
        log = _crash_log(exc)
        sys.stderr.write(f"tui-stack: internal error ({type(exc).__name__}: {exc}); details in {log}\n")
        return EXIT_BUG


def _progress_runner(quiet: bool):
    """A rich progress bar fed by the pipeline's (stage, done, total) callback."""
    from contextlib import contextmanager

    @contextmanager
    def runner():
        if quiet:
            yield lambda stage, done, total: None
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


def cmd_run(args) -> int:
    from tui_stack import pipeline, summary
    from tui_stack.config import load_config, parse_size
    from tui_stack.errors import ConfigError

    cfg = load_config(args.config)
    if args.out:
        cfg.out_dir = args.out.resolve()
    if args.memory_limit:
        try:
            cfg.memory_limit = parse_size(args.memory_limit)
        except ValueError as exc:
            raise ConfigError(f"--memory-limit: {exc}") from None
    if args.address and not args.scheduler:
        args.scheduler = "dask"
    cfg.scheduler = args.scheduler or cfg.scheduler
    cfg.address = args.address or cfg.address
    cfg.workers = args.workers or cfg.workers
    with _progress_runner(args.quiet) as cb:
        state = pipeline.run(cfg, cb)
    summary.print_summary(state, _console())
    return EXIT_OK


def cmd_demo(args) -> int:
    from tui_stack import demo

    if args.frames < 3 or args.size < 256:
        from tui_stack.errors import InputError

        raise InputError("demo: use at least 3 frames and a size of at least 256 px")
    config_path = demo.write_demo(args.out, n_frames=args.frames, size=args.size)
    if args.headless:
        from tui_stack import pipeline, summary
        from tui_stack.config import load_config

        cfg = load_config(config_path)
        with _progress_runner(False) as cb:
            state = pipeline.run(cfg, cb)
        console = _console()
        summary.print_summary(state, console)
        console.print(f"demo frames and config in {args.out}/ ; truth in {args.out}/frames/truth.csv")
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
