"""A sweep's wall time against the training its trials did: where tune_app and Ray spend the rest.

    python scripts/bench_overhead.py                    # the quickstart, 20 trials, about 2 minutes
    python scripts/bench_overhead.py --quick            # 4 short trials, about 30 s
    python scripts/bench_overhead.py --set epochs=20 --scheduler fifo --num-samples 10   # any sweep of digits

Runs one sweep of the digits space through tune_app's own command (``tune_app.search.main``, Optuna +
ASHA as the quickstart, 1 CPU a trial and as many at once as the machine's CPUs, as the quickstart runs them,
unless ``--concurrency N`` passes ``--max-concurrent N``; W&B off) in this process, timing it
from the call until it returns, Ray's start and the final analysis (tables, plots, report.html)
included. The baseline is the ideal, measured in the same run: the trials' training time, the sum of
``epoch_time_s`` in summary/history.parquet (each epoch's training and validation), divided by the
concurrency. Overhead = wall / ideal - 1; the goal is under 10 %.

The breakdown times the command's own steps by wrapping them in this process (Ray's start in
``join_ray``, the dataset load, ``Tuner.fit``, ``analyze.run``) and follows each trial from the
driver with a Ray Tune callback (put in the slot of the ``--trial-timeout`` watchdog, which is off):
when it was created, when it started (its actor up), when its results arrived, when it ended.
Inside ``Tuner.fit`` each trial slot's time is: training; the trial's setup in its actor (Ray's own
``time_this_iter_s`` of the first result less the first epoch: the dataset from the object store,
the model, the first report); the rest of the time from its actor being up to the driver
receiving its first result (Ray starting the function, delivering the result, a busy driver); each
further epoch's report, with a checkpoint where one is due (``--checkpoint-every-s``: the scheduler's decision
epochs, the last epoch, every 30 s) (the time between results less the epoch's own time); the
trial's end; between trials, the wait for the searcher to create the next trial and for its actor
(the last trial's actor stops, a new worker process starts and imports torch and the trainable);
and the tail, slots with no trial left. Slot-seconds are divided by the concurrency to add up to
the wall time.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _bench import output_to  # scripts/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL = 0.10  # overhead below 10 % of the ideal





class Clock:
    """Start and end of the command's steps, by name (several calls add up)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[float, float]]] = {}

    def wrap(self, owner, attr: str, name: str):
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*a, **kw):
            t0 = time.time()
            try:
                return original(*a, **kw)
            finally:
                self.spans.setdefault(name, []).append((t0, time.time()))

        setattr(owner, attr, timed)
        return original

    def seconds(self, name: str) -> float:
        return sum(b - a for a, b in self.spans.get(name, []))


def trial_clock(events: dict):
    """A Tune callback that records, per trial id, the driver's time of its creation, start (its actor is up),
    results and end."""
    from ray.tune import Callback

    def record(trial) -> dict:
        return events.setdefault(trial.trial_id, {"id": trial.trial_id, "results": []})

    class TrialClock(Callback):
        def on_trial_add(self, iteration, trials, trial, **info):
            record(trial)["add"] = time.time()

        def on_trial_start(self, iteration, trials, trial, **info):
            record(trial)["start"] = time.time()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            record(trial)["results"].append((result.get("epoch"), time.time()))
            record(trial).setdefault("first_iter_s", result.get("time_this_iter_s"))  # Ray's, in the actor

        def on_trial_complete(self, iteration, trials, trial, **info):
            record(trial).setdefault("end", time.time())

        def on_trial_error(self, iteration, trials, trial, **info):
            record(trial).setdefault("end", time.time())

    return TrialClock()


def run_sweep(argv: list[str], log: Path):
    """Run the command with its steps timed; (exit code, wall s, clock, trial events, t0, t1)."""
    from ray import tune

    import tune_app.search.runner as search_runner
    import tune_app.search.tuner as search_tuner
    from tune_app import analyze, search

    clock, events = Clock(), {}
    restore = [(search_runner, "join_ray", clock.wrap(search_runner, "join_ray", "ray_start")),
               (search_runner, "load_data", clock.wrap(search_runner, "load_data", "data")),
               (tune.Tuner, "fit", clock.wrap(tune.Tuner, "fit", "fit")),
               (analyze, "run", clock.wrap(analyze, "run", "analysis")),
               (search_tuner, "trial_timeout", search_tuner.trial_timeout)]
    search_tuner.trial_timeout = lambda seconds: trial_clock(events)  # the watchdog's slot; --trial-timeout is 0
    try:
        with output_to(log):
            t0 = time.time()
            code = search.main(argv)
            t1 = time.time()
    finally:
        for owner, attr, original in restore:
            setattr(owner, attr, original)
    return code, clock, events, t0, t1


