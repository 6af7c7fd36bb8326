"""Where run directories live: a local or shared directory, or an ``s3://`` / ``gs://`` URI.

    python -m tune_app.search --space cifar_vgg6 --storage-path s3://my-bucket/sweeps
    python -m tune_app.search --resume s3://my-bucket/sweeps/<name>
    python -m tune_app.analyze s3://my-bucket/sweeps/<name>

With a URI, Ray Tune writes the experiment there itself (trial results, checkpoints from
every node, its experiment and searcher state). tune_app keeps a working copy of the run
directory on the driver (``$TUNE_APP_CACHE``, default ``~/.cache/tune_app``), the same
path for the same URI, and copies its own files up: the sweep's spec when it starts, the
Optuna journal as trials report, ``summary/`` and W&B's offline runs when it ends. Resuming
or analyzing a URI first brings the run directory down, checkpoints excepted (Ray reads
those from the URI). Credentials come from the usual places (``AWS_ACCESS_KEY_ID`` or
``AWS_PROFILE``, ``AWS_ENDPOINT_URL`` for an S3-compatible server;
``GOOGLE_APPLICATION_CREDENTIALS`` for GCS), read by pyarrow's filesystems.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from tune_app.errors import UsageError, first_line
from tune_app.rundir.layout import BUDGET_FILE, GPU_PLAN_FILE, JOURNAL_FILE, PLAN_FILE, SPEC_FILE, SUMMARY_DIR

SCHEMES = {"s3": "S3", "gs": "GCS"}
# what tune_app itself writes into a run directory
OWN_ENTRIES = (SPEC_FILE, JOURNAL_FILE, PLAN_FILE, GPU_PLAN_FILE, BUDGET_FILE, SUMMARY_DIR, "wandb")
UPLOAD_EVERY_S = 10.0  # the Optuna journal, while trials report


def is_uri(path) -> bool:
    return isinstance(path, str) and re.match(r"^[A-Za-z][\w+.-]*://", path) is not None


def check_scheme(uri: str, flag: str) -> str:
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        return scheme
    if scheme not in SCHEMES:
        raise UsageError(f"{flag} {uri}: unknown storage scheme '{scheme}://'; use a directory (shared between "
                         f"the cluster's machines for a multi-node run), s3://bucket/path or gs://bucket/path")
    if not uri.split("://", 1)[1].strip("/"):
        raise UsageError(f"{flag} {uri}: name a bucket, as in {scheme}://bucket/path")
    return scheme


def local_path(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser().resolve()


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI."""
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def mirror_dir(uri: str) -> Path:
    """The driver's working copy of the run directory at ``uri``: the same path for the same URI, so a
    resumed sweep finds the files (such as the Optuna journal) where it left them."""
    scheme, rest = uri.split("://", 1)
    root = Path(os.environ.get("TUNE_APP_CACHE") or Path.home() / ".cache" / "tune_app").expanduser()
    return (root / scheme / rest.strip("/")).resolve()


def _credentials_hint(scheme: str) -> str:
    if scheme == "s3":
        found = any(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE")) \
            or Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")).expanduser().is_file()
        where = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE (AWS_ENDPOINT_URL for an " \
                "S3-compatible server)"
    else:
        found = bool(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")) or \
            (Path.home() / ".config/gcloud/application_default_credentials.json").is_file()
        where = "set GOOGLE_APPLICATION_CREDENTIALS or run 'gcloud auth application-default login'"
    return f"no credentials found: {where}" if not found else f"check the credentials and the bucket ({where})"


def check_writable(uri: str, flag: str) -> None:
    """Write, read back and delete a small file under ``uri``: a missing bucket, missing credentials or a
    read-only key are refused before anything runs, in one line."""
    scheme = check_scheme(uri, flag)
    if scheme == "file":
        return
    probe = f".tune_app_probe_{uuid.uuid4().hex[:12]}"
    try:
        fs, path = filesystem(uri)
        target = f"{path.rstrip('/')}/{probe}"
        with fs.open_output_stream(target) as out:
            out.write(b"tune_app")
        with fs.open_input_stream(target) as inp:
            ok = inp.read() == b"tune_app"
        fs.delete_file(target)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ValueError, ArrowInvalid...
        raise UsageError(f"{flag} {uri}: cannot write to {SCHEMES[scheme]} there ({first_line(e)}); "
                         f"{_credentials_hint(scheme)}") from None
    if not ok:
        raise UsageError(f"{flag} {uri}: a file written there read back different; check the storage")


def exists(uri: str, relative: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(f"{path.rstrip('/')}/{relative}").type != pafs.FileType.NotFound


def download(uri: str, local: Path, checkpoints: bool = False) -> int:
    """Copy the run directory at ``uri`` into ``local`` (files that changed or are new), checkpoints left out
    unless asked for. Returns the number of files copied."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    root = root.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise UsageError(f"{uri}: cannot list it ({first_line(e)}); "
                         f"{_credentials_hint(uri.split('://')[0])}") from None
    copied = 0
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(root) + 1:]
        if not checkpoints and re.search(r"(^|/)checkpoint_\d+(/|$)", relative):
            continue
        if Path(relative).name.startswith(".tune_app_probe_"):
            continue
        target = local / relative
        if target.is_file() and target.stat().st_size == info.size and \
                info.mtime is not None and target.stat().st_mtime >= info.mtime.timestamp():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with fs.open_input_stream(info.path) as inp, open(tmp, "wb") as out:
            while chunk := inp.read(1 << 20):
                out.write(chunk)
        tmp.replace(target)
        copied += 1
    return copied


def upload(local: Path, uri: str, entries=OWN_ENTRIES) -> int:
    """Copy tune_app's own files (``entries`` of the run directory, files or folders) up to ``uri``."""
    fs, root = filesystem(uri)
    root = root.rstrip("/")
    copied = 0
    for entry in entries:
        source = local / entry
        files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()) \
            if source.is_dir() else []
        for file in files:
            if file.name.endswith((".part", ".tmp")):
                continue
            target = f"{root}/{file.relative_to(local).as_posix()}"
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with open(file, "rb") as inp, fs.open_output_stream(target) as out:
                while chunk := inp.read(1 << 20):
                    out.write(chunk)
            copied += 1
    return copied


def materialize(path: str, flag: str) -> Path:
    """A run directory given as a path or a URI, as a local directory (a URI is brought down first)."""
    if not is_uri(path) or check_scheme(path, flag) == "file":
        return local_path(path) if is_uri(path) else Path(path).expanduser().resolve()
    local = mirror_dir(path)
    download(path, local)
    return local
