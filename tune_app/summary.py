"""Turn a finished sweep's trial records into tables, trends and a best config.

Everything here is a pure function over plain dicts and DataFrames so it can be
tested without Ray; converting Ray's ResultGrid into records happens elsewhere.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
           "epoch_time_s", "samples_per_s", "peak_mem_mb", "params")
STATUSES = ("completed", "stopped", "diverged", "error")
ELIGIBLE = ("completed", "stopped")
TREND_COLUMNS = ("hyperparameter", "value", "runs", "diverged", "errors", "mean", "std", "best")
NO_ELIGIBLE = "no trial finished without error or divergence; nothing to select"
# trials.attrs key listing config columns stored as JSON text (lists, dicts, mixed types).
JSON_COLUMNS_ATTR = "json_config_columns"


class NoEligibleTrialError(ValueError):
    """Raised by select_best; a ValueError subclass so write_summary can catch exactly this case."""


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
    if rule not in ("last", "best-epoch"):
        raise ValueError(f"rule must be 'last' or 'best-epoch', not {rule!r}")


def trial_status(record) -> str:
    """Classify a trial; divergence outranks completion because its numbers are meaningless."""
    if record.get("error"):
        return "error"
    history = record.get("history") or []
    if any(row.get("diverged") for row in history):
        return "diverged"
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


def trials_frame(records, metric: str, mode: str) -> pd.DataFrame:
    """One row per trial: identity, status, config/<key>, final_<metric> and best-epoch columns."""
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
               "error": r.get("error") or None}
        row.update({f"final_{m}": math.nan if _missing(last.get(m)) else last[m] for m in finals})
        row.update({f"best_{metric}": best, "best_epoch": at})
        rows.append(row)
    columns = ["trial_id", "name", "status", "epochs", "target_epochs", "seconds",
               *[f"final_{m}" for m in finals], f"best_{metric}", "best_epoch", "error"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.astype({"epochs": "int64", "target_epochs": "Int64", "best_epoch": "Int64",
                          **{c: "float64" for c in ["seconds", *[f"final_{m}" for m in finals], f"best_{metric}"]}})
    keys = list(dict.fromkeys(k for r in records for k in (r.get("config") or {})))
    config, encoded = {}, []
    for key in keys:
        column, is_json = _config_column([(r.get("config") or {}).get(key) for r in records])
        config[f"config/{key}"] = column
        if is_json:
            encoded.append(f"config/{key}")
    frame = pd.concat([frame.iloc[:, :6], pd.DataFrame(config, index=frame.index), frame.iloc[:, 6:]], axis=1)
    frame.attrs[JSON_COLUMNS_ATTR] = encoded
    return frame


def history_frame(records) -> pd.DataFrame:
    """Long table, one row per reported epoch, for learning-curve plots."""
    rows = [{"trial_id": str(r["trial_id"]), "name": r.get("name") or str(r["trial_id"]), **h}
            for r in _sorted_records(records) for h in (r.get("history") or [])]
    if not rows:
        return pd.DataFrame({"trial_id": pd.Series(dtype="str"), "name": pd.Series(dtype="str"),
                             "epoch": pd.Series(dtype="int64")})
    return pd.DataFrame(rows)


def select_best(trials: pd.DataFrame, metric: str, mode: str, rule: str = "last") -> pd.Series:
    """Pick the winning row. Diverged/errored trials are never eligible, however good their numbers;
    trials without a value for the rule's column (no epochs reported) are skipped too."""
    _check(mode, rule)
    column = f"{'final' if rule == 'last' else 'best'}_{metric}"
    pool = trials[trials["status"].isin(ELIGIBLE) & trials[column].notna()]
    if pool.empty:
        raise NoEligibleTrialError(NO_ELIGIBLE)
    pool = pool.sort_values([column, "epochs", "trial_id"], ascending=[mode == "min", False, True],
                            kind="mergesort")
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


