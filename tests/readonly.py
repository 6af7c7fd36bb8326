"""Taking write access away from a command, as a user's changed permissions would, when the tests run as root."""
import os
from pathlib import Path


def unprivileged(command: list[str]) -> list[str]:
    """``command`` without root's power to write anywhere: in a user namespace of its own the files it makes are
    still its own, but their permission bits bind it, so a chmod takes a folder away as from any user."""
    return ["unshare", "--user", *command] if os.geteuid() == 0 else command


def chmod_tree(root: Path, writable: bool) -> None:
    """Take write permission away from ``root`` and everything in it, or give it back to the owner."""
    for folder, _, files in os.walk(root):
        for path in [folder, *(os.path.join(folder, f) for f in files)]:
            mode = os.stat(path).st_mode
            os.chmod(path, mode | 0o200 if writable else mode & ~0o222)
