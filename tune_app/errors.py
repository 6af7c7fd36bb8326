"""Errors a user can fix: printed as one line, exit code 2."""

import argparse
import sys


class UsageError(Exception):
    """Bad input. ``str()`` is the one line shown to the user."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def file_error(error: OSError) -> UsageError:
    """A file-system error (read-only directory, full disk, a path that is a file) as one line."""
    where = f"{error.filename}: " if error.filename else ""
    return UsageError(f"{where}{error.strerror or first_line(error)}; check that the path exists and is writable "
                      f"(nothing finished is lost: fix it and run the command again, or --resume the sweep)")


def one_line(action, *args) -> int:
    """The exit code of ``action(*args)``, a command's body: a UsageError or a file-system error becomes its one
    line on stderr and exit code 2 (every command's ``main`` runs through this)."""
    try:
        return action(*args)
    except UsageError as e:
        print(f"tune_app: error: {e}", file=sys.stderr)
    except OSError as e:
        print(f"tune_app: error: {file_error(e)}", file=sys.stderr)
    return UsageError.exit_code


class Renamed(argparse.Action):
    """A flag whose old spelling (its second option string) still works for one release, with a note that
    names the new one."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string != self.option_strings[0]:
            print(f"tune_app: note: {option_string} is now {self.option_strings[0]}; the old spelling goes in a "
                  f"later release", file=sys.stderr)
        setattr(namespace, self.dest, values)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit code 2, as argparse does)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