def trend_table(trials: pd.DataFrame, params: list[str], metric: str, mode: str,
                bins: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """Per hyperparameter value: run counts and mean/std/best of final_<metric> over eligible trials.
    Diverged and errored trials are counted so failures stay visible, but never averaged in.
    A hyperparameter in ``bins`` (a continuous range) is grouped into intervals between those edges,
    so a table over a sampled lr has rows per decade rather than one row per trial.
    Trials lacking the key (conditional spaces) are left out; unknown params yield no rows."""
    _check(mode)
    final = f"final_{metric}"
    bins = bins or {}
    rows = []
    for p in params:
        column = f"config/{p}"
        if column not in trials.columns:
            continue
        present = trials[trials[column].notna()]
        if p in bins:
            edges = bins[p]
            # Half-open bins [a, b); the last is closed, as the sampler may return the upper bound.
            index = np.clip(np.searchsorted(edges, present[column].astype(float), side="right") - 1,
                            0, len(edges) - 2)
            groups = [(_bin_label(edges, i), group) for i, group in present.groupby(index)]
        else:
            groups = sorted(present.groupby(column, sort=False), key=lambda kv: _value_key(_plain(kv[0])))
        for value, group in groups:
            values = group.loc[group["status"].isin(ELIGIBLE), final]
            rows.append({"hyperparameter": p, "value": _plain(value), "runs": len(values),
                         "diverged": int((group["status"] == "diverged").sum()),
                         "errors": int((group["status"] == "error").sum()),
                         "mean": values.mean(), "std": values.std(ddof=1),
                         "best": values.max() if mode == "max" else values.min()})
    return pd.DataFrame(rows, columns=list(TREND_COLUMNS))


def _fmt(value, metric: str, unit: str = "") -> str:
    if _missing(value):
        return "n/a"
    return f"{100 * value:.2f}{unit}" if metric.endswith("acc") else f"{value:.4g}"


def trends_markdown(table: pd.DataFrame, metric: str) -> str:
    """Markdown tables for a report; accuracies as percent, other metrics to 4 significant digits."""
    if table.empty:
        return "_No trends: no searched hyperparameter values._\n"
    unit = " %" if metric.endswith("acc") else ""
    blocks = []
    for p, group in table.groupby("hyperparameter", sort=False):
        lines = [f"### {p}", "", f"| value | runs | diverged | errors | mean{unit} | std{unit} | best{unit} |",
                 "|---|---:|---:|---:|---:|---:|---:|"]
        for row in group.itertuples(index=False):
            cells = [str(row.value).replace("|", "\\|"), str(row.runs), str(row.diverged), str(row.errors),
                     _fmt(row.mean, metric), _fmt(row.std, metric), _fmt(row.best, metric)]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _status_counts(trials: pd.DataFrame) -> dict:
    return {"total": len(trials), **{s: int((trials["status"] == s).sum()) for s in STATUSES}}


def best_config_payload(best: pd.Series, trials: pd.DataFrame, metric: str, mode: str, rule: str,
                        provenance: dict) -> dict:
    """JSON-safe record of the winner, enough to retrain it and to know where it came from.
    Config keys the winner did not have (union columns) are omitted rather than written as null."""
    has_attr = JSON_COLUMNS_ATTR in trials.attrs
    encoded = set(trials.attrs.get(JSON_COLUMNS_ATTR, ()))
    config = {}
    for column in trials.columns:
        if not column.startswith("config/") or _missing(best[column]):
            continue
        value = best[column]
        # Without attrs (e.g. a frame rebuilt elsewhere) fall back to decoding list/dict-looking text.
        if isinstance(value, str) and (column in encoded or (not has_attr and value.startswith(("[", "{")))):
            value = json.loads(value)
        config[column.removeprefix("config/")] = value
    payload = {"config": config, "trial_id": best["trial_id"], "trial_name": best["name"],
               "metric": metric, "mode": mode, "selection_rule": rule,
               "value": best[f"final_{metric}"], "best_epoch_value": best[f"best_{metric}"],
               "best_epoch": best["best_epoch"], "epochs": best["epochs"], "status": best["status"],
               "trials": _status_counts(trials), **provenance}
    return _plain(payload)


def _atomic_write(path: Path, write) -> Path:
    """Write to a sibling temp file, fsync, then os.replace: a kill mid-write leaves the old file whole."""
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


def write_summary(out_dir, records, params: list[str], metric: str, mode: str, provenance: dict,
                  rule: str = "last", bins: dict[str, list[float]] | None = None) -> dict:
    """Write all sweep artefacts into out_dir; a sweep with no usable trial still gets its tables."""
    _check(mode, rule)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = trials_frame(records, metric, mode)
    history = history_frame(records)
    trends = trend_table(trials, params, metric, mode, bins)
    try:
        payload = best_config_payload(select_best(trials, metric, mode, rule), trials, metric, mode, rule,
                                      provenance)
    except NoEligibleTrialError as exc:
        payload = _plain({"config": None, "reason": str(exc), "metric": metric, "mode": mode,
                          "selection_rule": rule, "trials": _status_counts(trials), **provenance})
    as_json = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    as_yaml = yaml.safe_dump(payload, sort_keys=False, allow_unicode=True)
    writers = {
        "trials.parquet": lambda p: trials.to_parquet(p, index=False),
        "history.parquet": lambda p: history.to_parquet(p, index=False),
        "trends.csv": lambda p: trends.to_csv(p, index=False),
        "trends.md": lambda p: p.write_text(trends_markdown(trends, metric), encoding="utf-8"),
        "best_config.json": lambda p: p.write_text(as_json, encoding="utf-8"),
        "best_config.yaml": lambda p: p.write_text(as_yaml, encoding="utf-8"),
    }
    paths = {name: _atomic_write(out / name, write) for name, write in writers.items()}
    return {"trials": trials, "history": history, "trends": trends, "best": payload, "paths": paths}


def format_best(payload: dict) -> str:
    """Short human summary for the console."""
    if payload.get("config") is None:
        return f"No best trial: {payload.get('reason', 'nothing selected')}"
    metric = payload["metric"]
    head = (f"Best trial {payload['trial_name']} ({payload['trial_id']}): {metric} "
            f"{_fmt(payload['value'], metric, ' %')} (last epoch), "
            f"{_fmt(payload['best_epoch_value'], metric, ' %')} at epoch {payload['best_epoch']}")
    return "\n".join([head, *(f"  {k}: {v}" for k, v in sorted(payload["config"].items()))])
