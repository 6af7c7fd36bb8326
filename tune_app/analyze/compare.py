"""Compare two sweeps of one space: ``python -m tune_app.analyze RUN_A RUN_B`` (e.g. before and after a change of
augmentation).

Each run directory is analyzed as ``python -m tune_app.analyze RUN`` would analyze it, with the same ``--metric``,
``--mode`` and ``--select``, and both at one equal-length epoch K: ``--at-epoch K``, else the smaller of the two
sweeps' own defaults, so that both have trials there. Continuous ranges are grouped by the same bins in both.
Nothing is written into either run directory; the comparison goes to ``<parent of RUN_B>/compare-<A>-vs-<B>/``
(or ``--out DIR``):

- ``trends.csv``: both sweeps' trend tables (every view), a ``sweep`` column first;
- ``trials.parquet``: both trials tables, a ``sweep`` column first;
- ``compare.md``, ``compare.html``: each sweep's best trial and how many trials are within noise of it, then per
  hyperparameter one table: per value, each sweep's n / mean / 95 % CI and the difference of means B - A with its
  Welch 95 % CI.

From Python the module is the function, as ``tune_app.analyze`` itself is::

    import tune_app.analyze
    c = tune_app.analyze.compare("runs/before", "runs/after", at_epoch=10, quiet=True)
    c.trends        # the combined trend tables (sweep, view, hyperparameter, value, n, mean, ...)
    c.table         # per view, hyperparameter and value: n_a, mean_a, ..., n_b, ..., diff, diff_ci95_low/high
    c.out           # the comparison folder it wrote

Its options are the command line's: ``metric``, ``mode``, ``at_epoch``, ``select``, ``out`` and ``quiet``.
``build(run_a, run_b, ...)`` is the same comparison without writing or printing anything. Bad input (two spaces,
two metrics or modes, a metric one sweep never reported, the same directory twice) raises UsageError before
anything is written.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tune_app.analyze import trends as trend_tables
from tune_app.analyze.build import Analysis, compute, load_trials
from tune_app.command import callable_command
from tune_app.errors import UsageError
from tune_app.rundir import reader
from tune_app.rundir.atomic import atomic_write
from tune_app.rundir.tables import bin_edges

KEYS = ["view", "hyperparameter", "value"]
STATS = ["n", "mean", "std", "ci95_low", "ci95_high"]
FILES = ("trends.csv", "trials.parquet", "compare.md", "compare.html")
OPTIONS = ("metric", "mode", "at_epoch", "select", "out", "quiet")


@dataclass
class Comparison:
    """Two sweeps of one space analyzed at one epoch, side by side.

    Args:
        a, b: each sweep's ``Analysis`` (computed as ``python -m tune_app.analyze RUN`` computes it, at ``at_epoch``).
        labels: the sweeps' names in the ``sweep`` column (their folder names; longer where those are equal).
        at_epoch: the equal-length epoch K both are compared at; ``epoch_note`` says how it was chosen.
        trends: both trend tables, a ``sweep`` column first.
        trials: both trials tables, a ``sweep`` column first.
        table: one row per (view, hyperparameter, value): ``n_a, mean_a, std_a, ci95_low_a, ci95_high_a``, the same
            for b, ``diff`` (mean_b - mean_a) and its Welch 95 % CI ``diff_ci95_low``, ``diff_ci95_high``.
        out: the folder the files were written to (None until they are).
    """

    a: Analysis
    b: Analysis
    labels: tuple[str, str]
    at_epoch: int
    epoch_note: str
    trends: pd.DataFrame
    trials: pd.DataFrame
    table: pd.DataFrame
    out: Path | None = None
    paths: dict = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return self.a.metric

    @property
    def mode(self) -> str:
        return self.a.sweep.mode

    @property
    def select(self) -> str:
        return self.a.select

    @property
    def space(self) -> str:
        return space_of(self.a.sweep)


def space_of(sweep: reader.Sweep) -> str:
    """What a sweep searched, in words: its space's name, or a plain Ray experiment's searched keys."""
    if sweep.spec is not None:
        return f"space {sweep.spec.get('space')}"
    return f"a Ray Tune experiment over {', '.join(sorted(sweep.params)) or 'no varying key'}"


def labels_of(a: Path, b: Path) -> tuple[str, str]:
    """The two sweeps' names: their folders', or enough of their paths to tell them apart."""
    for depth in range(1, max(len(a.parts), len(b.parts)) + 1):
        la, lb = "/".join(a.parts[-depth:]), "/".join(b.parts[-depth:])
        if la != lb:
            return la, lb
    return str(a), str(b)


def default_out(run_a, run_b) -> Path:
    """``<parent of RUN_B>/compare-<A name>-vs-<B name>``."""
    a, b = Path(run_a).expanduser().resolve(), Path(run_b).expanduser().resolve()
    return b.parent / f"compare-{a.name}-vs-{b.name}"


def _named(error: UsageError, path: Path) -> UsageError:
    """An error about one of the two sweeps, saying which."""
    text = str(error)
    return error if str(path) in text else UsageError(f"{path}: {text}")


def _load(paths: list[Path], metric, mode, at_epoch):
    loaded = []
    for path in paths:
        try:
            loaded.append(load_trials(path, metric, mode, at_epoch))
        except UsageError as e:
            raise _named(e, path) from None
    return loaded


def _check_alike(sa: reader.Sweep, sb: reader.Sweep) -> None:
    if space_of(sa) != space_of(sb):
        raise UsageError(f"{sa.path} and {sb.path} are sweeps of different spaces ({space_of(sa)} and "
                         f"{space_of(sb)}); compare two sweeps of one space")
    if (sa.metric, sa.mode) != (sb.metric, sb.mode):
        raise UsageError(f"{sa.path} is analyzed for {sa.metric} ({sa.mode}) and {sb.path} for {sb.metric} "
                         f"({sb.mode}); pass --metric and --mode to compare both on one metric")


def common_bins(sweeps: list[reader.Sweep], trials: list[pd.DataFrame]) -> dict | None:
    """Bin edges both sweeps share for their continuous ranges (one range over both, binned as the reader bins
    one), or None when they already bin alike (two sweeps of one tune_app space do)."""
    if all(s.bins == sweeps[0].bins for s in sweeps):
        return None
    bins = {}
    for p in dict.fromkeys(k for s in sweeps for k in s.bins):
        lows, highs, logs = [], [], []
        for s, t in zip(sweeps, trials):
            if p in s.ranges:
                _, low, high, log = s.ranges[p]
                lows.append(float(low))
                highs.append(float(high))
                logs.append(bool(log))
            column = t.get(f"config/{p}")
            seen = pd.to_numeric(column, errors="coerce").dropna() if column is not None else pd.Series(dtype=float)
            if column is not None and len(seen) < column.notna().sum():
                break  # not a number in one of them: leave this key as each sweep groups it
            if len(seen):
                lows.append(float(seen.min()))
                highs.append(float(seen.max()))
        else:
            if lows:
                low, high = min(lows), max(highs)
                bins[p] = bin_edges(low, high, all(logs) and low > 0)
    return {**sweeps[0].bins, **bins}


def _welch(row) -> tuple[float, float]:
    """The 95 % CI of mean_b - mean_a by Welch's t (NaN without two trials on each side)."""
    from scipy import stats

    na, nb, sa, sb = row["n_a"], row["n_b"], row["std_a"], row["std_b"]
    if not (na >= 2 and nb >= 2) or math.isnan(sa) or math.isnan(sb):
        return math.nan, math.nan
    va, vb = sa ** 2 / na, sb ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return row["diff"], row["diff"]
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = stats.t.ppf(0.975, df) * se
    return row["diff"] - half, row["diff"] + half


