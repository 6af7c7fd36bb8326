"""Turn a finished sweep's trial records into tables, trends and a best config.

Everything here is a pure function over plain dicts and DataFrames so it can be
tested without Ray; tune_app.rundir reads the trial records from a run directory's files.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params")
# The cost ledger of every trial (see ledger): device-seconds (wall seconds x the devices held: GPUs if any, else
# CPUs) and which kind, process CPU seconds, peak memory, parameters, training samples.
LEDGER = ("device_s", "device_kind", "cpu_s", "peak_mem_mb", "params", "samples_seen")
STATUSES = ("completed", "stopped", "early_stopped", "diverged", "oom", "timeout", "error", "interrupted")
ELIGIBLE = ("completed", "stopped", "early_stopped")  # stopped: by the scheduler; early_stopped: by the trial
RULES = ("last", "best-epoch", "at-epoch")
NO_ELIGIBLE = "no trial finished without error or divergence; nothing to select"
# trials.attrs key listing config columns stored as JSON text (lists, dicts, mixed types).
JSON_COLUMNS_ATTR = "json_config_columns"


class NoEligibleTrialError(ValueError):
    """Raised by select_best when no trial is eligible; a ValueError, which analyze.compute catches to say why."""


def _missing(value) -> bool:
    """Scalar-only NaN/None test; pd.isna would vectorise over a list-valued config entry."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _plain(obj):
    """Recursively turn numpy scalars, tuples, NaN/inf and paths into JSON/YAML-safe values."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if _missing(obj) or (isinstance(obj, float) and math.isinf(obj)):
        return None
    return str(obj) if isinstance(obj, Path) else obj


def _check(mode: str, rule: str = "last") -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, not {rule!r}")


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
        if row.get("diverged") or _missing(value) or not math.isfinite(value):
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
    kinds = frozenset(_kind(v) for v in values if not _missing(v))
    if not kinds:
        return pd.Series([None] * len(values), dtype=object), False
    dtype = _DTYPES.get(kinds)
    if dtype is None:
        return pd.Series([None if _missing(v) else json.dumps(_plain(v), sort_keys=True)
                          for v in values], dtype=object), True
    if not any(_missing(v) for v in values):
        dtype = {"Int64": "int64", "boolean": "bool"}.get(dtype, dtype)
    return pd.Series([None if _missing(v) else v for v in values], dtype=dtype), False


def _sorted_records(records):
    return sorted(records, key=lambda r: str(r["trial_id"]))


def _value_at(history, metric: str, epoch: int | None) -> float:
    """The finite, non-diverged value of `metric` at `epoch`, else NaN."""
    for row in history:
        value = row.get(metric)
        if row.get("epoch") == epoch and not row.get("diverged") and not _missing(value) and math.isfinite(value):
            return float(value)
    return math.nan


def _number(value) -> float | None:
    """A finite real number as float; None for anything else (missing, NaN, text such as 'auto', bools)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def held_devices(report: dict, gpus=None, cpus=None) -> tuple[str | None, float]:
    """(kind, count) of the devices one report's epoch held: its GPUs where it held any, else its CPUs.

    What the report says it held (``gpus``/``cpus``, from Ray's assignment) comes first; then ``gpus``/``cpus``,
    what the trial asked for (the sweep's gpus_per_trial/cpus_per_trial). (None, NaN) when neither says."""
    held_gpus, held_cpus = _number(report.get("gpus")), _number(report.get("cpus"))
    gpus = held_gpus if held_gpus is not None else _number(gpus)
    if gpus is None and held_cpus is None:
        return None, math.nan  # neither the report nor the sweep says whether a GPU was held
    if gpus:
        return "gpu", gpus
    count = held_cpus if held_cpus is not None else _number(cpus)
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
        seconds = _number(h.get("epoch_time_s"))
        device_s.append(math.nan if kind is None else (seconds or 0.0) * count)
    if not history:  # nothing ran: no cost, where the sweep says what a trial would have held
        kind, _ = held_devices({}, asked.get("gpu"), asked.get("cpu"))
        kinds = {kind}
        device_s = [0.0] if kind is not None else [math.nan]

    def values(key):
        return [v for h in history if (v := _number(h.get(key))) is not None]

    cpu, peaks, params, samples = values("cpu_s"), values("peak_mem_mb"), values("params"), values("samples_seen")
    return {"device_s": math.fsum(device_s) if None not in kinds else math.nan,
            "device_kind": None if None in kinds else "gpu" if "gpu" in kinds else "cpu",
            "cpu_s": math.fsum(cpu) if cpu else math.nan, "peak_mem_mb": max(peaks) if peaks else math.nan,
            "params": int(params[-1]) if params else None, "samples_seen": int(samples[-1]) if samples else None}


