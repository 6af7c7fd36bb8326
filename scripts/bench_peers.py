"""The quickstart against the scripts users write instead: a plain Optuna script and a plain Ray Tune script.

    python scripts/bench_peers.py               # 20 trials each, 3 rounds (over 10 minutes on 2 cores)
    python scripts/bench_peers.py --rounds 5
    python scripts/bench_peers.py --quick       # 2 trials of 2 epochs, 1 round: a smoke run (a minute or more)

Four commands run the same sweep (search_spaces/digits.py: 20 trials of the digits CNN, Optuna TPE
seeded with 0, trials stopped early by ASHA or by successive halving with grace period 3 and
reduction factor 3, every trial trained by ``trainables.image_classifier.fit``):

- the README's quickstart as users run it, ``python -m tune_app.search --space digits`` with W&B
  offline (``WANDB_MODE=offline`` in its environment and ``--wandb-mode offline``);
- the same with ``--wandb-mode disabled``;
- ``scripts/peers/optuna_digits.py``: plain Optuna (TPE + SuccessiveHalvingPruner), trials one after
  another in one process with 2 torch threads; the baseline of the ratios;
- ``scripts/peers/ray_tune_digits.py``: plain Ray Tune as its docs show (Tuner, tune.report with
  checkpoints, OptunaSearch, ASHAScheduler), 1 CPU a trial.

Each is timed as a whole process: wall clock from launching it to its exit, the interpreter's start,
imports, Ray's start and shutdown and tune_app's final analysis (tables, plots, report.html)
included. The commands alternate (quickstart, disabled, Optuna, Ray, quickstart, ...) for
``--rounds`` rounds, and the table gives each one's median and its ratio to the plain Optuna
script's median. tune_app writes each sweep into a fresh temporary ``--storage-path``; its best
val_acc is summary/best_config.json's ``value`` and its epochs trained the rows of
summary/history.parquet; the peers print both as a JSON line at the end. Every process's output
goes to ``<temporary folder>/logs/`` (``--keep`` keeps it).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "optuna"


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    shown: str  # the command as the table shows it
    kind: str  # "tune_app" or "peer"
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    storage: bool = True  # takes --storage-path (a fresh temporary folder each run)


def cases(trials: int | None, epochs: int | None) -> list[Case]:
    """The four commands; ``trials``/``epochs`` None: the quickstart's own (20 trials, epochs searched)."""
    tune_app_sizes = ((["--num-samples", str(trials)] if trials else [])
                      + (["--set", f"epochs={epochs}", "--max-epochs", str(epochs)] if epochs else []))
    peer_sizes = (["--trials", str(trials)] if trials else []) + (["--epochs", str(epochs)] if epochs else [])
    quickstart = ["-m", "tune_app.search", "--space", "digits"]
    return [
        Case("quickstart", "tune_app quickstart, W&B offline", "WANDB_MODE=offline python -m tune_app.search "
             "--space digits --wandb-mode offline", "tune_app",
             (*quickstart, "--wandb-mode", "offline", *tune_app_sizes), (("WANDB_MODE", "offline"),)),
        Case("disabled", "tune_app, W&B disabled", "python -m tune_app.search --space digits --wandb-mode disabled",
             "tune_app", (*quickstart, "--wandb-mode", "disabled", *tune_app_sizes)),
        Case("optuna", "plain Optuna script", "python scripts/peers/optuna_digits.py", "peer",
             ("scripts/peers/optuna_digits.py", *peer_sizes), storage=False),
        Case("ray", "plain Ray Tune script", "python scripts/peers/ray_tune_digits.py", "peer",
             ("scripts/peers/ray_tune_digits.py", *peer_sizes)),
    ]


def child_env(case: Case) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_MODE")}  # each starts its own Ray
    env.update(case.env)
    return env


