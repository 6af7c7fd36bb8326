"""Errors a user can fix: printed as one line, exit code 2."""


class UsageError(Exception):
    """Bad input. ``str()`` is the one line shown to the user."""

    exit_code = 2