def trials_frame(records, metric: str, mode: str, at_epoch: int | None = None) -> pd.DataFrame:
    """One row per trial: identity, status, its cost ledger (LEDGER, see ledger), config/<key>, final_<metric>,
    best-epoch columns and at_epoch_<metric>, the metric at epoch `at_epoch` (NaN for a trial that did not get
    there)."""
    _check(mode)
    records = _sorted_records(records)
    finals = [m for m in METRICS if m != "epoch"] + ([] if metric in METRICS else [metric])
    rows = []
    for r in records:
        history = r.get("history") or []
        last = history[-1] if history else {}
        best, at = _best_epoch(history, metric, mode)
        row = {"trial_id": str(r["trial_id"]), "name": r.get("name") or str(r["trial_id"]),
               "status": trial_status(r), "epochs": len(history), "target_epochs": r.get("target_epochs"),
               "seconds": math.fsum(h["epoch_time_s"] for h in history if not _missing(h.get("epoch_time_s"))),
               "error": r.get("error") or None, **ledger(r)}
        row.update({f"final_{m}": math.nan if _missing(last.get(m)) else last[m] for m in finals})
        row.update({f"best_{metric}": best, "best_epoch": at,
                    f"at_epoch_{metric}": _value_at(history, metric, at_epoch)})
        rows.append(row)
    head = ["trial_id", "name", "status", "epochs", "target_epochs", "seconds", *LEDGER]
    columns = [*head, *[f"final_{m}" for m in finals], f"best_{metric}", "best_epoch", f"at_epoch_{metric}", "error"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype({"epochs": "int64", "target_epochs": "Int64", "best_epoch": "Int64", "params": "Int64",
                          "samples_seen": "Int64", "device_kind": "str",
                          **{c: "float64" for c in ["seconds", "device_s", "cpu_s", "peak_mem_mb",
                                                   *[f"final_{m}" for m in finals], f"best_{metric}",
                                                   f"at_epoch_{metric}"]}})
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


def history_frame(records) -> pd.DataFrame:
    """Long table, one row per reported epoch, for learning-curve plots."""
    rows = [{"trial_id": str(r["trial_id"]), "name": r.get("name") or str(r["trial_id"]), **h}
            for r in _sorted_records(records) for h in (r.get("history") or [])]
    if not rows:
        return pd.DataFrame({"trial_id": pd.Series(dtype="str"), "name": pd.Series(dtype="str"),
                             "epoch": pd.Series(dtype="int64")})
    return pd.DataFrame(rows)


def rule_column(metric: str, rule: str) -> str:
    """The trials-table column a selection rule ranks by: the last epoch's metric, the trial's best
    epoch, or the metric at the analysis' equal-length epoch."""
    return {"last": "final", "best-epoch": "best", "at-epoch": "at_epoch"}[rule] + f"_{metric}"


def ranked(trials: pd.DataFrame, metric: str, mode: str, rule: str = "last") -> pd.DataFrame:
    """Eligible trials, best first. Diverged/errored trials are never eligible, however good their
    numbers; trials without a value for the rule's column (no epochs, or short of the equal-length
    epoch) are left out too. Ties go to the longer-trained trial, then to the trial id."""
    _check(mode, rule)
    column = rule_column(metric, rule)
    pool = trials[trials["status"].isin(ELIGIBLE) & trials[column].notna()]
    return pool.sort_values([column, "epochs", "trial_id"], ascending=[mode == "min", False, True], kind="mergesort")


def select_best(trials: pd.DataFrame, metric: str, mode: str, rule: str = "last") -> pd.Series:
    """The winning row under `rule` (see ranked)."""
    pool = ranked(trials, metric, mode, rule)
    if pool.empty:
        raise NoEligibleTrialError(NO_ELIGIBLE)
    return pool.iloc[0]


def _value_key(value):
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


def _bin_label(edges: list[float], i: int) -> str:
    return f"[{edges[i]:.3g}, {edges[i + 1]:.3g}" + ("]" if i == len(edges) - 2 else ")")


def _status_counts(trials: pd.DataFrame) -> dict:
    return {"total": len(trials), **{s: int((trials["status"] == s).sum()) for s in STATUSES}}


def config_of(row: pd.Series, trials: pd.DataFrame) -> dict:
    """A trial's config from its trials-table row, lists and dicts decoded; keys it lacked are left out."""
    has_attr = JSON_COLUMNS_ATTR in trials.attrs
    encoded = set(trials.attrs.get(JSON_COLUMNS_ATTR, ()))
    config = {}
    for column in trials.columns:
        if not column.startswith("config/") or _missing(row[column]):
            continue
        value = row[column]
        # Without attrs (e.g. a frame rebuilt elsewhere) fall back to decoding list/dict-looking text.
        if isinstance(value, str) and (column in encoded or (not has_attr and value.startswith(("[", "{")))):
            value = json.loads(value)
        config[column.removeprefix("config/")] = value
    return config


def _trial_numbers(row: pd.Series, metric: str, rule: str) -> dict:
    return {"trial_id": row["trial_id"], "trial_name": row["name"], "value": row[rule_column(metric, rule)],
            "last_value": row[f"final_{metric}"], "best_epoch_value": row[f"best_{metric}"],
            "best_epoch": row["best_epoch"], "at_epoch_value": row[f"at_epoch_{metric}"], "epochs": row["epochs"],
            "status": row["status"]}


def best_config_payload(best: pd.Series, trials: pd.DataFrame, metric: str, mode: str, rule: str,
                        provenance: dict) -> dict:
    """JSON-safe record of the winner, enough to retrain it and to know where it came from.
    `value` is the number the selection rule ranked by; the others are there for comparison."""
    payload = {"config": config_of(best, trials), **_trial_numbers(best, metric, rule), "metric": metric,
               "mode": mode, "selection_rule": rule, "at_epoch": trials.attrs.get("at_epoch"),
               "trials": _status_counts(trials), **provenance}
    return _plain(payload)


def top_k_payload(trials: pd.DataFrame, metric: str, mode: str, rule: str, k: int) -> dict:
    """The k best configurations under `rule`, best first, for a retrain of several candidates."""
    pool = ranked(trials, metric, mode, rule).head(k)
    entries = [{"rank": i, **_trial_numbers(row, metric, rule), "config": config_of(row, trials)}
               for i, (_, row) in enumerate(pool.iterrows(), start=1)]
    return _plain({"metric": metric, "mode": mode, "selection_rule": rule, "at_epoch": trials.attrs.get("at_epoch"),
                   "k": k, "trials": entries})
