"""Read a sweep back from its run directory: trial folders, their configs, histories and errors.

Works on a tune_app run directory (``tune_app.json`` names the space, so the metric and the
searched hyperparameters are known) and on any plain Ray Tune experiment directory (each trial
folder holds ``params.json`` and ``result.json``/``progress.csv``): there the metric comes from
``--metric`` or defaults to ``val_acc``, and the searched hyperparameters are the config keys whose
values differ between trials. Only files are read, so a directory copied from a cluster works.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tune_app.errors import UsageError
from tune_app.rundir.layout import RUNS, SPEC_FILE

# What a trial's history keeps from each report: the metrics, the cost ledger's figures (CPU seconds, training
# samples so far, the CPUs and share of a GPU the trial held), the divergence and early-stopping flags, when it
# was reported.
KEEP = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "ood_acc", "lr", "epoch_time_s", "samples_per_s",
        "peak_mem_mb", "params", "cpu_s", "samples_seen", "cpus", "gpus", "diverged", "early_stopped", "timestamp",
        "val_examples")
FLAGS = ("diverged", "early_stopped")
# Ray's statuses of a trial an interruption left unfinished. Not PAUSED: HyperBand's last experiment state can
# still say PAUSED for a trial it went on to stop.
UNFINISHED = ("RUNNING", "PENDING")
TIMEOUT_FILE = "timeout.txt"  # written by --trial-timeout's watchdog into the folder of a trial it stopped
RAY_COLUMNS = {"training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "trial_id", "date",
               "hostname", "node_ip", "pid", "done", "iterations_since_restore", "time_since_restore",
               "checkpoint_dir_name", "config", "should_checkpoint"}


@dataclass
class Sweep:
    """A sweep as read from disk, and what its analysis needs to know about it."""
    path: Path
    records: list[dict]
    metric: str
    mode: str
    params: list[str]  # the searched hyperparameters
    bins: dict[str, list[float]] = field(default_factory=dict)  # continuous ranges -> trend-table bin edges
    ranges: dict[str, tuple] = field(default_factory=dict)  # param -> ("float"|"int", low, high, log)
    spec: dict | None = None  # tune_app.json; None for a plain Ray Tune experiment
    space: object = None

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """[(metric, mode), ...] the sweep searched by: more than one for a multi-objective sweep, the first being
        ``metric`` (unless the analysis was asked for another metric)."""
        recorded = [tuple(o) for o in (self.spec or {}).get("objectives") or []]
        if len(recorded) > 1 and recorded[0] == (self.metric, self.mode):
            return recorded
        return [(self.metric, self.mode)]

    @property
    def name(self) -> str:
        return (self.spec or {}).get("settings", {}).get("name") or self.path.name


def read_json(path: Path, fix: str):
    """A JSON file tune_app wrote; one line when it was cut short or edited into something else."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON ({e}): it was cut short or edited; {fix}") from None


def trial_id_of(dirname: str) -> str:
    """The trial id at the end of a trial folder's name: 8 hex digits from a searcher, or
    ``<5 hex>_<5 digits>`` from grid/random search."""
    found = re.search(r"([0-9a-f]{5}_\d{5}|[0-9a-f]{8})$", dirname)
    return found.group(1) if found else dirname


def error_line(text: str) -> str:
    """A trial's failure in one line from Ray's error.txt: the innermost ``SomeError: message``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    pattern = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Interrupt|Exit|Warning)\w*)(?:: (.*))?$")
    for line in reversed(lines):
        found = pattern.match(line)
        if found and "RayTaskError" not in line and "TuneError" not in line:
            return f"{found.group(1)}: {found.group(2) or ''}".rstrip(": ")
    return lines[-1] if lines else "error"


def _read_results(folder: Path) -> pd.DataFrame | None:
    """The trial's reports: result.json and progress.csv hold the same rows, but after a PBT exploit
    restarts a trial its result.json can come back empty (seen with Ray 2.60) while progress.csv is
    whole, so take whichever holds more."""
    frames = []
    result = folder / "result.json"
    if result.is_file() and result.stat().st_size:
        rows = []
        for line in result.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            runs = row.pop(RUNS, None)  # --repeats: each run's numbers, as progress.csv flattens them
            if isinstance(runs, dict):
                row.update({f"{RUNS}/{i}/{k}": v for i, numbers in runs.items() if isinstance(numbers, dict)
                            for k, v in numbers.items()})
            rows.append(row)
        frames.append(pd.DataFrame(rows))
    csv = folder / "progress.csv"
    if csv.is_file() and csv.stat().st_size:
        try:
            frames.append(pd.read_csv(csv))
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            pass
    frames = [f for f in frames if len(f)]
    return max(frames, key=len, default=None)


def _history(frame: pd.DataFrame | None, metric: str, everything: bool = False, also=()) -> list[dict]:
    """One row per epoch: KEEP's columns and the metric (``everything``: every number the trainable reported,
    for a trainable of the user's, whose metric names tune_app does not know)."""
    if frame is None:
        return []
    frame = frame.copy()
    if "epoch" not in frame and "training_iteration" in frame:
        frame["epoch"] = frame["training_iteration"]  # a plain Ray trainable: one report = one step
    if "epoch_time_s" not in frame and "time_this_iter_s" in frame:
        frame["epoch_time_s"] = frame["time_this_iter_s"]
    if "epoch" not in frame:
        return []
    frame = frame.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last").sort_values("epoch")
    keep = [c for c in (*KEEP, metric, *also) if c in frame]
    if everything:
        keep += [c for c in frame.columns if c not in RAY_COLUMNS and "/" not in c
                 and pd.api.types.is_numeric_dtype(frame[c])]
    # --repeats: each run's numbers (runs/<i>/<name>), for the same names, and its seed
    keep += [c for c in frame.columns if c.startswith(f"{RUNS}/") and c.count("/") == 2
             and (c.rsplit("/", 1)[1] in (*keep, "seed") or everything and pd.api.types.is_numeric_dtype(frame[c]))]
    rows = frame[list(dict.fromkeys(keep))].to_dict("records")
    for row in rows:
        row["epoch"] = int(row["epoch"])
        for key in row:
            if key in FLAGS or key.startswith(f"{RUNS}/") and key.rsplit("/", 1)[1] in FLAGS:
                row[key] = bool(row[key]) if not _nan(row[key]) else False
    return rows


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def trial_folders(path: Path) -> list[Path]:
    return sorted(p.parent for p in path.glob("*/params.json"))