def breakdown(clock: Clock, events: dict, history, concurrency: int, t0: float, t1: float) -> dict:
    """Seconds of the wall time by where they went (in-fit slot-seconds divided by the concurrency).

    Each trial takes the trial slot that freed first (as Ray gives freed resources to the next trial):
    from the slot freeing to the trial's creation is the searcher's and Tune's latency, from its creation
    (or the slot freeing, if later) to its start the actor: the last trial's actor stopping and a new
    worker process starting."""
    import heapq

    wall = t1 - t0
    (fit_a, fit_b), = clock.spans["fit"]
    fit = fit_b - fit_a
    epoch_s = {tid: dict(zip(h["epoch"], h["epoch_time_s"])) for tid, h in history.groupby("trial_id")}
    train = float(history["epoch_time_s"].sum())
    slot = {"create": 0.0, "actor": 0.0, "setup": 0.0, "start": 0.0, "report": 0.0, "end": 0.0}
    busy = 0.0
    starts, setups, per_epoch, actors = [], [], [], []
    free = [fit_a] * concurrency
    ran = sorted((e for e in events.values() if "start" in e and e["results"]), key=lambda e: e["start"])
    for e in ran:
        results = e["results"]
        first_epoch, first_at = results[0]
        own = epoch_s.get(e["id"], {})
        stop = e.get("end", results[-1][1])
        freed, added = heapq.heappop(free), e.get("add", fit_a)
        slot["create"] += max(0.0, min(added, e["start"]) - freed)
        actors.append(max(0.0, e["start"] - max(added, freed)))
        slot["actor"] += actors[-1]
        heapq.heappush(free, stop)
        busy += stop - e["start"]
        # Ray's time_this_iter_s of the first result: from the actor's first train call to the first report,
        # measured in the actor; less the epoch, it is fit's setup and the first report.
        inside = e.get("first_iter_s") or own.get(first_epoch, 0.0)
        setups.append(inside - own.get(first_epoch, 0.0))
        slot["setup"] += setups[-1]
        starts.append(first_at - e["start"] - inside)
        slot["start"] += starts[-1]
        for (_, a), (epoch, b) in zip(results, results[1:]):
            per_epoch.append(b - a - own.get(epoch, 0.0))
            slot["report"] += per_epoch[-1]
        slot["end"] += stop - results[-1][1]
    tail = concurrency * fit - busy - slot["create"] - slot["actor"]
    pre = fit_a - t0
    analysis = clock.seconds("analysis")
    parts = {
        "ray_start": clock.seconds("ray_start"), "data": clock.seconds("data"),
        "setup": pre - clock.seconds("ray_start") - clock.seconds("data"),
        "create": slot["create"] / concurrency, "actor": slot["actor"] / concurrency,
        "trial_setup": slot["setup"] / concurrency, "trial_start": slot["start"] / concurrency,
        "training": train / concurrency,
        "report": slot["report"] / concurrency, "trial_end": slot["end"] / concurrency,
        "tail": tail / concurrency, "analysis": analysis, "after": wall - pre - fit - analysis,
    }
    med = lambda xs: statistics.median(xs) if xs else float("nan")  # noqa: E731
    return {"wall": wall, "fit": fit, "train_sum": train, "parts": parts, "trials": len(ran),
            "start_median": med(starts), "setup_median": med(setups), "report_median": med(per_epoch),
            "actor_median": med(actors),
            "epochs": len(history), "epoch_median": float(history["epoch_time_s"].median()),
            "busy_concurrency": busy / fit if fit else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, help="trials (default 20, the quickstart's; --quick 4)")
    p.add_argument("--concurrency", type=int,
                   help="--max-concurrent N, 1 CPU a trial (default: none, as the quickstart: one trial per CPU)")
    p.add_argument("--searcher", default="optuna")
    p.add_argument("--scheduler", default="asha")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a --set for the digits space (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 trials of 2 or 3 epochs (about 30 s)")
    p.add_argument("--storage-path", help="where the sweep goes (default: a temporary folder, removed at the end)")
    p.add_argument("--no-reuse-actors", action="store_true",
                   help="a fresh worker process per trial (tune_app's --no-reuse-actors), to compare with the default")
    args = p.parse_args()
    concurrency = args.concurrency or os.cpu_count()  # trials at once: Ray's local cluster has every CPU
    from tune_app.cluster import console

    console.quiet()  # Ray's console settings, before Ray is imported

    n = args.num_samples or (4 if args.quick else 20)
    overrides = (["epochs=[2,3]"] if args.quick else []) + args.overrides
    storage = Path(args.storage_path or tempfile.mkdtemp(prefix="bench_overhead_")).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    name = f"overhead-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = ["--space", "digits", "--searcher", args.searcher, "--scheduler", args.scheduler, "--num-samples", str(n),
            *(["--max-concurrent", str(args.concurrency)] if args.concurrency else []),
            "--cpus-per-trial", "1", "--seed", str(args.seed),
            *[a for o in overrides for a in ("--set", o)], *(["--max-epochs", "3"] if args.quick else []),
            "--wandb-mode", "disabled", "--storage-path", str(storage), "--name", name,
            *(["--no-reuse-actors"] if args.no_reuse_actors else [])]
    print(f"python -m tune_app.search {' '.join(argv)}", flush=True)
    log = storage / f"{name}.log"
    code, clock, events, t0, t1 = run_sweep(argv, log)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"the sweep exited {code}; its output is in {log}:\n" + "\n".join(tail))
    import pandas as pd

    history = pd.read_parquet(storage / name / "summary" / "history.parquet")
    b = breakdown(clock, events, history, concurrency, t0, t1)
    ideal = b["train_sum"] / concurrency
    parts = b["parts"]
    print(f"{b['trials']} trials, {b['epochs']} epochs (median {b['epoch_median']:.3f} s each), "
          f"{args.searcher} + {args.scheduler}, {concurrency} at a time (measured mean "
          f"{b['busy_concurrency']:.2f} trials running during Tuner.fit)")
    print()
    print("| sweep | wall s | trial training s (sum) | concurrency | ideal s | x ideal | overhead % | goal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = (("whole command (Ray start to report.html)", b["wall"]),
            ("without the final analysis", b["wall"] - parts["analysis"]),
            ("Tuner.fit alone", b["fit"]))
    for label, wall in rows:
        over = wall / ideal - 1
        print(f"| {label} | {wall:.1f} | {b['train_sum']:.1f} | {concurrency} | {ideal:.1f} | "
              f"{wall / ideal:.2f} | {100 * over:.0f} | < {100 * GOAL:.0f} %: {'PASS' if over < GOAL else 'FAIL'} |")
    print()
    labels = {
        "ray_start": "Ray start (join_ray: ray.init)",
        "data": "dataset load (driver)",
        "setup": "other setup: space, data into the object store, Tuner",
        "create": "slot free until the next trial exists (searcher, Tune)",
        "actor": f"trial's actor: last one's stop, a new worker process (median {b['actor_median']:.1f} s)",
        "trial_setup": f"trial setup in its actor: data, model, first report (median {b['setup_median']:.1f} s)",
        "trial_start": f"rest of actor up to first result at the driver (median {b['start_median']:.1f} s)",
        "training": "training: sum of epoch_time_s / concurrency (the ideal)",
        "report": f"report (+ checkpoint where due) after each further epoch (median {b['report_median']:.2f} s)",
        "trial_end": "trial end (last result to trial complete)",
        "tail": "slots with no trial left to run (the sweep's tail)",
        "analysis": "final analysis: tables, plots, report.html",
        "after": "after the analysis",
    }
    print("| where the wall time went | s | % of wall | x ideal |")
    print("| --- | ---: | ---: | ---: |")
    for key, label in labels.items():
        print(f"| {label} | {parts[key]:.1f} | {100 * parts[key] / b['wall']:.1f} | {parts[key] / ideal:.2f} |")
    print(f"| total | {sum(parts.values()):.1f} | {100 * sum(parts.values()) / b['wall']:.1f} | "
          f"{sum(parts.values()) / ideal:.2f} |")
    between = ("create", "actor", "trial_setup", "trial_start", "trial_end", "tail")
    per_trial = sum(parts[k] for k in between) * concurrency / max(b["trials"], 1)
    per_epoch = b["report_median"]
    epochs_per_trial = b["epochs"] / max(b["trials"], 1)
    need = (per_trial / epochs_per_trial + per_epoch) / GOAL
    print()
    print(f"Inside Tuner.fit a trial costs about {per_trial:.1f} s besides its epochs, and each epoch "
          f"{per_epoch:.2f} s besides its training; at {epochs_per_trial:.1f} epochs a trial, fit's overhead falls "
          f"under {100 * GOAL:.0f} % only with epochs of about {need:.0f} s or more (these take "
          f"{b['epoch_median']:.2f} s).")
    if not args.storage_path:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