def run(case: Case, work: Path, round_: int) -> dict:
    """One whole process of ``case``: its wall time, best val_acc, epochs trained and trials."""
    storage = work / "runs" / f"{case.key}-{round_}"
    storage.mkdir(parents=True)
    argv = [sys.executable, *case.argv, *(["--storage-path", str(storage)] if case.storage else [])]
    log = work / "logs" / f"{case.key}-{round_}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        code = subprocess.run(argv, cwd=ROOT, env=child_env(case), stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode
        wall = time.perf_counter() - t0
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise SystemExit(f"{case.shown} exited {code}; its output is in {log}:\n" + "\n".join(tail))
    result = tune_app_result(storage) if case.kind == "tune_app" else peer_result(log)
    return {"wall_s": wall, **result}


def tune_app_result(storage: Path) -> dict:
    import pandas as pd

    [run_dir] = [p for p in storage.iterdir() if p.is_dir()]  # the fresh storage path holds this sweep only
    summary = run_dir / "summary"
    best = json.loads((summary / "best_config.json").read_text())
    return {"best_val_acc": float(best["value"]), "epochs": len(pd.read_parquet(summary / "history.parquet")),
            "trials": len(pd.read_parquet(summary / "trials.parquet"))}


def peer_result(log: Path) -> dict:
    """The JSON line a peer script prints at the end (Ray may log after it)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith('{"script"'):
            found = json.loads(line)
            return {"best_val_acc": float(found["best_val_acc"]), "epochs": int(found["epochs_trained"]),
                    "trials": int(found["trials"])}
    raise SystemExit(f"no result line in {log}")


def provenance() -> str:
    import importlib.metadata as md

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)"
    if git("status", "--porcelain", "--", "tune_app", "trainables", "search_spaces", "scripts"):
        commit += " with uncommitted changes"
    versions = ", ".join(f"{name} {md.version(name)}" for name in ("torch", "ray", "optuna", "wandb"))
    return f"tune_app commit {commit}, Python {sys.version.split()[0]}, {versions}, {os.cpu_count()} CPUs"


def fmt(x: float) -> str:
    return f"{x:g}" if float(x).is_integer() else f"{x:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of the four commands, alternated (default 3)")
    p.add_argument("--trials", type=int, help="trials a sweep (default: the quickstart's 20)")
    p.add_argument("--epochs", type=int, help="every trial's epochs (default: the quickstart's 10, 15 or 20)")
    p.add_argument("--quick", action="store_true", help="2 trials of 2 epochs, 1 round")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (run directories, logs)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.trials, args.epochs = 1, 2, 2
    work = Path(tempfile.mkdtemp(prefix="bench_peers_"))
    todo = cases(args.trials, args.epochs)
    print(provenance())
    print(f"{args.trials or 20} trials a sweep, epochs {args.epochs or '10, 15 or 20'}, {args.rounds} rounds; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: dict[str, list[dict]] = {c.key: [] for c in todo}
    t_all = time.perf_counter()
    for r in range(args.rounds):
        for case in todo:
            results[case.key].append(run(case, work, r))
            got = results[case.key][-1]
            print(f"round {r + 1}: {case.label}: {got['wall_s']:.1f} s, best val_acc "
                  f"{100 * got['best_val_acc']:.2f} %, {got['epochs']} epochs in {got['trials']} trials", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"the benchmark took {time.perf_counter() - t_all:.0f} s")
    print()

    median = {k: statistics.median(r["wall_s"] for r in rs) for k, rs in results.items()}
    print("| case | command | median s | x plain Optuna | best val_acc % | epochs trained | trials |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for case in todo:
        rs = results[case.key]
        mid = {k: statistics.median(r[k] for r in rs) for k in ("best_val_acc", "epochs", "trials")}
        print(f"| {case.label} | `{case.shown}` | {median[case.key]:.1f} | {median[case.key] / median[BASELINE]:.2f} | "
              f"{100 * mid['best_val_acc']:.2f} | {fmt(mid['epochs'])} | {fmt(mid['trials'])} |")
    print()
    print("| case | round | s | best val_acc % | epochs trained |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for case in todo:
        for r, got in enumerate(results[case.key], 1):
            print(f"| {case.label} | {r} | {got['wall_s']:.1f} | {100 * got['best_val_acc']:.2f} | {got['epochs']} |")
    if args.keep:
        print(f"\nrun directories and logs: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