def ray_statuses(path: Path) -> dict[str, str]:
    """Each trial's status in Ray's newest experiment state (TERMINATED, ERROR, ...), by trial id; empty when
    there is none to read. A trial retried after a crash keeps its error.txt: only this says how it ended."""
    # By the start time in the name (each run of the sweep writes its own file): Ray copies every file to the
    # storage path together at the end, so modification times do not tell them apart.
    states = sorted(path.glob("experiment_state-*.json"), key=lambda p: p.name)
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text(encoding="utf-8"))
        trials = [json.loads(t[0]) for t in data.get("trial_data", [])]
        return {str(t["trial_id"]): str(t["status"]) for t in trials}
    except (json.JSONDecodeError, OSError, KeyError, IndexError, TypeError):
        return {}


def trial_counts(path: Path, terminated: int = 0) -> tuple[int, int]:
    """(finished, unfinished) trials in Ray's last experiment state of a run directory. Ctrl+C leaves a trial
    RUNNING there, where Ray's ResultGrid calls it TERMINATED: the experiment state is what counts. Without one,
    ``terminated`` (the ResultGrid's count) trials, all finished."""
    statuses = ray_statuses(path) or {str(i): "TERMINATED" for i in range(terminated)}
    unfinished = sum(status in UNFINISHED for status in statuses.values())
    return len(statuses) - unfinished, unfinished