def aligned(ta: pd.DataFrame, tb: pd.DataFrame) -> pd.DataFrame:
    """Both sweeps' trend rows side by side, one row per (view, hyperparameter, value): A's order, then the
    values only B has; a value one sweep lacks has n 0 and NaN statistics there."""
    def rows(t):
        return {(r["view"], r["hyperparameter"], repr(r["value"])): r for r in t.to_dict("records")}

    ra, rb = rows(ta), rows(tb)
    groups = list(dict.fromkeys([k[:2] for k in ra] + [k[:2] for k in rb]))
    keys = [k for g in groups for k in dict.fromkeys([*(k for k in ra if k[:2] == g), *(k for k in rb if k[:2] == g)])]
    out = []
    for key in keys:
        row = dict(zip(KEYS, (*key[:2], (ra.get(key) or rb[key])["value"])))
        for side, found in (("a", ra.get(key)), ("b", rb.get(key))):
            row.update({f"{s}_{side}": (found[s] if found else (0 if s == "n" else math.nan)) for s in STATS})
        out.append(row)
    columns = [*KEYS, *(f"{s}_{side}" for side in "ab" for s in STATS), "diff", "diff_ci95_low", "diff_ci95_high"]
    table = pd.DataFrame(out, columns=columns)
    table[["n_a", "n_b"]] = table[["n_a", "n_b"]].astype("int64")
    table["diff"] = table["mean_b"] - table["mean_a"]
    if len(table):
        ci = table.apply(_welch, axis=1, result_type="expand")
        table["diff_ci95_low"], table["diff_ci95_high"] = ci[0].astype(float), ci[1].astype(float)
    return table


