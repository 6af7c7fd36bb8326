"""A sweep's trials as tables: trial records (``tune_app.rundir.reader``) become the trials table (one row per
trial: status, cost ledger, config, the metric at the last, best and equal-length epoch) and the history table
(one row per reported epoch). Pure functions over dicts and DataFrames, testable without Ray."""
from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from tune_app.rundir.layout import RUNS

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params")


# The cost ledger of every trial (see ledger): device-seconds (wall seconds x the devices held: GPUs if any, else
# CPUs) and which kind, process CPU seconds, peak memory, parameters, training samples.
LEDGER = ("device_s", "device_kind", "cpu_s", "peak_mem_mb", "params", "samples_seen")


STATUSES = ("completed", "stopped", "early_stopped", "diverged", "oom", "timeout", "error", "interrupted")


ELIGIBLE = ("completed", "stopped", "early_stopped")  # stopped: by the scheduler; early_stopped: by the trial


# trials.attrs key listing config columns stored as JSON text (lists, dicts, mixed types).
JSON_COLUMNS_ATTR = "json_config_columns"


def missing(value) -> bool:
    """Scalar-only NaN/None test; pd.isna would vectorise over a list-valued config entry."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def plain(obj):
    """Recursively turn numpy scalars, tuples, NaN/inf and paths into JSON/YAML-safe values."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if missing(obj) or (isinstance(obj, float) and math.isinf(obj)):
        return None
    return str(obj) if isinstance(obj, Path) else obj


def trial_status(record) -> str:
    """Classify a trial; divergence outranks completion because its numbers are meaningless."""
    if record.get("error"):
        if record.get("timeout"):
            return "timeout"
        if "OutOfMemoryError" in record["error"] or "out of memory" in record["error"].lower():
            return "oom"
        return "error"
    history = record.get("history") or []
    if record.get("interrupted"):  # cut off by Ctrl+C or a lost driver: --resume finishes it; never a result yet
        return "interrupted"
    if any(row.get("diverged") for row in history):
        return "diverged"
    if history and history[-1].get("early_stopped"):
        return "early_stopped"
    target = record.get("target_epochs")
    if target is None:  # older records: fall back to the configured epoch count
        target = (record.get("config") or {}).get("epochs")
    if history and (target is None or len(history) >= target):
        return "completed"
    return "stopped"


def _best_epoch(history, metric: str, mode: str):
    """Best finite value of `metric` outside diverged epochs (earliest wins ties) and its epoch."""
    best, at = math.nan, None
    for i, row in enumerate(history):
        value = row.get(metric)
        if row.get("diverged") or missing(value) or not math.isfinite(value):
            continue
        if at is None or (value > best if mode == "max" else value < best):
            best, at = float(value), int(row.get("epoch", i + 1))
    return best, at