def read_trials(path: Path, metric: str, everything: bool = False, also=()) -> list[dict]:
    """One record per trial folder: trial_id, name, config, history (``everything``: see _history), error (one
    line or None)."""
    records = []
    statuses = ray_statuses(path)
    order = {trial_id: i for i, trial_id in enumerate(statuses, start=1)}  # Ray's experiment state lists trials as made
    for folder in trial_folders(path):
        try:
            config = json.loads((folder / "params.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            continue
        frame = _read_results(folder)
        ids = frame["trial_id"].dropna() if frame is not None and "trial_id" in frame else []
        error = folder / "error.txt"
        trial_id = str(ids.iloc[-1]) if len(ids) else trial_id_of(folder.name)
        # A trial that crashed and was then finished by a retry keeps its error.txt: it failed only if Ray says so.
        failed = error.is_file() and statuses.get(trial_id, "ERROR") == "ERROR"
        records.append({
            "trial_id": trial_id,
            "name": folder.name, "folder": folder.name, "config": config if isinstance(config, dict) else {},
            "history": _history(frame, metric, everything, also),
            "error": error_line(error.read_text(encoding="utf-8", errors="replace")) if failed else None,
            "timeout": failed and (folder / TIMEOUT_FILE).is_file(),
            # Ray's state still has it running or queued: the sweep was interrupted before it finished
            "interrupted": not failed and statuses.get(trial_id) in UNFINISHED,
            "order": order.get(trial_id),  # None in a plain Ray experiment without its experiment state
        })
    return records


def _varying(records: list[dict]) -> list[str]:
    """Config keys whose values differ between trials: what a plain Ray experiment searched."""
    keys = list(dict.fromkeys(k for r in records for k in r["config"]))
    seen = {k: {json.dumps(r["config"].get(k), sort_keys=True, default=str) for r in records} for k in keys}
    return [k for k in keys if len(seen[k]) > 1]


def _inferred_range(values: list) -> tuple | None:
    """A numeric key with many distinct values is treated as a sampled range (log when it spans a decade)."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != len(values) or len(set(numbers)) <= 6:
        return None
    low, high = min(numbers), max(numbers)
    kind = "int" if all(isinstance(v, int) for v in numbers) else "float"
    return kind, low, high, low > 0 and high / low >= 10


def load(path, metric: str | None = None, mode: str | None = None) -> Sweep:
    """Read a run directory. Raises UsageError with one line when it is not a sweep."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory; pass a run directory such as runs/<name>")
    spec = read_json(path / SPEC_FILE, "restore it from a copy (it records the sweep's space and settings)") \
        if (path / SPEC_FILE).is_file() else None
    if spec is None and not trial_folders(path):
        raise UsageError(f"{path} is not a sweep: it holds no {SPEC_FILE} and no trial folders with params.json; "
                         f"pass the run directory a search wrote, e.g. runs/<name>")
    space = None
    if spec is not None:
        space = _space_of(spec)
        metric = metric or spec.get("metric") or (space.metric if space else None)
        mode = mode or spec.get("mode") or (space.mode if space else None)
    metric = metric or "val_acc"
    mode = mode or ("min" if "loss" in metric or "err" in metric else "max")
    if mode not in ("max", "min"):
        raise UsageError(f"--mode {mode}: use max or min")
    objectives = [m for m, _ in (spec or {}).get("objectives") or []]
    records = read_trials(path, metric, everything=space is not None and not space.trainable.builtin,
                          also=[m for m in objectives if m != "device_s"])
    if spec is not None:  # what each trial asked Ray for: the cost ledger's fallback where a report does not say
        settings = spec.get("settings", {})
        for r in records:
            r["resources"] = {"cpu": settings.get("cpus_per_trial"), "gpu": settings.get("gpus_per_trial")}
    reported = {k for r in records for h in r["history"] for k in h}
    if records and reported and metric not in reported:
        shown = sorted(reported - {"epoch", "timestamp", *FLAGS})
        raise UsageError(f"metric {metric!r} was never reported in {path}; pass --metric with one of: "
                         f"{', '.join(shown)}")
    if space is not None:
        params = list(spec.get("searched") or space.searched)
        bins, ranges = _space_ranges({**space.param_space, **space.drawn_domains})
        defaults = {k: p.default for k, p in (space.trainable.PARAMS or {}).items()}
        planned = (spec.get("settings") or {}).get("max_epochs")
        for r in records:
            cfg = {**defaults, **r["config"]}
            epochs = cfg.get("epochs") or planned or len(r["history"])  # a user's trainable may have no epochs key
            r["target_epochs"] = min(epochs, cfg.get("max_epochs") or epochs)
            r["name"] = space.trainable.run_name(cfg)
            r["schedule_spans_run"] = space.trainable.schedule_spans_run(cfg)
    else:
        params = _varying(records)
        ranges = {k: rng for k in params if (rng := _inferred_range([r["config"].get(k) for r in records]))}
        bins = {k: _edges(*rng[1:]) for k, rng in ranges.items()}
        # Without a spec the planned length is unknown: the longest trial is taken as the full length.
        deepest = max((len(r["history"]) for r in records), default=0)
        for r in records:
            r["target_epochs"] = deepest
    return Sweep(path=path, records=records, metric=metric, mode=mode, params=params, bins=bins,
                 ranges=ranges, spec=spec, space=space)


def _edges(low, high, log):
    from tune_app.rundir.tables import bin_edges

    return bin_edges(float(low), float(high), log)


def _space_of(spec: dict):
    """The space the sweep was started with. One that cannot be loaded (a built-in this version does not have,
    the user's file gone or broken) is one line: the analysis needs its trainable and metric."""
    from tune_app.spaces import load_space

    if not isinstance(spec, dict) or not isinstance(spec.get("space"), str):
        raise UsageError(f"{SPEC_FILE} names no space; restore it from a copy")
    try:
        return load_space(spec["space"], spec.get("overrides") or {}, code=spec.get("code") or None)
    except UsageError as e:
        raise UsageError(f"the sweep's space {spec['space']} cannot be loaded: {e}") from None


def _space_ranges(space: dict) -> tuple[dict, dict]:
    """Bins and ranges for every sampled numeric range of a Ray search space."""
    from ray.tune.search.sample import Float, Integer, LogUniform

    bins, ranges = {}, {}
    for key, domain in space.items():
        if isinstance(domain, (Float, Integer)):
            log = isinstance(domain.get_sampler(), LogUniform)
            upper = domain.upper - 1 if isinstance(domain, Integer) else domain.upper  # randint's upper is exclusive
            ranges[key] = ("int" if isinstance(domain, Integer) else "float", domain.lower, upper, log)
            if isinstance(domain, Float):
                bins[key] = _edges(domain.lower, domain.upper, log)
    return bins, ranges
