"""Errors the user can act on, and the exit codes of SPEC.md.

The CLI turns an InputError into one line on stderr and exit 2; an Interrupted (Ctrl-C, a
dropped SSH link, a kill) into 130 / 129 / 143 after the run has put its output directory back.
"""

import signal

EXIT_OK, EXIT_BUG, EXIT_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_HANGUP, EXIT_TERMINATED = 130, 129, 143


class InputError(Exception):
    """Bad input or bad config: a file, key or choice the user has to fix."""


class ConfigError(InputError):
    """A config key that is unknown, missing or of the wrong type."""


class Interrupted(KeyboardInterrupt):
    """SIGHUP or SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so every
    clean-up that handles Ctrl-C handles these too. Exit code 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def what(self) -> str:
        return {signal.SIGHUP: "hang-up (SIGHUP)", signal.SIGTERM: "terminated (SIGTERM)"}.get(
            self.signum, f"signal {self.signum}")


def exit_code_of(exc: BaseException) -> int:
    """130 for Ctrl-C, 128 + n for the signal an Interrupted carries."""
    return getattr(exc, "exit_code", EXIT_INTERRUPTED)