def _kind(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return "str" if isinstance(value, str) else "other"


_DTYPES = {frozenset({"bool"}): "boolean", frozenset({"int"}): "Int64", frozenset({"float"}): "float64",
           frozenset({"int", "float"}): "float64", frozenset({"str"}): "str"}


def _config_column(values) -> tuple[pd.Series, bool]:
    """Keep homogeneous scalar columns typed (nullable ints/bools so missing keys don't turn 64 into 64.0);
    JSON-encode anything else, because Parquet needs one type per column. Returns (column, encoded)."""
    kinds = frozenset(_kind(v) for v in values if not missing(v))
    if not kinds:
        return pd.Series([None] * len(values), dtype=object), False
    dtype = _DTYPES.get(kinds)
    if dtype is None:
        return pd.Series([None if missing(v) else json.dumps(plain(v), sort_keys=True)
                          for v in values], dtype=object), True
    if not any(missing(v) for v in values):
        dtype = {"Int64": "int64", "boolean": "bool"}.get(dtype, dtype)
    return pd.Series([None if missing(v) else v for v in values], dtype=dtype), False


def is_accuracy(metric: str) -> bool:
    """A metric that is a share of examples right (val_acc, ood_acc, a user's acc): shown in percent, and counted
    out of the validation examples for the within-noise test."""
    return metric.endswith("acc")


def tie_metric(metric: str) -> str | None:
    """What breaks an exact tie in the selection metric: the validation loss at the same epoch (None when the loss
    is the metric itself; the start order decides then)."""
    return None if metric == "val_loss" else "val_loss"


def start_order(records) -> dict[str, int]:
    """Each trial's place in the order the sweep started them, 1 first: Ray's experiment state lists trials as it
    made them (``order``); without it, by the time of the first report, then by trial id."""
    def key(r):
        history = r.get("history") or []
        first = number(history[0].get("timestamp")) if history else None
        return (r.get("order") is None, r.get("order") or 0, first is None, first or 0.0, str(r["trial_id"]))

    return {str(r["trial_id"]): i for i, r in enumerate(sorted(records, key=key), start=1)}


def _sorted_records(records):
    return sorted(records, key=lambda r: str(r["trial_id"]))


def _value_at(history, metric: str, epoch: int | None) -> float:
    """The finite, non-diverged value of `metric` at `epoch`, else NaN."""
    for row in history:
        value = row.get(metric)
        if row.get("epoch") == epoch and not row.get("diverged") and not missing(value) and math.isfinite(value):
            return float(value)
    return math.nan


def number(value) -> float | None:
    """A finite real number as float; None for anything else (missing, NaN, text such as 'auto', bools)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def held_devices(report: dict, gpus=None, cpus=None) -> tuple[str | None, float]:
    """(kind, count) of the devices one report's epoch held: its GPUs where it held any, else its CPUs.

    What the report says it held (``gpus``/``cpus``, from Ray's assignment) comes first; then ``gpus``/``cpus``,
    what the trial asked for (the sweep's gpus_per_trial/cpus_per_trial). (None, NaN) when neither says."""
    held_gpus, held_cpus = number(report.get("gpus")), number(report.get("cpus"))
    gpus = held_gpus if held_gpus is not None else number(gpus)
    if gpus is None and held_cpus is None:
        return None, math.nan  # neither the report nor the sweep says whether a GPU was held
    if gpus:
        return "gpu", gpus
    count = held_cpus if held_cpus is not None else number(cpus)
    return ("cpu", count) if count else (None, math.nan)


def ledger(record) -> dict:
    """A trial's cost ledger from its reports: ``device_s`` sums each epoch's wall seconds (``epoch_time_s``)
    times the devices it held (GPUs if any, else CPUs; see held_devices), ``device_kind`` says which ("gpu" when
    any epoch held a GPU), ``cpu_s`` sums the process CPU seconds, ``peak_mem_mb`` is the highest peak,
    ``params`` and ``samples_seen`` the last reported. What no report carries is NaN (or None)."""
    history = record.get("history") or []
    asked = record.get("resources") or {}
    device_s, kinds = [], set()
    for h in history:
        kind, count = held_devices(h, asked.get("gpu"), asked.get("cpu"))
        kinds.add(kind)
        seconds = number(h.get("epoch_time_s"))
        device_s.append(math.nan if kind is None else (seconds or 0.0) * count)
    if not history:  # nothing ran: no cost, where the sweep says what a trial would have held
        kind, _ = held_devices({}, asked.get("gpu"), asked.get("cpu"))
        kinds = {kind}
        device_s = [0.0] if kind is not None else [math.nan]

    def values(key):
        return [v for h in history if (v := number(h.get(key))) is not None]

    cpu, peaks, params, samples = values("cpu_s"), values("peak_mem_mb"), values("params"), values("samples_seen")
    return {"device_s": math.fsum(device_s) if None not in kinds else math.nan,
            "device_kind": None if None in kinds else "gpu" if "gpu" in kinds else "cpu",
            "cpu_s": math.fsum(cpu) if cpu else math.nan, "peak_mem_mb": max(peaks) if peaks else math.nan,
            "params": int(params[-1]) if params else None, "samples_seen": int(samples[-1]) if samples else None}


def trials_frame(records, metric: str, mode: str, at_epoch: int | None = None, also=()) -> pd.DataFrame:
    """One row per trial: identity, status, its cost ledger (LEDGER, see ledger), config/<key>, final_<metric>,
    best-epoch columns and at_epoch_<metric>, the metric at epoch `at_epoch` (NaN for a trial that did not get
    there). ``also``: more metrics whose final_<m> to keep (a multi-objective sweep's other objectives)."""
    check_mode(mode)
    records = _sorted_records(records)
    finals = [m for m in METRICS if m != "epoch"] + ([] if metric in METRICS else [metric])
    finals += [m for m in also if m not in finals and m != "device_s"]  # device_s: the ledger's column
    tie = tie_metric(metric)
    tie_columns = [f"best_epoch_{tie}", f"at_epoch_{tie}"] if tie else []
    started = start_order(records)
    rows = []
    for r in records:
        history = r.get("history") or []
        last = history[-1] if history else {}
        best, at = _best_epoch(history, metric, mode)
        row = {"trial_id": str(r["trial_id"]), "name": r.get("name") or str(r["trial_id"]),
               "status": trial_status(r), "epochs": len(history), "target_epochs": r.get("target_epochs"),
               "started": started[str(r["trial_id"])], "schedule_spans_run": r.get("schedule_spans_run"),
               "seconds": math.fsum(h["epoch_time_s"] for h in history if not missing(h.get("epoch_time_s"))),
               "error": r.get("error") or None, **ledger(r)}
        row.update({f"final_{m}": math.nan if missing(last.get(m)) else last[m] for m in finals})
        row.update({f"best_{metric}": best, "best_epoch": at,
                    f"at_epoch_{metric}": _value_at(history, metric, at_epoch)})
        if tie:  # the tie rule's second key at the epoch each selection rule looks at (final_<tie> is above)
            row.update({f"best_epoch_{tie}": _value_at(history, tie, at), f"at_epoch_{tie}": _value_at(history, tie,
                                                                                                      at_epoch)})
        rows.append(row)
    head = ["trial_id", "name", "status", "epochs", "target_epochs", "started", "schedule_spans_run", "seconds",
            *LEDGER]
    columns = [*head, *[f"final_{m}" for m in finals], f"best_{metric}", "best_epoch", f"at_epoch_{metric}",
               *tie_columns, "error"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype({"epochs": "int64", "target_epochs": "Int64", "best_epoch": "Int64", "params": "Int64",
                          "samples_seen": "Int64", "device_kind": "str", "started": "int64",
                          "schedule_spans_run": "boolean",
                          **{c: "float64" for c in ["seconds", "device_s", "cpu_s", "peak_mem_mb",
                                                   *[f"final_{m}" for m in finals], f"best_{metric}",
                                                   f"at_epoch_{metric}", *tie_columns]}})
    keys = list(dict.fromkeys(k for r in records for k in (r.get("config") or {})))
    config, encoded = {}, []
    for key in keys:
        column, is_json = _config_column([(r.get("config") or {}).get(key) for r in records])
        config[f"config/{key}"] = column
        if is_json:
            encoded.append(f"config/{key}")
    frame = pd.concat([frame.iloc[:, :len(head)], pd.DataFrame(config, index=frame.index),
                       frame.iloc[:, len(head):]], axis=1)
    frame.attrs[JSON_COLUMNS_ATTR] = encoded
    frame.attrs["at_epoch"] = at_epoch
    return frame


def objective_column(metric: str) -> str:
    """The trials-table column an objective of a multi-objective sweep is read from: the last epoch's value, or
    the ledger's device_s."""
    return "device_s" if metric == "device_s" else f"final_{metric}"


def repeats_of(record) -> int:
    """How many runs (--repeats) each of the trial's reports holds: 0 for a trial without repeats."""
    history = record.get("history") or []
    return len({key.split("/")[1] for key in (history[0] if history else {}) if key.startswith(f"{RUNS}/")})


def run_records(records) -> list[dict]:
    """Each run as a record of its own, ``repeat`` its index: under --repeats a trial's k runs, each with the
    trial's id, status and resources, the run's seed in its config and, per epoch, its own numbers with the
    epoch's devices; a trial without repeats stays one record (repeat 0)."""
    out = []
    for record in records:
        k = repeats_of(record)
        if not k:
            out.append({**record, "repeat": 0})
            continue
        for i in range(k):
            prefix = f"{RUNS}/{i}/"
            history = []
            for row in record.get("history") or []:
                own = {key[len(prefix):]: value for key, value in row.items() if key.startswith(prefix)}
                if own:
                    history.append({**{key: row[key] for key in ("epoch", "cpus", "gpus", "timestamp") if key in row},
                                    **own})
            seed = next((number(h.get("seed")) for h in history if number(h.get("seed")) is not None), None)
            config = {**(record.get("config") or {}), **({"seed": int(seed)} if seed is not None else {})}
            out.append({**record, "history": history, "config": config, "repeat": i})
    return out


def runs_frame(records, metric: str, mode: str, at_epoch: int | None = None) -> pd.DataFrame:
    """trials.parquet of a sweep with --repeats: trials_frame's columns for every run, ``repeat`` after
    ``trial_id`` (the configuration's trial, whose k runs share it), ``config/seed`` the run's seed."""
    runs = run_records(records)
    frame = trials_frame(runs, metric, mode, at_epoch)
    frame["started"] = frame["trial_id"].map(start_order(records)).astype("int64")
    frame.insert(1, "repeat", pd.array([r["repeat"] for r in _sorted_records(runs)], dtype="int64"))
    return frame


def history_frame(records) -> pd.DataFrame:
    """Long table, one row per reported epoch, for learning-curve plots."""
    rows = [{"trial_id": str(r["trial_id"]), "name": r.get("name") or str(r["trial_id"]), **h}
            for r in _sorted_records(records) for h in (r.get("history") or [])]
    if not rows:
        return pd.DataFrame({"trial_id": pd.Series(dtype="str"), "name": pd.Series(dtype="str"),
                             "epoch": pd.Series(dtype="int64")})
    return pd.DataFrame(rows)


def value_key(value):
    """Sort numbers numerically and everything else as text, numbers first."""
    if isinstance(value, numbers.Real):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def bin_edges(lower: float, upper: float, log: bool) -> list[float]:
    """Edges for a continuous hyperparameter: decades for a log range, four equal bins otherwise."""
    if log and lower > 0:
        decades = [10.0 ** k for k in range(math.ceil(math.log10(lower)), math.floor(math.log10(upper)) + 1)]
        edges = sorted({lower, *decades, upper})
    else:
        edges = [float(e) for e in np.linspace(lower, upper, 5)]
    return edges


def bin_label(edges: list[float], i: int) -> str:
    return f"[{edges[i]:.3g}, {edges[i + 1]:.3g}" + ("]" if i == len(edges) - 2 else ")")


def status_counts(trials: pd.DataFrame) -> dict:
    return {"total": len(trials), **{s: int((trials["status"] == s).sum()) for s in STATUSES}}


def config_of(row: pd.Series, trials: pd.DataFrame) -> dict:
    """A trial's config from its trials-table row, lists and dicts decoded; keys it lacked are left out."""
    has_attr = JSON_COLUMNS_ATTR in trials.attrs
    encoded = set(trials.attrs.get(JSON_COLUMNS_ATTR, ()))
    config = {}
    for column in trials.columns:
        if not column.startswith("config/") or missing(row[column]):
            continue
        value = row[column]
        # Without attrs (e.g. a frame rebuilt elsewhere) fall back to decoding list/dict-looking text.
        if isinstance(value, str) and (column in encoded or (not has_attr and value.startswith(("[", "{")))):
            value = json.loads(value)
        config[column.removeprefix("config/")] = value
    return config


def check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
