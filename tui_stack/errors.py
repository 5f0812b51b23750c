"""Errors the user can act on. The CLI turns them into one line on stderr and exit 2."""


class InputError(Exception):
    """Bad input or bad config: a file, key or choice the user has to fix."""


class ConfigError(InputError):
    """A config key that is unknown, missing or of the wrong type."""
