"""``--repeats k``: one trial trains its configuration k times, with seeds ``seed``, ``seed + 1``, ...,
``seed + k - 1``, and reports their mean every epoch, so the searcher and the schedulers judge the configuration by
the mean of k runs rather than by one noisy run.

The k runs take turns in one process (one thread each, one running at a time): run 0 trains its epoch 1 up to its
report, then run 1 its epoch 1, ..., then the trial reports the mean of the k epoch-1 reports (``combine``) with one
checkpoint holding the k states, and so on. At each turn the runs' random number generators (Python's, NumPy's,
torch's CPU and CUDA ones) are swapped in and out, so run r draws exactly the numbers a run of seed + r alone would
draw: each run is the same run that ``python -m tune_app.train --set seed=...`` trains, to the last digit on a CPU.
The trial ends when any run ends (finished, stopped early by its own rule, diverged); a run that fails fails the
trial, and Ray's retry resumes all k from the checkpoint. A trial holds its k models at once, so a GPU needs k
times one run's memory, and an epoch takes k times as long on the trial's resources.

Each report keeps every run's numbers under ``runs``: ``{"0": {"seed": 0, "val_acc": ...}, "1": {...}}``, which
Ray's files flatten to ``runs/0/val_acc``; tune_app's trials table has one row per run from them
(``rundir.tables.run_records``). Nothing here imports Ray: any ``Reporter`` serves.
"""
from __future__ import annotations

import math
import numbers
import random
import threading

import numpy as np

from tune_app.rundir.layout import RUNS

STATES = "tune_app_repeats"  # the checkpoint's key holding the k runs' states
SUMMED = ("epoch_time_s", "cpu_s", "samples_seen")  # the trial's cost: the k runs' sum
HIGHEST = ("peak_mem_mb",)  # all k models are held at once: the highest (a process's peak is shared anyway)
SAME = ("epoch",)  # the same in every run


def seeds(config: dict, k: int) -> list[int]:
    """The k runs' seeds: the configuration's seed (0 when it has none), then the next k - 1 integers."""
    base = config.get("seed", 0)
    base = int(base) if isinstance(base, numbers.Integral) else 0
    return [base + r for r in range(k)]


def _is_flag(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not _is_flag(value)


def combine(reports: list[dict], run_seeds: list[int]) -> dict:
    """One report from k runs' reports of the same epoch: a flag (``diverged``, ``early_stopped``) is set when any
    run's is; time, CPU seconds and samples (SUMMED) add up; peak memory is the highest; the epoch is the first
    run's; every other number is the mean (NaN when a run's is). Text is the first run's. ``runs`` keeps each run's
    numbers and flags with its seed."""
    out: dict = {}
    for key in dict.fromkeys(k for r in reports for k in r):
        values = [r[key] for r in reports if key in r]
        if all(_is_flag(v) for v in values):
            out[key] = any(bool(v) for v in values)
        elif all(_is_number(v) for v in values):
            if key in SAME:
                out[key] = values[0]
            elif key in SUMMED:
                out[key] = sum(values)
            elif key in HIGHEST:
                out[key] = max(values)
            elif all(isinstance(v, numbers.Integral) for v in values) and len(set(values)) == 1:
                out[key] = values[0]  # the same count in every run (parameters): kept an integer
            else:
                floats = [float(v) for v in values]
                out[key] = math.nan if any(math.isnan(v) for v in floats) else math.fsum(floats) / len(floats)
        else:
            out[key] = values[0]
    out[RUNS] = {str(i): {"seed": seed, **{k: v for k, v in r.items() if _is_number(v) or _is_flag(v)}}
                 for i, (r, seed) in enumerate(zip(reports, run_seeds))}
    return out


def _rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Halt(BaseException):
    """Unwinds a run's ``fit`` from inside its ``report`` when the trial stops (another run ended, a run failed,
    Ray stopped the trial). A BaseException, so that a trainable's ``except Exception`` does not swallow it."""


class _Run:
    """One of the k runs: a thread running ``fit`` that is also the ``reporter`` it reports to. ``step`` lets it
    train up to its next report (or its end) while the caller waits."""

    def __init__(self, index: int, fit, config: dict, data, state) -> None:
        self.index, self.fit, self.config, self.data, self.state = index, fit, config, data, state
        self.go, self.paused = threading.Event(), threading.Event()
        self.outcome: tuple = ("waiting",)
        self.rng: dict | None = None
        self.halting = False
        self.thread = threading.Thread(target=self._main, name=f"tune_app-repeat-{index}", daemon=True)
        self.thread.start()

    # the Reporter the run's fit sees
    def restore(self):
        return self.state

    def report(self, metrics: dict, state) -> None:
        self._pause(("report", dict(metrics), state))

    def _pause(self, outcome: tuple) -> None:
        self.outcome = outcome
        self.go.clear()
        self.paused.set()
        self.go.wait()
        if self.halting:
            raise _Halt

    def _main(self) -> None:
        self.go.wait()
        if self.halting:
            self.paused.set()
            return
        try:
            self.fit(self.config, self.data, self)
            self.outcome = ("end",)
        except _Halt:
            self.outcome = ("halted",)
        except BaseException as e:  # noqa: BLE001 - handed to the trial's thread, which raises it
            self.outcome = ("error", e)
        self.paused.set()

    def step(self) -> tuple:
        """Run up to the next report: ("report", metrics, state), ("end",) or ("error", exception)."""
        if self.rng is not None:
            _set_rng_state(self.rng)
        self.paused.clear()
        self.go.set()
        self.paused.wait()
        self.rng = _rng_state()
        return self.outcome

    def halt(self) -> None:
        if not self.thread.is_alive():
            return
        self.halting = True
        self.paused.clear()
        self.go.set()
        self.thread.join(timeout=60)


def fit_repeats(fit, config: dict, data, reporter, k: int) -> None:
    """Train ``config`` k times in lockstep (see the module's docstring), reporting the mean to ``reporter``."""
    saved = reporter.restore()
    states = saved.get(STATES) if isinstance(saved, dict) else None
    if not isinstance(states, list) or len(states) != k:
        states = [None] * k  # nothing saved (or not k runs' states): every run starts over
    run_seeds = seeds(config, k)
    runs = [_Run(r, fit, {**config, "seed": seed}, data, states[r]) for r, seed in enumerate(run_seeds)]
    try:
        while True:
            outcomes = [run.step() for run in runs]
            for outcome in outcomes:
                if outcome[0] == "error":
                    raise outcome[1]
            if any(outcome[0] != "report" for outcome in outcomes):
                return  # a run ended: so does the trial (its last report was the last epoch all k reached)
            reporter.report(combine([o[1] for o in outcomes], run_seeds), {STATES: [o[2] for o in outcomes]})
    finally:
        for run in runs:
            run.halt()