def _stacked(frames: list[pd.DataFrame], labels: tuple[str, str]) -> pd.DataFrame:
    """Frames one under the other, a ``sweep`` column first."""
    parts = []
    for frame, label in zip(frames, labels):
        part = frame.copy()
        part.attrs = {}
        part.insert(0, "sweep", label)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A column whose values are numbers in one sweep and text in the other (a key the spaces type differently)
    is written as text: Parquet holds one type per column."""
    frame = frame.copy()
    for column in [c for c in frame.columns if pd.api.types.is_object_dtype(frame[c])]:
        kinds = {type(v) for v in frame[column].dropna()}
        if len(kinds - {int, float}) and len(kinds) > 1:
            frame[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v))
    return frame


def build(run_a, run_b, *, metric=None, mode=None, at_epoch=None, select="last") -> Comparison:
    """Analyze both sweeps at one epoch and line them up; writes nothing. Raises UsageError (one line) for two
    different spaces, metrics or modes, a metric a sweep never reported, or the same directory twice."""
    paths = [Path(p).expanduser().resolve() for p in (run_a, run_b)]
    if paths[0] == paths[1] or (paths[0].is_dir() and paths[1].is_dir() and paths[0].samefile(paths[1])):
        raise UsageError(f"{paths[0]} is given twice; compare two different run directories")
    (sa, _, ta, ka), (sb, _, tb, kb) = _load(paths, metric, mode, at_epoch)
    _check_alike(sa, sb)
    if at_epoch is not None:
        k, note = at_epoch, f"epoch {at_epoch} (--at-epoch)"
    else:
        k = min(ka, kb)
        note = (f"epoch {k}, both sweeps' equal-length epoch" if ka == kb else
                f"epoch {k}, the smaller of the two sweeps' equal-length epochs ({ka} and {kb})")
    analyses = []
    for path in paths:
        try:
            analyses.append(compute(path, metric=sa.metric, mode=sa.mode, at_epoch=k, select=select))
        except UsageError as e:
            raise _named(e, path) from None
    a, b = analyses
    bins = common_bins([a.sweep, b.sweep], [a.trials, b.trials])
    trends = [x.trends if bins is None else
              trend_tables.trends(x.trials, x.history, x.sweep.params, x.metric, x.sweep.mode, k, bins)
              for x in (a, b)]
    labels = labels_of(*paths)
    return Comparison(a=a, b=b, labels=labels, at_epoch=k, epoch_note=note, trends=_stacked(trends, labels),
                      trials=_stacked([a.trials, b.trials], labels), table=aligned(*trends))


def _check_out(out: Path, c: Comparison) -> None:
    for x in (c.a, c.b):
        summary = x.sweep.path / "summary"
        if out == x.sweep.path or out.is_relative_to(summary):
            raise UsageError(f"--out {out}: that is {x.sweep.path.name}'s own folder; a comparison leaves each "
                             f"sweep's summary as it is, so pick another folder")


def write(c: Comparison, out) -> dict:
    """The comparison folder's files, each written to a temporary name and renamed."""
    from tune_app.report import compare as report

    out = Path(out).expanduser().resolve()
    _check_out(out, c)
    title, opening, sections = report.compare_sections(c)
    text = lambda s: lambda p: p.write_text(s, encoding="utf-8")  # noqa: E731
    writers = {
        "trends.csv": lambda p: c.trends.to_csv(p, index=False),
        "trials.parquet": lambda p: _parquet_safe(c.trials).to_parquet(p, index=False),
        "compare.md": text(report.compare_markdown(title, opening, sections)),
        "compare.html": text(report.compare_html(title, opening, sections)),
    }
    out.mkdir(parents=True, exist_ok=True)
    c.out = out
    c.paths = {name: atomic_write(out / name, w) for name, w in writers.items()}
    return c.paths


def call(run_a, run_b, **options) -> Comparison:
    """Compare two run directories (``metric``, ``mode``, ``at_epoch``, ``select`` as the command line's flags;
    ``out``: the folder, default ``<parent of run_b>/compare-<A>-vs-<B>``; ``quiet``: print nothing), write the
    comparison folder and return the ``Comparison``."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
    out, quiet = options.pop("out", None), options.pop("quiet", False)
    c = build(run_a, run_b, **options)
    write(c, out or default_out(run_a, run_b))
    if not quiet:
        from tune_app.report.compare import compare_console

        print(compare_console(c), flush=True)
    return c


callable_command(sys.modules[__name__])  # tune_app.analyze.compare(run_a, run_b) is call(run_a, run_b)
