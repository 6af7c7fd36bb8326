"""``tune-app <command> ...``: one entry point for every tune_app command."""
from __future__ import annotations

import sys

COMMANDS = {"search": "tune_app.search", "analyze": "tune_app.analyze", "retrain": "tune_app.retrain",
            "train": "tune_app.train"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: tune-app {{{','.join(COMMANDS)}}} ... (tune-app search --help)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:], prog=f"tune-app {argv[0]}")


def run() -> None:
    """The ``tune-app`` command."""
    from tune_app.command import exit_with

    exit_with(main())


if __name__ == "__main__":
    run()
