"""Files and folders written whole: a reader never sees half of one, and a kill mid-write leaves the old one."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def atomic_write(path: Path, write) -> Path:
    """``write(tmp)`` fills a hidden sibling temp file, which is synced and then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_folder(path: Path, fill) -> Path:
    """``fill(tmp)`` fills a hidden sibling folder, which then takes the place of ``path`` (the old one, if any,
    is moved aside first and removed after): a crash leaves the old folder or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        fill(tmp)
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
